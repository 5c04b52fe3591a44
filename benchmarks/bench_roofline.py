"""Roofline: the achieved FLOP/s of one batched cramfast step ÷ the matmul peak measured in the
same run: the fraction of the machine's limit cramfast reaches.

    pytest benchmarks/bench_roofline.py --benchmark-only

The step: cramfast.engine.step as the compressor runs it (mem_embed -> frozen backbone ->
fused linear CE -> backward to mem -> on-device stop rule -> per-slot AdamW), on B texts of
L = 64 tokens from the books, m = 1, every slot active; B = 32 on CPU (the compressor's default
max_slots: what it runs given 32 or more such texts; 4 in quick mode), 256 on CUDA;
CRAMFAST_BENCH_BATCH overrides. fp32 on CPU, bf16 on CUDA (load_model(dtype="bf16")).

FLOPs counted per step ("4N + 12·layers·d·T per token, frozen weights"):
  * tokens = B·(m + L), every position of the padded batch (no padding here: equal lengths);
  * N = the model's parameters that multiply activations, each counted once: the backbone's
    matmul weights plus the LM head (tied to the input embedding in SmolLM2, so the 135 M of
    the model's name: 134.5 M; norms' 1-D weights excluded). Forward 2N per token; the weights
    are frozen, so backward computes only activation gradients (dX = dY·Wᵀ, no dW): 2N more.
  * attention: QKᵀ and AV are 2·T·d each per token and layer forward (4·layers·d·T, T = m + L
    the context, d = hidden size = heads·head_dim, counted as if not causal); backward needs
    both operands' gradients of both products, 8·layers·d·T. 12·layers·d·T per token.
  * ``fraction`` uses exactly that count. Two stricter views are reported beside it:
    ``fraction_exact`` counts the head only where the step computes it (logits and
    (softmax - onehot)·W at the B·(L - 1) scored positions, not at the mem and last positions),
    ``fraction_non_embedding`` leaves the head out altogether (N = 106.2 M, Kaplan's
    non-embedding count) although the step does compute it.
  Not counted: norms, activations, rotary, softmax, the optimizer (elementwise, small).

Peak: the best of several large square torch.mm (fp32 on CPU, n = 4096, 2048 in quick mode;
bf16 on CUDA, n = 8192), measured before and after the step timing; the higher of the two is
the peak (a conservative fraction). ``ms_per_step`` is the median of the timed steps.
"""
from __future__ import annotations

import os
import statistics
import time

import pytest
import torch

from cramfast import engine
from cramfast.models import load_model
from cramfast.settings import CPU_SIZES

from _common import bench_texts, device, machine, quick, sync

DEV = device()
CUDA = DEV.type == "cuda"
L, N_MEM = 64, 1
BATCH = int(os.environ.get("CRAMFAST_BENCH_BATCH",
                           256 if CUDA else (4 if quick() else CPU_SIZES["max_slots"])))
ROUNDS = 5 if CUDA else (1 if quick() else 3)
MM_N = 8192 if CUDA else (2048 if quick() else 4096)
MM_DTYPE = torch.bfloat16 if CUDA else torch.float32

TARGET_CPU = 0.60


def matmul_peak_flops(reps: int = 3) -> float:
    a = torch.randn(MM_N, MM_N, device=DEV, dtype=MM_DTYPE)
    b = torch.randn(MM_N, MM_N, device=DEV, dtype=MM_DTYPE)
    torch.mm(a, b)
    sync(DEV)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        sync(DEV)
        best = min(best, time.perf_counter() - start)
    return 2 * MM_N ** 3 / best


def step_flops(lm, batch: int, length: int, n_mem: int) -> dict:
    cfg = lm.model.config
    emb = lm.embedding
    body_params = sum(p.numel() for p in lm.backbone.parameters() if p.ndim == 2 and p is not emb)
    head_params = lm.head.weight.numel()
    layers, d = cfg.num_hidden_layers, lm.hidden_size
    context = n_mem + length
    tokens = batch * context
    attention = 12 * layers * d * context
    body = tokens * (4 * body_params + attention)
    return dict(params=body_params + head_params, non_embedding_params=body_params, layers=layers,
                d=d, context=context, tokens=tokens,
                flops=tokens * (4 * (body_params + head_params) + attention),
                flops_exact=body + batch * (length - 1) * 4 * head_params,
                flops_non_embedding=body)


@pytest.fixture(scope="module")
def lm():
    return load_model(dtype="bf16", device=DEV) if CUDA else load_model(device=DEV)


def test_roofline_batched_step(benchmark, lm):
    token_lists = bench_texts(lm.tokenizer, L, BATCH, seed=0)
    state, rows, ids, targets = engine.start_batch(lm, token_lists, engine.TextSettings(), N_MEM,
                                                     length=L)
    peak_before = matmul_peak_flops()
    times = []

    def timed_step():
        start = time.perf_counter()
        engine.step(lm, state, rows, ids, targets)
        sync(DEV)
        times.append(time.perf_counter() - start)

    benchmark.pedantic(timed_step, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    peak = max(peak_before, matmul_peak_flops())
    seconds = statistics.median(times[1:] or times)
    count = step_flops(lm, BATCH, L, N_MEM)
    achieved = count["flops"] / seconds
    info = dict(what="batched_step", batch=BATCH, L=L, n_mem=N_MEM, tokens=count["tokens"],
                ms_per_step=round(1e3 * seconds, 1), gflop_per_step=round(count["flops"] / 1e9, 2),
                achieved_gflops=round(achieved / 1e9, 2),
                peak_gflops=round(peak / 1e9, 2), peak_gflops_before=round(peak_before / 1e9, 2),
                fraction=round(achieved / peak, 3),
                fraction_exact=round(count["flops_exact"] / seconds / peak, 3),
                fraction_non_embedding=round(count["flops_non_embedding"] / seconds / peak, 3),
                params=count["params"], non_embedding_params=count["non_embedding_params"],
                matmul_n=MM_N,
                dtype=str(lm.dtype).split(".")[-1], device=machine(),
                threads=torch.get_num_threads())
    if not CUDA:
        info["target_met"] = info["fraction"] >= TARGET_CPU
    if quick():
        info["note"] = f"quick mode: batch {BATCH}, {ROUNDS} timed steps, mm n={MM_N}"
    benchmark.extra_info.update(info)
    print(f"\nbatched step B={BATCH} L={L}: {info['ms_per_step']} ms, {info['achieved_gflops']} "
          f"GFLOP/s of {info['peak_gflops']} peak = {info['fraction']:.0%} "
          f"(exact count {info['fraction_exact']:.0%}, non-embedding "
          f"{info['fraction_non_embedding']:.0%})")
