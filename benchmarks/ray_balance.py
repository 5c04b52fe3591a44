"""Load balance and overhead of ``--engine ray`` against static sharding (what torchrun does) on
a job mix whose costs differ by 10x and more: the shipped tiny model (fp64), lengths 8..64, the
default preset; short texts stop within tens of steps, long ones run most of their budget.

    .venv/bin/python benchmarks/ray_balance.py [--workers 2] [--samples 4] [--out FILE.json]

Every worker and every process computes on one thread. For each batch size in ``--max-slots``
(0: the engine's own, which on a CPU holds this whole mix at once; a small one: far more jobs
than slots, so that which worker gets which job matters), the makespans of:

- one process (all the work; the ideal makespan is it divided by the workers),
- static sharding (one process per worker, each with every workers-th job, run at the same time:
  the slower one),
- Ray, cold (a local cluster already up; the actors start and load the model in the time) and
  warm (the same sweep again into a new store, the actors' models loaded),

each its sweep's own wall time (run_sweep), the first two warm too: their processes ran a
1-step sweep of the same jobs first (the model loaded, the steps compiled); and the per-job
overhead of Ray against one process on a sweep of 1-step jobs, with one worker (the same
compute as the one process). The load average before each run is
recorded beside it: the figures are only comparable on an otherwise idle CPU.
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


def sweep_args(source, db, samples, lengths, max_steps, max_slots=0, extra=()):
    slots = ["--max-slots", str(max_slots)] if max_slots else []
    return ["--model", str(MODEL), "--source", str(source), "--lengths", lengths, "--samples",
            str(samples), "--dtype", "fp64", "--max-steps", str(max_steps), "--set",
            "fill_slots=0", "--db", str(db), "--quiet", "--threads", "1", *slots, *extra]


def load() -> float:
    return round(os.getloadavg()[0], 2)


def sweep_processes(args_per_process: list[list[str]], ranks: bool) -> list[float]:
    """Run each argument list's sweep in a process of its own, all at once (as ranks of one
    world when ``ranks``), each after a 1-step warm-up of the same jobs (the model loaded, the
    steps compiled, as in Ray's warm run); each one's run time of the timed sweep."""
    procs = []
    for rank, args in enumerate(args_per_process):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(len(args_per_process))) \
            if ranks else None
        warm_up = args + ["--db", args[args.index("--db") + 1] + ".warm", "--max-steps", "1"]
        procs.append(subprocess.Popen([sys.executable, __file__, "--timed-sweep",
                                       json.dumps([warm_up, args])], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      text=True))
    seconds = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"a sweep failed (exit {proc.returncode})")
        seconds.append(float(out.split()[-1]))
    return seconds


def timed_sweep(arg_lists: str):
    """In a process of its own: the warm-up sweep, then the timed one; prints its seconds."""
    import torch

    from cramfast.sweep import runner
    from cramfast.sweep.grid import build_grid
    torch.set_num_threads(1)
    for args in json.loads(arg_lists):
        summary = runner.run_sweep(build_grid(runner._parser().parse_args(args)), quiet=True)
    print(summary.seconds)


def on_pool(pool, args: list[str]):
    from cramfast.sweep import runner
    from cramfast.sweep.grid import build_grid
    grid = build_grid(runner._parser().parse_args(args))
    return runner.run_sweep(grid, quiet=True, compress_iter=pool.compress_iter, rank=0, world=1)


def balance(args, tmp: Path, source: Path, max_slots: int) -> dict:
    from cramfast.sweep import store
    from cramfast.sweep.ray_engine import RayPool
    tag = f"slots{max_slots}"
    common = (args.samples, args.lengths, args.max_steps, max_slots)
    out = dict(max_slots=max_slots or "engine's own")
    out["one_process_load"] = load()
    [one] = sweep_processes([sweep_args(source, tmp / f"{tag}-one.db", *common)], ranks=False)
    steps = [r["steps"] for r in store.read_runs([tmp / f"{tag}-one.db"])]
    out["static_load"] = load()
    static = sweep_processes([sweep_args(source, tmp / f"{tag}-static.db", *common)]
                             * args.workers, ranks=True)
    pool = RayPool(workers=args.workers, threads=1)
    try:
        out["ray_cold_load"] = load()
        cold = on_pool(pool, sweep_args(source, tmp / f"{tag}-ray.db", *common)).seconds
        out["ray_warm_load"] = load()
        warm = on_pool(pool, sweep_args(source, tmp / f"{tag}-ray2.db", *common)).seconds
    finally:
        pool.close()
    ideal = one / args.workers
    out.update(jobs=len(steps), steps_min=min(steps), steps_max=max(steps),
               one_process_s=round(one, 2), ideal_s=round(ideal, 2),
               static_s=round(max(static), 2), static_ranks_s=[round(t, 2) for t in static],
               ray_cold_s=round(cold, 2), ray_warm_s=round(warm, 2),
               static_vs_ideal=round(max(static) / ideal, 3),
               ray_cold_vs_ideal=round(cold / ideal, 3), ray_warm_vs_ideal=round(warm / ideal, 3))
    return out


def overhead(tmp: Path, source: Path) -> dict:
    """Many 1-step jobs: one worker against one process, after the actor loaded the model."""
    from cramfast.sweep import runner
    from cramfast.sweep.grid import build_grid
    from cramfast.sweep.ray_engine import RayPool
    small = (6, "8,12,16,20", 1)
    pool = RayPool(workers=1, threads=1)
    try:
        on_pool(pool, sweep_args(source, tmp / "warm.db", *small))
        load_ray = load()
        on_ray = on_pool(pool, sweep_args(source, tmp / "o_ray.db", *small,
                                          extra=("--seeds", "1")))
    finally:
        pool.close()
    load_one = load()
    grid = build_grid(runner._parser().parse_args(sweep_args(source, tmp / "o_one.db", *small,
                                                             extra=("--seeds", "1"))))
    alone = runner.run_sweep(grid, quiet=True)
    return dict(jobs=on_ray.ran, ray_s=round(on_ray.seconds, 3), ray_load=load_ray,
                one_process_s=round(alone.seconds, 3), one_process_load=load_one,
                ms_per_job=round((on_ray.seconds - alone.seconds) / on_ray.ran * 1000, 1))


def main():
    if sys.argv[1:2] == ["--timed-sweep"]:
        return timed_sweep(sys.argv[2])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--lengths", default="8,16,24,32,48,64")
    p.add_argument("--max-steps", type=int, default=400)
    p.add_argument("--max-slots", default="0,4", help="batch sizes to run the mix with "
                   "(0: the engine's own)")
    p.add_argument("--out")
    args = p.parse_args()
    import torch
    torch.set_num_threads(1)            # the driver too, like every worker
    tmp = Path(tempfile.mkdtemp())
    source = corpus(tmp)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    out = dict(started=started, uptime_before=uptime, workers=args.workers,
               lengths=args.lengths, samples=args.samples, max_steps=args.max_steps,
               balance=[balance(args, tmp, source, int(s)) for s in args.max_slots.split(",")],
               overhead=overhead(tmp, source),
               uptime_after=subprocess.run(["uptime"], capture_output=True,
                                           text=True).stdout.strip())
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
