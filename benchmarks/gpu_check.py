"""One-command GPU check of the Triton kernels (cramfast.kernels), for a CUDA machine:

    python benchmarks/gpu_check.py                          # compiled kernel tests, then timings
    python benchmarks/gpu_check.py --no-tests --json out.json

1. runs tests/test_kernel_*.py with the kernels compiled (TRITON_INTERPRET=0: tests/conftest.py
   would otherwise turn the interpreter on);
2. measures a bf16 matmul peak (torch.mm, the best of a few large square shapes), the yardstick
   of the fractions below;
3. fused linear cross-entropy, SmolLM2-135M's head by default (d = 576, V = 49152), N in
   {960, 16384} (a cramming step's scored rows; a full batch), bf16 and fp32 (--dims, --vocabs,
   --rows, --dtypes), every row scored:
     call  the Triton forward alone (kernels.linear_cross_entropy_forward, gradient wanted:
           loss, argmax, margin and d loss / d hidden), what a cramming step runs;
     step  forward + backward through cramfast.ops (loss.sum().backward() to hidden) for the
           triton, torch (chunked twin) and naive (full logits) backends;
   median ms (triton.testing.do_bench, return_mode="median": its default is the mean), TFLOP/s
   and fraction of the bf16 peak counting 4 N V d flops (the logits product and the gradient
   product, whatever a kernel recomputes), peak memory above the inputs, the autotuner's choice
   and its per-config timings (medians too: the autotuner asks for quantiles 0.5, 0.2, 0.8);
4. mem_embed forward time, triton vs torch;
5. the targets, each marked met or not: bf16 call at N = 960 <= 0.3 ms; bf16 call at N = 16384
   >= 50 % of the bf16 peak; fp32 call at N = 960 >= 5x faster than the previous kernel's 32 ms.

--json PATH writes every figure above (and the device, versions and targets) as one JSON object.
"""
import argparse
import importlib.util
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

# before cramfast.kernels is imported: compile, never interpret
os.environ["TRITON_INTERPRET"] = "0"
ROOT = Path(__file__).resolve().parent.parent

# The targets of the vocabulary-parallel kernel (fp32: the one-program-per-row-block kernel with
# "ieee" dots took 32 ms per call at N ~ 960 on an H200, d = 576, V = 49152).
TARGET_CALL_MS_N960 = 0.3
TARGET_PEAK_FRACTION_N16384 = 0.5
PREVIOUS_FP32_CALL_MS = 32.0
TARGET_FP32_SPEEDUP = 5.0
PEAK_SHAPES = (4096, 8192, 16384)


def run_tests():
    env = dict(os.environ, TRITON_INTERPRET="0")
    tests = sorted(str(p) for p in (ROOT / "tests").glob("test_kernel_*.py"))
    # Each test shape compiles its own kernels: with pytest-xdist, on 8 processes at once.
    parallel = ["-n", "8"] if importlib.util.find_spec("xdist") else []
    print(f"== pytest (compiled) {' '.join(parallel)} {' '.join(Path(t).name for t in tests)}",
          flush=True)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *parallel, *tests], cwd=ROOT, env=env).returncode


def bf16_matmul_peak_tflops(torch, do_bench):
    """The best torch.mm rate over a few large square bf16 shapes (each its median time),
    TFLOP/s."""
    best = 0.0
    for size in PEAK_SHAPES:
        a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
        ms = do_bench(lambda: torch.mm(a, b), warmup=50, rep=300, return_mode="median")
        best = max(best, 2 * size ** 3 / ms / 1e9)
        del a, b
    torch.cuda.empty_cache()
    return best


def peak_gib_above(torch, fn):
    """Peak memory one call of ``fn`` allocates above what is held before it, GiB."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 30


class AutotuneLog:
    """The partial kernel's tunings, as Triton reports them (knobs.autotuning.listener, where
    this Triton has it): for each, the chosen config and every timed config's median ms."""

    def __init__(self, triton):
        self.events = []
        knobs = getattr(triton, "knobs", None)
        self.available = hasattr(getattr(knobs, "autotuning", None), "listener")
        if self.available:
            knobs.autotuning.listener = self._listen

    def _listen(self, fn=None, key=None, best_config=None, configs_timings=None, **_):
        timings = {str(c): (t[0] if isinstance(t, (list, tuple)) else t)
                   for c, t in (configs_timings or {}).items()}
        self.events.append(dict(kernel=getattr(fn, "__name__", str(fn)), key=str(key),
                                best=str(best_config), timings_ms=timings))

    def since(self, start):
        return self.events[start:]


def chosen_config(lce_module):
    tuner = getattr(lce_module, "_tuned_partials", None)
    return str(getattr(tuner, "best_config", None))


def bench_linear_cross_entropy(torch, ops, kernels, lce_module, tune_log, do_bench, peak_tflops,
                               dims, rows, vocabs, dtypes, impls):
    records = []
    print(f"\n== linear_cross_entropy, every row scored: median ms (TFLOP/s at 4 N V d, "
          f"fraction of the {peak_tflops:.0f} TFLOP/s bf16 peak) / peak GiB above inputs")
    for d, n, v, dtype_name in itertools.product(dims, rows, vocabs, dtypes):
        dtype = dict(bf16=torch.bfloat16, fp32=torch.float32, fp16=torch.float16)[dtype_name]
        g = torch.Generator(device="cuda").manual_seed(0)
        hidden = torch.randn(n, d, device="cuda", dtype=dtype, generator=g).requires_grad_()
        weight = torch.randn(v, d, device="cuda", dtype=dtype, generator=g) / d ** 0.5
        targets = torch.randint(0, v, (n,), device="cuda", generator=g)
        flops = 4 * n * v * d
        base = dict(N=n, V=v, d=d, dtype=dtype_name, flops=flops)

        def measure(name, kind, fn):
            try:
                start = len(tune_log.events)
                fn()  # compile and autotune outside the measurement
                tuned = None
                if name == "triton":
                    tuned = dict(best=chosen_config(lce_module), tunings=tune_log.since(start))
                peak = peak_gib_above(torch, fn)
                ms = do_bench(fn, warmup=25, rep=200, return_mode="median")
            except torch.OutOfMemoryError:
                print(f"{d:>5} {n:>6} {v:>7} {dtype_name:>5} {name:>7} {kind:>5}: OOM", flush=True)
                records.append(dict(base, impl=name, kind=kind, oom=True))
                return None
            tflops = flops / ms / 1e9
            record = dict(base, impl=name, kind=kind, ms=ms, tflops=tflops,
                          peak_fraction=tflops / peak_tflops, peak_gib=peak)
            if tuned is not None:
                record["autotune"] = tuned
            records.append(record)
            print(f"{d:>5} {n:>6} {v:>7} {dtype_name:>5} {name:>7} {kind:>5}: {ms:9.3f} ms "
                  f"({tflops:6.1f} TFLOP/s, {tflops / peak_tflops:5.1%}) / {peak:6.2f} GiB"
                  + (f"  config {tuned['best']}" if tuned else ""), flush=True)
            return record

        if "triton" in impls:
            measure("triton", "call", lambda: kernels.linear_cross_entropy_forward(
                hidden.detach(), weight, targets, None, True))
        for name in impls:
            def step(name=name):
                hidden.grad = None
                loss, _argmax, _margin = ops.linear_cross_entropy(hidden, weight, targets,
                                                                  backend=name)
                loss.sum().backward()
            measure(name, "step", step)
        del hidden, weight, targets
        torch.cuda.empty_cache()
    return records


def bench_mem_embed(torch, ops, do_bench):
    b, m, t, d, v = 64, 16, 1024, 2048, 49152
    ids = torch.randint(0, v, (b, t), device="cuda")
    emb = torch.randn(v, d, device="cuda", dtype=torch.bfloat16)
    mem = torch.randn(b, m, d, device="cuda", dtype=torch.float32)
    print(f"\n== mem_embed forward, B={b} m={m} T={t} d={d}, bf16 out, fp32 mem: median ms")
    out = []
    for name in ("triton", "torch"):
        ms = do_bench(lambda: ops.mem_embed(ids, emb, mem, backend=name), warmup=25, rep=100,
                      return_mode="median")
        gbps = 2 * b * (m + t) * d * 2 / ms / 1e6
        print(f"{name:>8} {ms:8.3f} ms  ({gbps:6.0f} GB/s read+write)")
        out.append(dict(impl=name, B=b, m=m, T=t, d=d, ms=ms, gbps=gbps))
    return out


def find(records, **match):
    for r in records:
        if all(r.get(k) == val for k, val in match.items()) and "ms" in r:
            return r
    return None


def check_targets(records):
    """Each target with its measured value, or None where its case was not run."""
    small = find(records, impl="triton", kind="call", N=960, dtype="bf16")
    big = find(records, impl="triton", kind="call", N=16384, dtype="bf16")
    fp32 = find(records, impl="triton", kind="call", N=960, dtype="fp32")
    targets = {}
    if small:
        targets["bf16_call_ms_N960"] = dict(value=small["ms"], target=f"<= {TARGET_CALL_MS_N960}",
                                            met=small["ms"] <= TARGET_CALL_MS_N960)
    if big:
        targets["bf16_call_peak_fraction_N16384"] = dict(
            value=big["peak_fraction"], target=f">= {TARGET_PEAK_FRACTION_N16384}",
            met=big["peak_fraction"] >= TARGET_PEAK_FRACTION_N16384)
    if fp32:
        speedup = PREVIOUS_FP32_CALL_MS / fp32["ms"]
        targets["fp32_call_speedup_vs_previous_N960"] = dict(
            value=speedup, target=f">= {TARGET_FP32_SPEEDUP} (previous kernel "
            f"{PREVIOUS_FP32_CALL_MS} ms)", met=speedup >= TARGET_FP32_SPEEDUP)
    return targets


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-tests", action="store_true", help="skip the compiled kernel tests")
    ints = lambda text: tuple(int(x) for x in text.split(","))
    words = lambda text: tuple(text.split(","))
    parser.add_argument("--dims", type=ints, default=(576,), help="hidden sizes d, e.g. 576,2048")
    parser.add_argument("--rows", type=ints, default=(960, 16384), help="row counts N")
    parser.add_argument("--vocabs", type=ints, default=(49152,), help="vocabulary sizes V")
    parser.add_argument("--dtypes", type=words, default=("bf16", "fp32"), help="bf16,fp32,fp16")
    parser.add_argument("--impls", type=words, default=("triton", "torch", "naive"),
                        help="backends to time")
    parser.add_argument("--no-mem-embed", action="store_true", help="skip the mem_embed timing")
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    args = parser.parse_args()
    import torch
    if not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device visible to torch; this check needs an NVIDIA GPU "
                 "(on CPU run: TRITON_INTERPRET=1 python -m pytest tests/test_kernel_*.py)")
    sys.path.insert(0, str(ROOT))
    import triton
    from triton.testing import do_bench

    try:  # directly, not via ops: ops would silently fall back to torch
        from cramfast import kernels, ops
        from cramfast.kernels import linear_cross_entropy as lce_module
    except ImportError as exc:
        sys.exit(f"gpu_check: cannot import cramfast.kernels ({exc}); install with `pip install -e "
                 f".`")

    device = torch.cuda.get_device_name()
    print(f"gpu_check on {device} (torch {torch.__version__}, triton {triton.__version__})",
          flush=True)
    status = 0 if args.no_tests else run_tests()
    peak = bf16_matmul_peak_tflops(torch, do_bench)
    print(f"\n== bf16 matmul peak (torch.mm, best of {PEAK_SHAPES}): {peak:.0f} TFLOP/s")
    tune_log = AutotuneLog(triton)
    records = bench_linear_cross_entropy(torch, ops, kernels, lce_module, tune_log, do_bench, peak,
                                         args.dims, args.rows, args.vocabs, args.dtypes,
                                         args.impls)
    mem_embed = [] if args.no_mem_embed else bench_mem_embed(torch, ops, do_bench)
    targets = check_targets(records)
    print("\n== targets")
    for name, t in targets.items():
        print(f"{name:>40}: {t['value']:.3f} (target {t['target']}): "
              f"{'met' if t['met'] else 'NOT met'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(
            device=device, torch=torch.__version__, triton=triton.__version__,
            tests="skipped" if args.no_tests else ("passed" if status == 0 else "FAILED"),
            bf16_matmul_peak_tflops=peak, linear_cross_entropy=records, mem_embed=mem_embed,
            targets=targets, autotune_log_available=tune_log.available), indent=1))
        print(f"gpu_check: figures written to {args.json}")
    if status:
        sys.exit(f"gpu_check: kernel tests FAILED (pytest exit {status})")
    print("gpu_check: done" + ("" if args.no_tests else ", kernel tests passed"))


if __name__ == "__main__":
    main()
