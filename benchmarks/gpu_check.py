"""One-command GPU check of the Triton kernels (cramfast.kernels), for a CUDA machine:

    python benchmarks/gpu_check.py            # compiled kernel tests, then timings
    python benchmarks/gpu_check.py --no-tests # timings only

1. runs tests/test_kernel_*.py with the kernels compiled (TRITON_INTERPRET=0: tests/conftest.py
   would otherwise turn the interpreter on);
2. linear cross-entropy, forward + backward, bf16, d=2048, N in {4096, 32768},
   V in {49152, 128256} (--dims, --rows, --vocabs): time (triton.testing.do_bench, median ms)
   and peak memory above the inputs (torch.cuda.max_memory_allocated) of the triton,
   chunked-torch and naive backends;
3. mem_embed forward time, triton vs torch.
"""
import argparse
import itertools
import os
import subprocess
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"  # before cramfast.kernels is imported: compile, never interpret
ROOT = Path(__file__).resolve().parent.parent


def run_tests():
    env = dict(os.environ, TRITON_INTERPRET="0")
    tests = sorted(str(p) for p in (ROOT / "tests").glob("test_kernel_*.py"))
    print(f"== pytest (compiled) {' '.join(Path(t).name for t in tests)}", flush=True)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", *tests], cwd=ROOT, env=env).returncode


def bench_linear_cross_entropy(torch, ops, do_bench, dims=(2048,), rows=(4096, 32768),
                               vocabs=(49152, 128256)):
    dtype, dev = torch.bfloat16, "cuda"
    backends = {name: (lambda h, w, t, name=name: ops.linear_cross_entropy(h, w, t, backend=name))
                for name in ("triton", "torch", "naive")}
    print("\n== linear_cross_entropy fwd+bwd, bf16: median ms / peak GiB above inputs")
    print(f"{'d':>5} {'N':>6} {'V':>7} " + " ".join(f"{name:>20}" for name in backends))
    for d, n, v in itertools.product(dims, rows, vocabs):
        g = torch.Generator(device=dev).manual_seed(0)
        hidden = torch.randn(n, d, device=dev, dtype=dtype, generator=g).requires_grad_()
        weight = torch.randn(v, d, device=dev, dtype=dtype, generator=g) / d ** 0.5
        targets = torch.randint(0, v, (n,), device=dev, generator=g)
        targets[::7] = ops.IGNORE_INDEX  # some masked rows, as in real batches
        cells = []
        for name, fn in backends.items():
            def step():
                hidden.grad = None
                loss, _ = fn(hidden, weight, targets)
                loss.sum().backward()
            try:
                step()  # compile / autotune outside the measurement
                torch.cuda.synchronize()
                hidden.grad = None
                torch.cuda.empty_cache()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                step()
                torch.cuda.synchronize()
                peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 30
                ms = do_bench(step, warmup=25, rep=200)
                cells.append(f"{ms:9.2f} / {peak:6.2f}")
            except torch.OutOfMemoryError:
                cells.append(f"{'OOM':>18}")
            hidden.grad = None
            torch.cuda.empty_cache()
        print(f"{d:>5} {n:>6} {v:>7} " + " ".join(f"{c:>20}" for c in cells), flush=True)


def bench_mem_embed(torch, ops, do_bench):
    b, m, t, d, v = 64, 16, 1024, 2048, 49152
    ids = torch.randint(0, v, (b, t), device="cuda")
    emb = torch.randn(v, d, device="cuda", dtype=torch.bfloat16)
    mem = torch.randn(b, m, d, device="cuda", dtype=torch.float32)
    print(f"\n== mem_embed forward, B={b} m={m} T={t} d={d}, bf16 out, fp32 mem: median ms")
    for name in ("triton", "torch"):
        ms = do_bench(lambda: ops.mem_embed(ids, emb, mem, backend=name), warmup=25, rep=100)
        gbps = 2 * b * (m + t) * d * 2 / ms / 1e6
        print(f"{name:>8} {ms:8.3f} ms  ({gbps:6.0f} GB/s read+write)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-tests", action="store_true", help="skip the compiled kernel tests")
    ints = lambda text: tuple(int(x) for x in text.split(","))
    parser.add_argument("--dims", type=ints, default=(2048,), help="hidden sizes d, e.g. 576,2048")
    parser.add_argument("--rows", type=ints, default=(4096, 32768), help="row counts N")
    parser.add_argument("--vocabs", type=ints, default=(49152, 128256), help="vocabulary sizes V")
    parser.add_argument("--no-mem-embed", action="store_true", help="skip the mem_embed timing")
    args = parser.parse_args()
    import torch
    if not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device visible to torch; this check needs an NVIDIA GPU "
                 "(on CPU run: TRITON_INTERPRET=1 python -m pytest tests/test_kernel_*.py)")
    sys.path.insert(0, str(ROOT))
    from triton.testing import do_bench

    try:  # directly, not via ops: ops would silently fall back to torch
        from cramfast import kernels, ops  # noqa: F401
    except ImportError as exc:
        sys.exit(f"gpu_check: cannot import cramfast.kernels ({exc}); install with `pip install -e .`")

    print(f"gpu_check on {torch.cuda.get_device_name()} (torch {torch.__version__})", flush=True)
    status = 0 if args.no_tests else run_tests()
    bench_linear_cross_entropy(torch, ops, do_bench, args.dims, args.rows, args.vocabs)
    if not args.no_mem_embed:
        bench_mem_embed(torch, ops, do_bench)
    best = getattr(sys.modules["cramfast.kernels.linear_cross_entropy"]._launch, "best_config", None)
    print(f"\nlinear_cross_entropy autotune choice (last key): {best}")
    if status:
        sys.exit(f"gpu_check: kernel tests FAILED (pytest exit {status})")
    print("gpu_check: done" + ("" if args.no_tests else ", kernel tests passed"))


if __name__ == "__main__":
    main()
