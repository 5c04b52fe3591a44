"""Load balance and overhead of ``--engine ray`` against static sharding (what torchrun does) on
a job mix whose costs differ by 10x and more: the shipped tiny model (fp64), lengths 8..64, the
default preset; short texts stop within tens of steps, long ones run most of their budget.

    .venv/bin/python benchmarks/ray_balance.py [--workers 2] [--samples 4] [--out FILE.json]

Prints and writes (JSON) the makespans of: one process with one thread (all the work; the ideal
makespan is it divided by the workers), static sharding (one process per worker, each with every
workers-th job, run at the same time: the slower one's wall time), Ray (a local cluster, one
thread per actor; cluster start-up excluded, the actors' model loads included), and the per-job
overhead of Ray against one process on a small sweep of 1-step jobs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "tests" / "data" / "tiny-llama-trained"
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("TRITON_INTERPRET", "1")


def corpus(folder: Path) -> Path:
    from conftest import CORPUS
    sentences = [s.strip() + "." for s in CORPUS.split(". ") if s.strip()]
    path = folder / "corpus.txt"
    path.write_text("\n\n".join(" ".join((sentences[k:] + sentences[:k]) * 6) for k in range(8)))
    return path


def sweep_args(source, db, samples, lengths, max_steps, extra=()):
    return ["--model", str(MODEL), "--source", str(source), "--lengths", lengths, "--samples",
            str(samples), "--dtype", "fp64", "--max-steps", str(max_steps), "--set",
            "fill_slots=0", "--db", str(db), "--quiet", "--threads", "1", *extra]


def timed(command, env=None) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--lengths", default="8,16,24,32,48,64")
    p.add_argument("--max-steps", type=int, default=400)
    p.add_argument("--out")
    args = p.parse_args()
    from cramfast.sweep import runner, store
    from cramfast.sweep.grid import build_grid
    from cramfast.sweep.ray_engine import RayPool
    tmp = Path(tempfile.mkdtemp())
    source = corpus(tmp)
    common = (source, args.samples, args.lengths, args.max_steps)
    sweep = [sys.executable, "-m", "cramfast.sweep"]

    one = timed(sweep + sweep_args(source, tmp / "one.db", *common[1:]))
    steps = [r["steps"] for r in store.read_runs([tmp / "one.db"])]
    static = []
    procs = []
    start = time.perf_counter()
    for rank in range(args.workers):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(args.workers))
        t0 = time.perf_counter()
        procs.append((subprocess.Popen(sweep + sweep_args(source, tmp / "static.db", *common[1:]),
                                       env=env, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL), t0))
    for proc, t0 in procs:
        proc.wait()
        static.append(time.perf_counter() - t0)
    static_makespan = time.perf_counter() - start

    pool = RayPool(workers=args.workers, threads=1)
    grid = build_grid(runner._parser().parse_args(sweep_args(source, tmp / "ray.db",
                                                             *common[1:])))
    start = time.perf_counter()
    runner.run_sweep(grid, quiet=True, compress_iter=pool.compress_iter, rank=0, world=1)
    ray_makespan = time.perf_counter() - start

    # overhead: many 1-step jobs, one process vs Ray, after the pool has its model loaded
    small = (source, 6, "8,12,16,20", 1)
    grid = build_grid(runner._parser().parse_args(sweep_args(source, tmp / "warm.db",
                                                             *small[1:])))
    runner.run_sweep(grid, quiet=True, compress_iter=pool.compress_iter, rank=0, world=1)
    grid = build_grid(runner._parser().parse_args(sweep_args(source, tmp / "o_ray.db",
                                                             *small[1:], extra=("--seeds", "1"))))
    start = time.perf_counter()
    on_ray = runner.run_sweep(grid, quiet=True, compress_iter=pool.compress_iter, rank=0, world=1)
    ray_small = time.perf_counter() - start
    pool.close()
    grid = build_grid(runner._parser().parse_args(sweep_args(source, tmp / "o_one.db",
                                                             *small[1:], extra=("--seeds", "1"))))
    start = time.perf_counter()
    runner.run_sweep(grid, quiet=True)
    one_small = time.perf_counter() - start

    n = len(steps)
    out = dict(jobs=n, workers=args.workers, steps_min=min(steps), steps_max=max(steps),
               one_process_s=round(one, 2), ideal_s=round(one / args.workers, 2),
               static_s=round(static_makespan, 2), static_ranks_s=[round(t, 2) for t in static],
               ray_s=round(ray_makespan, 2),
               ray_vs_ideal=round(ray_makespan / (one / args.workers), 3),
               static_vs_ideal=round(static_makespan / (one / args.workers), 3),
               overhead_jobs=on_ray.ran,
               overhead_ms_per_job=round((ray_small - one_small) / on_ray.ran * 1000, 1))
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
