"""End to end, side by side in one run: tokens losslessly compressed per second by cramfast vs
the paper's loop (benchmarks/paper_baseline.py), on the same texts, model and settings.

    pytest benchmarks/bench_end_to_end.py --benchmark-only          # full: L 16/32/64, 8 texts
    CRAMFAST_BENCH_QUICK=1 pytest benchmarks/bench_end_to_end.py --benchmark-only   # CI-sized

Methods, each one timed call over all the texts of one length L (model already loaded):
  paper_reload     the paper's loop, text after text, the model loaded afresh per text (twice,
                   as the original: a no-mem reference load and a training load)
  paper_noreload   the same loop on one loaded model
  cramfast_paper   one cramfast.compress call over all texts, preset "paper" (the published
                   settings: the same optimization problem as the paper loop)
  cramfast_fast    the same with preset "fast" (cramfast/presets.py: LAMB, the focal
                   objective, stall restarts, parallel attempts at the tail: fewer steps; its
                   lossless rate is reported, not assumed)

Settings: the embedded model (smollm2-135m-q4; fp32 on CPU; on CUDA cramfast runs the model in
bf16 and the paper loop in fp32 weights under bf16 autocast, as the original), m = 1, texts of
exactly L tokens from ../shared/data/books (_common.bench_texts; a bundled fallback without
the books), seed 0, mem init cramfast.engine.init_mem for both, max_steps 5000, patience
2000.

Figures (extra_info): ``lossless`` texts whose returned mem gives teacher-forced accuracy 1.0
(cramfast: stop reason "lossless"); ``exact`` of those whose greedy decode from [mem ; first
token] reproduces the text (checked after timing for the paper loop, inside ``compress`` for
cramfast); ``tok_per_s`` = L x lossless / seconds; ``ratio_vs_paper_*`` = cramfast tok_per_s /
paper tok_per_s at the same L (same texts); ``time_ratio_vs_paper_*`` = paper seconds / cramfast
seconds (defined even when no text is lossless).

Quick mode: L = 16 only, 2 texts, max_steps 15, i.e. 16 evaluations, one
cramfast sync (texts may stop at "max_steps": the figures are
a smoke test of the machinery, not the speed-up). Overrides: CRAMFAST_BENCH_LENGTHS=16,32,
CRAMFAST_BENCH_TEXTS=8, CRAMFAST_BENCH_MAX_STEPS=5000.
"""
from __future__ import annotations

import os
import statistics

import pytest
import torch

from cramfast import compress
from cramfast.engine import greedy_decode
from cramfast.models import load_model
from cramfast.settings import TextSettings

import paper_baseline
from _common import Timer, bench_texts, device, machine, quick, texts_source

N_MEM = 1
SEED = 0
PUBLISHED = TextSettings()      # the published protocol's budget: max_steps, patience
PATIENCE = PUBLISHED.patience


def _env_ints(name, default):
    value = os.environ.get(name)
    return tuple(int(v) for v in value.split(",")) if value else default


LENGTHS = _env_ints("CRAMFAST_BENCH_LENGTHS", (16,) if quick() else (16, 32, 64))
N_TEXTS = _env_ints("CRAMFAST_BENCH_TEXTS", (2,) if quick() else (8,))[0]
MAX_STEPS = _env_ints("CRAMFAST_BENCH_MAX_STEPS", (15,) if quick() else (PUBLISHED.max_steps,))[0]
METHODS = ("paper_reload", "paper_noreload", "cramfast_paper", "cramfast_fast")

_results: dict[tuple[int, str], dict] = {}   # (L, method) -> extra_info, for the ratios


@pytest.fixture(scope="module")
def models():
    """(model for cramfast, model for the paper loop), loaded and warmed up (one short run of
    each path, untimed: first-call costs are not the loop's)."""
    dev = device()
    paper_lm = load_model(device=dev)
    cram_lm = load_model(dtype="bf16", device=dev) if dev.type == "cuda" else paper_lm
    warm = bench_texts(paper_lm.tokenizer, 8, 1, seed=SEED)
    compress(warm, model=cram_lm, n_mem=N_MEM, seed=SEED, max_steps=1, sync_every=1)
    paper_baseline.cram_one(paper_lm, warm[0], N_MEM, SEED, reload=False, max_steps=1)
    return cram_lm, paper_lm


def _run_paper(paper_lm, token_lists, reload):
    with Timer() as timer:
        results = paper_baseline.cram_all(paper_lm, token_lists, N_MEM, SEED, reload=reload,
                                          max_steps=MAX_STEPS, patience=PATIENCE)
    lossless = [r.lossless for r in results]
    # the original never checks greedy decoding; checked here, untimed, for the same figures
    mems = torch.stack([r.mem for r in results])
    decoded = greedy_decode(paper_lm, mems, [ids[0] for ids in token_lists],
                            len(token_lists[0]) - 1)
    exact = [out == ids[1:] for out, ids in zip(decoded, token_lists)]
    return dict(seconds=timer.seconds, steps=[r.steps for r in results],
                reasons=[r.stop_reason for r in results], lossless=sum(lossless),
                exact=sum(e and ok for e, ok in zip(exact, lossless)),
                load_seconds=round(sum(r.load_seconds for r in results), 3))


def _run_cramfast(cram_lm, token_lists, preset):
    with Timer() as timer:
        results = compress(token_lists, model=cram_lm, n_mem=N_MEM, seed=SEED, preset=preset,
                           max_steps=MAX_STEPS, patience=PATIENCE)
    lossless = [r.accuracy == 1.0 for r in results]
    return dict(seconds=timer.seconds, steps=[r.steps for r in results],
                reasons=[r.stop_reason for r in results], lossless=sum(lossless),
                exact=sum(r.exact and ok for r, ok in zip(results, lossless)))


@pytest.mark.parametrize("length,method", [(L, m) for L in LENGTHS for m in METHODS],
                         ids=[f"L{L}-{m}" for L in LENGTHS for m in METHODS])
def test_end_to_end(benchmark, models, length, method):
    cram_lm, paper_lm = models
    token_lists = bench_texts(paper_lm.tokenizer, length, N_TEXTS, seed=SEED)
    if method.startswith("paper"):
        run = lambda: _run_paper(paper_lm, token_lists, reload=method == "paper_reload")
    else:
        run = lambda: _run_cramfast(cram_lm, token_lists, method.split("_", 1)[1])
    out = benchmark.pedantic(run, rounds=1, iterations=1)

    n = len(token_lists)
    info = dict(method=method, L=length, texts=n, n_mem=N_MEM, max_steps=MAX_STEPS,
                patience=PATIENCE, steps_mean=round(statistics.mean(out["steps"]), 1), **out,
                lossless_rate=round(out["lossless"] / n, 3),
                tok_per_s=round(length * out["lossless"] / out["seconds"], 3),
                tokens_lossless=length * out["lossless"], device=machine(),
                texts_from=texts_source(),
                torch=torch.__version__,
                dtype="bf16" if device().type == "cuda" else "fp32")
    if quick():
        info["note"] = (f"quick mode: {n} texts, max_steps {MAX_STEPS}; a smoke test, "
                        "not the measured speed-up")
    for base in ("paper_reload", "paper_noreload"):
        ref = _results.get((length, base))
        if method.startswith("cramfast") and ref is not None:
            suffix = base.split("_", 1)[1]
            info[f"time_ratio_vs_paper_{suffix}"] = round(ref["seconds"] / out["seconds"], 2)
            if ref["tok_per_s"] > 0:
                info[f"ratio_vs_paper_{suffix}"] = round(info["tok_per_s"] / ref["tok_per_s"], 2)
            # the lossless rate must not drop
            info[f"lossless_minus_paper_{suffix}"] = out["lossless"] - ref["lossless"]
    benchmark.extra_info.update(info)
    _results[(length, method)] = info
    print(f"\n{method:15s} L={length:3d}: {out['lossless']}/{n} lossless, steps {out['steps']}, "
          f"{out['seconds']:.1f} s, {info['tok_per_s']:.2f} tok/s")
