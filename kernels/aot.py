"""Ahead-of-time compile of every Triton kernel for GPUs that need not be here: what
tests/test_kernel_aot.py checks (it fits, and where it spills).

For each realistic problem (MODELS x ROWS x DTYPES, with and without the gradient) the launchers
list their launches on tensors of the meta device (linear_cross_entropy_launches,
mem_embed_launches: no memory, no kernel run), and each launch is expanded into the compiles it
may cause on a target: one per config the autotuner's own pruning keeps for that target's
shared memory, with the heuristics' meta-parameters, specialised by Triton's own binder as a
launch would be. Identical compiles are made once; each is compiled by triton.compile for
GPUTarget("cuda", arch) with the ptxas of Triton's wheel, and the cubin read back with the
wheel's cuobjdump: registers, shared memory, and the spill instructions (STL/LDL), in all and
inside loops (sass_spills).

    python -m cramfast.kernels.aot [--arch 90 --arch 80] [--jobs 2] [--out FILE]

writes a JSON object {"records": [...], "compiles": ..., "seconds": ...}, a record per (problem,
launch, target, config), with "error" in place of the figures where a compile failed.
It must run with TRITON_INTERPRET unset (the interpreter's @triton.jit gives no compilable
functions), so the tests, which run under the interpreter, start it in a subprocess. Compiles
land in Triton's cache (TRITON_CACHE_DIR; by default a per-user one, CACHE_DIR), so a second
run only reads cubins back.
"""
import argparse
import concurrent.futures
import hashlib
import itertools
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.autotuner import Autotuner, Heuristics
from triton.runtime.cache import get_cache_manager
from triton.runtime.jit import JITFunction, create_function_from_signature

from .linear_cross_entropy import linear_cross_entropy_launches
from .mem_embed import mem_embed_launches
from .targets import target_of_capability

CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cramfast" \
    / "triton-aot"
# The models at either end of what the kernels serve, as (d, V): SmolLM2-135M's 576 / 49152
# and Llama 3 8B's 4096 / 128256.
MODELS = ((576, 49152), (4096, 128256))
# Rows of a cramming step, as (texts B, tokens T): one batch of short texts (N = 960) and a
# full batch (N = 16384); mem_embed writes [B, m + T, d] with M_VECTORS mem rows per text.
ROWS = ((16, 60), (128, 128))
M_VECTORS = 1
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
ARCHS = (90, 80)
# The split plan's SM count: it sets the grid and the split width, neither of which is
# compiled in (SPLIT_COLS is not specialised), so any count gives the same compiles.
PLAN_SMS = 132


def _meta(*shape, dtype=torch.float32):
    return torch.empty(shape, dtype=dtype, device="meta")


def problems():
    """(description, launches) of every realistic problem, in a fixed order."""
    for (d, v), (b, t), dtype, want_grad in itertools.product(MODELS, ROWS, DTYPES,
                                                              (True, False)):
        n = b * t
        hidden, weight = _meta(n, d, dtype=dtype), _meta(v, d, dtype=dtype)
        _, launches = linear_cross_entropy_launches(
            hidden, weight, _meta(n, dtype=torch.int64), None, want_grad, PLAN_SMS)
        yield dict(op="linear_cross_entropy", N=n, V=v, d=d, dtype=str(dtype)[6:],
                   want_grad=want_grad), launches
    for (d, v), (b, t), dtype in itertools.product(MODELS, ROWS, DTYPES):
        _, launches = mem_embed_launches(_meta(b, t, dtype=torch.int64), _meta(v, d, dtype=dtype),
                                         _meta(b, M_VECTORS, d))
        yield dict(op="mem_embed", B=b, m=M_VECTORS, T=t, d=d, dtype=str(dtype)[6:]), launches


def _variants(kernel, args, kwargs, target, config=None):
    """(JITFunction, kwargs, config) of each compile that one launch of ``kernel`` may cause on
    ``target``: an autotuner's configs as its pruning keeps them for the target (each may be
    timed, so each may be the one that runs), heuristics' meta-parameters filled in."""
    if isinstance(kernel, Autotuner):
        assert kernel.perf_model is None, "a perf_model would prune further: not modelled here"
        configs = kernel.configs
        if kernel.early_config_prune:
            configs = kernel.early_config_prune(configs, dict(zip(kernel.arg_names, args)),
                                                target=target, **kwargs)
        for config in configs:
            yield from _variants(kernel.fn, args, {**kwargs, **config.all_kwargs()}, target,
                                 config)
    elif isinstance(kernel, Heuristics):  # as Heuristics.run: each value sees those before it
        kwargs = dict(kwargs)
        for name, heuristic in kernel.values.items():
            kwargs[name] = heuristic({**dict(zip(kernel.arg_names, args)), **kwargs})
        yield from _variants(kernel.fn, args, kwargs, target, config)
    else:
        assert isinstance(kernel, JITFunction), kernel
        yield kernel, kwargs, config


def _specialise(fn, backend, args, kwargs):
    """(signature, constexprs, attrs, options) of a launch, as JITFunction.run derives them."""
    kwargs = dict(kwargs)
    kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    kwargs["fpsan_homomorphic_casts"] = knobs.compilation.fpsan_homomorphic_casts
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization,
                                                          options)
    return signature, constexprs, attrs, options


def _config_label(config, kwargs):
    if config is None:  # a fixed launch: its constexpr meta-parameters
        return " ".join(f"{k}={v}" for k, v in kwargs.items() if k.isupper())
    return " ".join([*(f"{k}={v}" for k, v in config.kwargs.items()),
                     f"num_warps={config.num_warps}", f"num_stages={config.num_stages}"])


def plan(archs):
    """(jobs, records): the distinct compiles, each (fn, arch, signature, constexprs, attrs,
    options dict), and a record per (problem, launch, target, config) naming its job."""
    jobs, index, records = [], {}, []
    for arch in archs:
        target = target_of_capability(arch)
        backend = make_backend(GPUTarget("cuda", arch, 32))
        for problem, launches in problems():
            for kernel, _grid, args, kwargs in launches:
                for fn, full, config in _variants(kernel, args, kwargs, target):
                    signature, constexprs, attrs, options = _specialise(fn, backend, args, full)
                    key = (arch, ASTSource(fn, signature, constexprs, attrs).hash(),
                           options.hash())
                    if key not in index:
                        index[key] = len(jobs)
                        jobs.append((fn, arch, signature, constexprs, attrs, options.__dict__))
                    records.append(dict(problem, kernel=fn.__name__, arch=arch,
                                        smem_limit=target.smem_bytes,
                                        config=_config_label(config, full), job=index[key]))
    return jobs, records


# SASS lines as cuobjdump prints them: /*0990*/  @P0 STL.64 [R1+0x8], R4 ;
_SASS = re.compile(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);")
_BRANCH = re.compile(r"\bBRA(?:\.\w+)*\s+(?:\S+,\s*)?0x([0-9a-f]+)")
_SPILL = re.compile(r"^(?:@!?U?P\w+\s+)?(STL|LDL)((?:\.\w+)*)\s")
_WIDTH = {"128": 16, "64": 8, "U16": 2, "S16": 2, "U8": 1, "S8": 1}  # else 4 bytes


def sass_spills(sass):
    """Spill instructions (STL/LDL) of a SASS listing: {stores, loads, store_bytes, load_bytes}
    in all, inside loops (loop_*) and inside innermost loops (inner_*: a K loop nested in the
    vocabulary walk runs many times per tile). A loop spans a backward branch and its target
    (the final branch-to-itself after EXIT is no loop)."""
    code = [(int(addr, 16), text.strip()) for addr, text in _SASS.findall(sass)]
    loops = [(int(m.group(1), 16), addr) for addr, text in code
             if (m := _BRANCH.search(text)) and int(m.group(1), 16) < addr]
    inner = [(a, b) for a, b in loops
             if not any((a, b) != (c, d) and a <= c and d <= b for c, d in loops)]
    counts = {f"{where}{what}": 0 for where in ("", "loop_", "inner_")
              for what in ("stores", "loads", "store_bytes", "load_bytes")}
    for addr, text in code:
        if not (m := _SPILL.match(text)):
            continue
        kind = "store" if m.group(1) == "STL" else "load"
        width = next((_WIDTH[part] for part in m.group(2).split(".") if part in _WIDTH), 4)
        for where, spans in (("", [(addr, addr)]), ("loop_", loops), ("inner_", inner)):
            if any(begin <= addr <= end for begin, end in spans):
                counts[f"{where}{kind}s"] += 1
                counts[f"{where}{kind}_bytes"] += width
    counts["loops"] = len(loops)
    return counts


def _cuobjdump(*args):
    return subprocess.run([knobs.nvidia.cuobjdump.path, *args], check=True, capture_output=True,
                          text=True).stdout


# The figures of a cubin are kept beside it in Triton's cache (disassembling it takes longer
# than a cache hit), under a name that changes whenever this file does.
_FIGURES = f"aot-figures-{hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]}.json"


def compile_job(job):
    """What one compile gives: shared memory (Triton's dynamic plus the cubin's static),
    registers, stack frame and spills."""
    fn, arch, signature, constexprs, attrs, options = job
    start = time.perf_counter()
    kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs),
                            target=GPUTarget("cuda", arch, 32), options=options)
    seconds = time.perf_counter() - start
    cache = get_cache_manager(kernel.hash)
    if kept := cache.get_file(_FIGURES):
        return dict(json.loads(Path(kept).read_text()), compile_s=round(seconds, 2))
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        usage = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)",
                                _cuobjdump("--dump-resource-usage", str(cubin))))
        spills = sass_spills(_cuobjdump("-sass", str(cubin)))
    figures = dict(shared=kernel.metadata.shared + int(usage["SHARED"]),
                   shared_dynamic=kernel.metadata.shared, regs=int(usage["REG"]),
                   stack=int(usage["STACK"]), **spills)
    cache.put(json.dumps(figures), _FIGURES, binary=False)
    return dict(figures, compile_s=round(seconds, 2))


_JOBS = []  # the plan's jobs, inherited by the forked workers (JITFunctions do not pickle)


def _run_job(i):
    try:
        return compile_job(_JOBS[i])
    except Exception as error:  # reported per compile, the others still made
        return dict(error=f"{type(error).__name__}: {error}"[:4000])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, action="append",
                        help=f"compute capability as Triton writes it (default {ARCHS})")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="compiles run at once")
    parser.add_argument("--out", type=argparse.FileType("w"), default=sys.stdout,
                        help="where the JSON goes (Triton may print to stdout)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("kernels.aot compiles the kernels: run it with TRITON_INTERPRET unset")
    os.environ.setdefault("TRITON_CACHE_DIR", str(CACHE_DIR))  # read by Triton at each compile
    start = time.perf_counter()
    jobs, records = plan(tuple(args.arch or ARCHS))
    _JOBS[:] = jobs
    if args.jobs > 1:
        with concurrent.futures.ProcessPoolExecutor(
                args.jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            results = list(pool.map(_run_job, range(len(jobs))))
    else:
        results = [_run_job(i) for i in range(len(jobs))]
    for record in records:
        record.update(results[record["job"]])
    json.dump(dict(records=records, compiles=len(jobs),
                   seconds=round(time.perf_counter() - start, 1)), args.out)
    args.out.write("\n")


if __name__ == "__main__":
    main()
