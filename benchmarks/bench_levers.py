"""Each speed lever of cramfast, measured before and after, on the same fixed amount of work.

    pytest benchmarks/bench_levers.py --benchmark-only

Work: 8 texts of L = 16 tokens from the books, m = 1, every text run for exactly STEPS
evaluations (lr 1e-9: no text can go lossless, so every variant does the same evaluations and
updates). The figure is ``token_steps_per_s`` = sum over texts of (L + m) x evaluations /
seconds, optimization only (the after-optimization metrics and decode check are excluded by
timing ``_run``, not ``compress``).

Variants ("after" = cramfast's default; "before" = that one lever turned off):
  cramfast             all levers on: 8 texts in one batch, host sync every 16 evaluations,
                       fused chunked CE, SDPA attention, all threads, vectorized per-slot AdamW
  no_batching          max_slots=1: the texts one after another through the same code
  sync_every_step      sync_every=1: a host sync (and scheduler report) every evaluation
  naive_ce             full-vocabulary logits and torch's cross_entropy instead of the fused op
  eager_attention      the model's attention in plain torch ops instead of SDPA
  one_thread           torch.set_num_threads(1)
  per_slot_adamw       the AdamW update applied slot by slot (one small update per text) instead
                       of one vectorized update over all slots
  paper_loop           benchmarks/paper_baseline.py, one loaded model (batch 1, full logits,
                       .item() every step): everything off
  paper_loop_reload    the same, the model loaded twice per text as the original does: the
                       "one model load" lever
Not here: refill (benchmarks/bench_scheduler.py: padded token-steps of refill vs static
batching) and the optimizer schedule (python -m cramfast.study optimizer: fewer steps).

``speedup_of_lever`` = the variant's seconds / cramfast's seconds for the same work.
"""
from __future__ import annotations

import time

import pytest
import torch

import paper_baseline
from _common import bench_texts, device, machine, quick, texts_source
from cramfast import compressor as C, ops
from cramfast.models import load_model

L, N_MEM, SEED = 16, 1, 0
N_TEXTS = 2 if quick() else 8
STEPS = 8 if quick() else 32
VARIANTS = ("cramfast", "no_batching", "sync_every_step", "naive_ce", "eager_attention",
            "one_thread", "per_slot_adamw", "paper_loop", "paper_loop_reload")
_seconds: dict[str, float] = {}


@pytest.fixture(scope="module")
def lm():
    model = load_model(device=device())
    C.compress(bench_texts(model.tokenizer, 8, 1), model=model, max_steps=1, sync_every=1)
    return model


def _naive_ce(hidden, weight, targets, bias=None, backend=None):
    return ops.linear_cross_entropy_naive(hidden, weight, targets, bias)


_vectorized_adamw = C.mem_update


def _per_slot_adamw(state, rows, grad, active):
    for i in range(len(rows)):
        _vectorized_adamw(state, rows[i:i + 1], grad[i:i + 1], active[i:i + 1])


def _run_cramfast(lm, token_lists, variant, monkeypatch):
    settings = dict(lr=1e-9, max_steps=STEPS - 1, patience=10 * STEPS)
    if variant == "no_batching":
        settings["max_slots"] = 1
    if variant == "sync_every_step":
        settings["sync_every"] = 1
    if variant == "naive_ce":
        monkeypatch.setattr(ops, "linear_cross_entropy", _naive_ce)
    if variant == "per_slot_adamw":
        monkeypatch.setattr(C, "mem_update", _per_slot_adamw)
    opt = C.OptimSettings(**settings)
    jobs = [C.Job(i, ids, C.init_mem(lm, ids, N_MEM, SEED, 1.0), opt)
            for i, ids in enumerate(token_lists)]
    start = time.perf_counter()
    for _ in C._run(lm, jobs, N_MEM, opt, None):
        pass
    seconds = time.perf_counter() - start
    return seconds, [j.result["steps"] + 1 for j in jobs]


def _run_paper(lm, token_lists, reload):
    start = time.perf_counter()
    results = paper_baseline.cram_all(lm, token_lists, N_MEM, SEED, reload=reload, lr=1e-9,
                                      max_steps=STEPS - 1, patience=10 * STEPS)
    return time.perf_counter() - start, [r.steps + 1 for r in results]


@pytest.mark.parametrize("variant", VARIANTS)
def test_lever(benchmark, lm, variant, monkeypatch):
    token_lists = bench_texts(lm.tokenizer, L, N_TEXTS, seed=SEED)
    threads = torch.get_num_threads()
    attention = lm.model.config._attn_implementation
    if variant == "eager_attention":
        lm.model.set_attn_implementation("eager")
    if variant == "one_thread":
        torch.set_num_threads(1)
    try:
        if variant.startswith("paper_loop"):
            run = lambda: _run_paper(lm, token_lists, reload=variant == "paper_loop_reload")
        else:
            run = lambda: _run_cramfast(lm, token_lists, variant, monkeypatch)
        seconds, evaluations = benchmark.pedantic(run, rounds=1, iterations=1)
    finally:
        torch.set_num_threads(threads)
        lm.model.set_attn_implementation(attention)
    assert evaluations == [STEPS] * N_TEXTS, evaluations   # the same work in every variant
    _seconds[variant] = seconds
    info = dict(variant=variant, texts=N_TEXTS, L=L, evaluations_per_text=STEPS,
                seconds=round(seconds, 2),
                token_steps_per_s=round(N_TEXTS * STEPS * (L + N_MEM) / seconds, 1),
                device=machine(), texts_from=texts_source())
    if "cramfast" in _seconds and variant != "cramfast":
        info["speedup_of_lever"] = round(seconds / _seconds["cramfast"], 2)
    benchmark.extra_info.update(info)
