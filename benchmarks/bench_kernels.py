"""Kernels: fused linear cross-entropy and mem_embed vs naive torch, time and peak memory.

    pytest benchmarks/bench_kernels.py --benchmark-only

linear_cross_entropy, forward + backward (loss.sum().backward(), the gradient reaching
``hidden``; argmax computed by both, as the op's contract), d = 576 (SmolLM2-135M), every 7th
row masked. CPU: fp32, N in {512, 4096}, V in {49152, 128256}. CUDA: V = 49152, N = 960 (a
cramming step's rows) and 16384 (a full batch) in bf16 and fp32, and N = 4096 in bf16 (the
memory target below); on CUDA each case also reports TFLOP/s counting 4 N_scored V d flops
(logits and gradient products) and its fraction of a bf16 matmul peak measured here
(torch.mm, 8192^3). Implementations:
  naive   ops.linear_cross_entropy(backend="naive"): full N x V logits, F.cross_entropy, autograd
  torch   ops.linear_cross_entropy(backend="torch"): the chunked fused twin (CPU and CUDA)
  triton  ops.linear_cross_entropy(backend="triton"): CUDA only
Target: at N = 4096, V = 49152 the fused peak memory <= 20 % of naive at <= 1.1x its
time (``target_met`` on the fused rows of that case).

Time: pytest-benchmark's own measurement (one warm-up round, then 3 rounds; in quick mode on
CPU a single round without warm-up); ``ms`` is the median round.

Peak memory, ``peak_mib``: the memory the op needs above its inputs (hidden, weight, targets).
  * CUDA: torch.cuda.max_memory_allocated() during one call minus memory_allocated() before.
  * CPU: torch's CPU allocations are plain malloc/mmap, invisible to tracemalloc and not
    tracked by torch, so the figure is the process's peak resident set: each case runs once
    in a fresh Python subprocess (this file as a script) which allocates the inputs, warms the
    libraries up on a tiny call, reads VmRSS, resets the kernel's high-water mark
    (``echo 5 > /proc/self/clear_refs``), runs the op once and reads VmHWM; peak_mib =
    VmHWM - VmRSS before. The subprocess fixes glibc's mmap threshold (MALLOC_MMAP_THRESHOLD_
    = 128 KiB) so freed blocks go back to the OS rather than being reused unseen. Where
    clear_refs is not writable it falls back to getrusage(ru_maxrss) - VmRSS before (valid
    in a fresh process whose inputs are its largest allocation so far). Pages are counted
    when touched, i.e. the physical memory the op really uses.

mem_embed: [mem ; embedding[ids]] forward + backward (to mem), B = 16, T = 64, m = 1,
d = 576, V = 49152: ops.mem_embed (the backend of the device: torch on CPU, where it is
the same F.embedding + torch.cat; triton on CUDA) vs the plain torch.cat.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

D = 576
IGNORE_EVERY = 7            # every 7th row masked, as in padded batches
TARGET_CASE = (4096, 49152)
TARGET_MEM, TARGET_TIME = 0.20, 1.10


def _inputs(torch, n, v, dtype, dev, seed=0):
    g = torch.Generator(device=dev).manual_seed(seed)
    hidden = torch.randn(n, D, device=dev, dtype=dtype, generator=g).requires_grad_()
    weight = torch.randn(v, D, device=dev, dtype=dtype, generator=g) / D ** 0.5
    targets = torch.randint(0, v, (n,), device=dev, generator=g)
    targets[::IGNORE_EVERY] = -100
    return hidden, weight, targets


def _step_fn(ops, impl):
    fn = lambda h, w, t: ops.linear_cross_entropy(h, w, t, backend=impl)

    def step(hidden, weight, targets):
        hidden.grad = None
        loss, _argmax, _margin = fn(hidden, weight, targets)
        loss.sum().backward()
    return step


# ---------------------------------------------------------------------------------------------
# the CPU peak-memory probe (runs as a subprocess: python bench_kernels.py --memory impl n v)


def _status_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def memory_probe(impl, n, v):
    import resource

    import torch

    from cramfast import ops
    step = _step_fn(ops, impl)
    step(*_inputs(torch, 8, v, torch.float32, "cpu", seed=1))   # libraries warmed up, tiny
    hidden, weight, targets = _inputs(torch, n, v, torch.float32, "cpu")
    before_kib = _status_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")
        method = "VmHWM after clear_refs"
    except OSError:
        method = "ru_maxrss"
    start = time.perf_counter()
    step(hidden, weight, targets)
    seconds = time.perf_counter() - start
    peak_kib = _status_kib("VmHWM") if method.startswith("VmHWM") else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return dict(peak_bytes=(peak_kib - before_kib) * 1024, baseline_bytes=before_kib * 1024,
                method=method, seconds=seconds)


def cpu_peak_bytes(impl, n, v) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072",
               OMP_NUM_THREADS=str(__import__("torch").get_num_threads()))
    out = subprocess.run([sys.executable, __file__, "--memory", impl, str(n), str(v)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__" and sys.argv[1:2] == ["--memory"]:
    impl, n, v = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(memory_probe(impl, n, v)))
    sys.exit(0)


# ---------------------------------------------------------------------------------------------
# the benchmarks

import pytest  # noqa: E402
import torch  # noqa: E402

from cramfast import ops  # noqa: E402

from _common import device, machine, quick, sync  # noqa: E402

DEV = device()
DTYPE = torch.bfloat16 if DEV.type == "cuda" else torch.float32   # mem_embed's
IMPLS = ("naive", "torch") + (("triton",) if DEV.type == "cuda" else ())
if DEV.type == "cuda":
    CASES = [(960, 49152, "bfloat16"), (*TARGET_CASE, "bfloat16")] if quick() else \
        [(n, 49152, dt) for dt in ("bfloat16", "float32") for n in (960, 16384)] \
        + [(*TARGET_CASE, "bfloat16")]
    ROUNDS = 5 if quick() else 20   # sub-millisecond steps: a median of many
else:
    CASES = [(512, 49152, "float32"), (*TARGET_CASE, "float32")] if quick() else \
        [(n, v, "float32") for n in (512, 4096) for v in (49152, 128256)]
    ROUNDS = 1 if quick() else 3
WARMUP = 0 if quick() and DEV.type == "cpu" else 1   # CPU quick mode: the first call is timed

_naive: dict[tuple[int, int, str], dict] = {}   # (N, V, dtype) -> naive figures, for the ratios
_peak_tflops: list[float] = []


def bf16_peak_tflops() -> float:
    """torch.mm of two 8192^2 bf16 matrices, the best of 10 runs, TFLOP/s (measured once)."""
    if not _peak_tflops:
        a = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
        torch.mm(a, b)
        best = float("inf")
        for _ in range(10):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.mm(a, b)
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end))
        _peak_tflops.append(2 * 8192 ** 3 / best / 1e9)
    return _peak_tflops[0]


def _peak_mib(impl, n, v, step, args):
    if DEV.type == "cuda":
        torch.cuda.synchronize()
        args[0].grad = None
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(*args)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20, "cuda.max_memory_allocated"
    probe = cpu_peak_bytes(impl, n, v)
    return probe["peak_bytes"] / 2**20, probe["method"]


@pytest.mark.parametrize("n,v,dtype,impl", [(n, v, dt, i) for n, v, dt in CASES for i in IMPLS],
                         ids=[f"N{n}-V{v}-{dt}-{i}" for n, v, dt in CASES for i in IMPLS])
def test_linear_cross_entropy(benchmark, n, v, dtype, impl):
    args = _inputs(torch, n, v, getattr(torch, dtype), DEV)
    step = _step_fn(ops, impl)
    rounds = []

    def timed():
        start = time.perf_counter()
        step(*args)
        sync(DEV)
        rounds.append(time.perf_counter() - start)

    benchmark.pedantic(timed, rounds=ROUNDS, iterations=1, warmup_rounds=WARMUP)
    ms = 1e3 * statistics.median(rounds[WARMUP:] or rounds)
    peak, method = _peak_mib(impl, n, v, step, args)
    info = dict(op=f"linear_ce_fwd_bwd/{dtype}", impl=impl, N=n, V=v, d=D, dtype=dtype,
                ms=round(ms, 3), peak_mib=round(peak, 1), memory_method=method, device=machine())
    if DEV.type == "cuda":
        scored = int((args[2] != ops.IGNORE_INDEX).sum())
        tflops = 4 * scored * v * D / ms / 1e9
        info.update(tflops=round(tflops, 1), peak_fraction=round(tflops / bf16_peak_tflops(), 3),
                    bf16_peak_tflops=round(bf16_peak_tflops(), 1))
    if impl == "naive":
        _naive[(n, v, dtype)] = info
    elif (n, v, dtype) in _naive:
        ref = _naive[(n, v, dtype)]
        info["time_vs_naive"] = round(ms / ref["ms"], 3)
        info["mem_vs_naive"] = round(peak / ref["peak_mib"], 3) if ref["peak_mib"] > 0 else None
        if (n, v) == TARGET_CASE and info["mem_vs_naive"] is not None:
            info["target_met"] = bool(info["mem_vs_naive"] <= TARGET_MEM
                                      and info["time_vs_naive"] <= TARGET_TIME)
    if quick():
        info["note"] = f"quick mode: {ROUNDS} timed round(s) per case"
    benchmark.extra_info.update(info)
    print(f"\nlinear CE {impl:6s} N={n} V={v} {dtype}: {ms:.3f} ms, peak {peak:.0f} MiB")


@pytest.mark.parametrize("impl", ["mem_embed", "torch_cat"])
def test_mem_embed(benchmark, impl):
    B, T, m, V = 16, 64, 1, 49152
    g = torch.Generator(device=DEV).manual_seed(0)
    ids = torch.randint(0, V, (B, T), device=DEV, generator=g)
    embedding = torch.randn(V, D, device=DEV, dtype=DTYPE, generator=g)
    mem = torch.randn(B, m, D, device=DEV, dtype=torch.float32, generator=g).requires_grad_()
    grad_out = torch.randn(B, m + T, D, device=DEV, dtype=DTYPE, generator=g)
    if impl == "mem_embed":
        fn = lambda: ops.mem_embed(ids, embedding, mem)
    else:
        fn = lambda: torch.cat([mem.to(DTYPE), torch.nn.functional.embedding(ids, embedding)],
                               dim=1)

    def step():
        mem.grad = None
        fn().backward(grad_out)
        sync(DEV)

    benchmark.pedantic(step, rounds=20 if quick() else 200, iterations=1, warmup_rounds=3)
    stats = getattr(benchmark, "stats", None)
    info = dict(op="mem_embed_fwd_bwd", impl=impl, N=B * (m + T), d=D, device=machine())
    if stats is not None:
        info["ms"] = round(1e3 * stats.stats.median, 4)
    benchmark.extra_info.update(info)
