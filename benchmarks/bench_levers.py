"""Each speed lever of cramfast, measured before and after, on the same fixed amount of work.

    pytest benchmarks/bench_levers.py --benchmark-only

Work: 8 texts of L = 16 tokens from the books, m = 1, every text run for exactly STEPS
evaluations (lr 1e-9: no text can go lossless, so every variant does the same evaluations and
updates). The figure is ``token_steps_per_s`` = sum over texts of (L + m) x evaluations /
seconds, optimization only (the "steps" phases reported by Hooks.on_timing; the
after-optimization metrics and decode check are excluded).

Variants ("after" = cramfast's default; "before" = that one lever turned off):
  cramfast             all levers on: 8 texts in one batch, host sync every 16 evaluations,
                       fused chunked CE, SDPA attention, all threads, vectorized per-slot AdamW
  no_batching          max_slots=1: the texts one after another through the same code
  sync_every_step      sync_every=1: a host sync (and scheduler report) every evaluation
  naive_ce             backend "naive": full-vocabulary logits and torch's cross_entropy
                       instead of the fused op
  eager_attention      the model's attention in plain torch ops instead of SDPA
  one_thread           torch.set_num_threads(1)
  per_slot_adamw       Hooks(update=...): the AdamW update applied slot by slot (one small
                       update per text) instead of one vectorized update over all slots
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

from cramfast.engine import Hooks, compress, mem_update
from cramfast.models import load_model

import paper_baseline
from _common import bench_texts, device, machine, quick, texts_source

L, N_MEM, SEED = 16, 1, 0
N_TEXTS = 2 if quick() else 8
STEPS = 8 if quick() else 32
VARIANTS = ("cramfast", "no_batching", "sync_every_step", "naive_ce", "eager_attention",
            "one_thread", "per_slot_adamw", "paper_loop", "paper_loop_reload")
_seconds: dict[str, float] = {}


@pytest.fixture(scope="module")
def lm():
    model = load_model(device=device())
    compress(bench_texts(model.tokenizer, 8, 1), model=model, max_steps=1, sync_every=1)
    return model


def per_slot_update(state, rows, grad, active):
    """mem_update applied slot by slot: one small update per text instead of one over all."""
    for i in range(len(rows)):
        mem_update(state, rows[i:i + 1], grad[i:i + 1], active[i:i + 1])


def _run_cramfast(lm, token_lists, variant):
    """Seconds of optimization (the "steps" phases, host syncs included; the metrics and the
    decode check after it excluded) and each text's evaluations."""
    settings = dict(preset="paper", lr=1e-9, max_steps=STEPS - 1, patience=10 * STEPS)
    hooks = Hooks()
    backend = None
    if variant == "no_batching":
        settings["max_slots"] = 1
    if variant == "sync_every_step":
        settings["sync_every"] = 1
    if variant == "naive_ce":
        backend = "naive"
    if variant == "per_slot_adamw":
        hooks.update = per_slot_update
    seconds = []
    hooks.on_timing = lambda t: seconds.append(t.seconds) if t.phase == "steps" else None
    results = compress(token_lists, model=lm, backend=backend, hooks=hooks, **settings)
    return sum(seconds), [r.steps + 1 for r in results]


def _run_paper(lm, token_lists, reload):
    start = time.perf_counter()
    results = paper_baseline.cram_all(lm, token_lists, N_MEM, SEED, reload=reload, lr=1e-9,
                                      max_steps=STEPS - 1, patience=10 * STEPS)
    return time.perf_counter() - start, [r.steps + 1 for r in results]


@pytest.mark.parametrize("variant", VARIANTS)
def test_lever(benchmark, lm, variant):
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
            run = lambda: _run_cramfast(lm, token_lists, variant)
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
