"""Load balance and overhead of ``--engine ray`` against static sharding (what torchrun does) on
a job mix whose costs differ by 10x and more: the shipped tiny model (fp64), lengths 8..64, the
default preset; short texts stop within tens of steps, long ones run most of their budget.

    .venv/bin/python benchmarks/ray_balance.py [--workers 2] [--regimes 0:4,4:4,4:12]
        [--repeats 3] [--out FILE.json]

Every worker and every process computes on one thread. For each regime (MAX_SLOTS:SAMPLES: a
batch size, 0 the engine's own, whose 32 CPU slots hold the 24 jobs of 4 texts per length at
once, or a small one, so that jobs outnumber slots and which worker gets which job matters; and
the texts per length), ``--repeats`` times:

- one process (all the work; the ideal makespan is it divided by the workers),
- static sharding (one process per worker, each with every workers-th job, run at the same time:
  the slower one),
- Ray, cold (a local cluster already up; the actors start and load the model in the time) and
  warm (the same sweep again into a new store, the actors' models loaded),

each its sweep's own wall time (run_sweep), the first two warm too: their processes ran a
1-step sweep of the same jobs first (the model loaded, the steps compiled). Beside them the
split alone, whatever a step costs: the makespan over the mean worker's time (the static ranks'
own times, the Ray actors' CPU time), and the work Ray's actors did against the one process's;
and the per-job overhead of Ray against one process on a sweep of 1-step jobs, with one worker
(the same compute as the one process). The load average before each run and this session's
autogroup (Linux shares the CPU between sessions before niceness counts) are recorded: the
figures are only comparable on an otherwise idle CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "tests" / "data" / "tiny-llama-trained"
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("TRITON_INTERPRET", "1")


def corpus(folder: Path, paragraphs: int = 8) -> Path:
    """The tests' prose, one paragraph per rotation of its sentences (at most 16)."""
    from conftest import CORPUS
    sentences = [s.strip() + "." for s in CORPUS.split(". ") if s.strip()]
    path = folder / f"corpus{paragraphs}.txt"
    path.write_text("\n\n".join(" ".join((sentences[k:] + sentences[:k]) * 6)
                                for k in range(paragraphs)))
    return path


def sweep_args(source, db, samples, lengths, max_steps, max_slots=0, extra=()):
    slots = ["--max-slots", str(max_slots)] if max_slots else []
    return ["--model", str(MODEL), "--source", str(source), "--lengths", lengths, "--samples",
            str(samples), "--dtype", "fp64", "--max-steps", str(max_steps), "--set",
            "fill_slots=0", "--db", str(db), "--quiet", "--threads", "1", *slots, *extra]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process of this machine (a local cluster's actor)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def balance(args, tmp: Path, max_slots: int, samples: int, run: int) -> dict:
    from cramfast.sweep import store
    from cramfast.sweep.ray_engine import RayPool
    source = corpus(tmp, 8 if samples <= 6 else 16)     # 8 paragraphs: 6 distinct passages
    tag = f"slots{max_slots}-samples{samples}-run{run}"
    common = (samples, args.lengths, args.max_steps, max_slots)
    out = dict(max_slots=max_slots or "engine's own", samples=samples, run=run)
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
        pids = pool.pids()
        before = [cpu_seconds(pid) for pid in pids]
        warm = on_pool(pool, sweep_args(source, tmp / f"{tag}-ray2.db", *common)).seconds
        busy = [cpu_seconds(pid) - b for pid, b in zip(pids, before)]
    finally:
        pool.close()
    ideal = one / args.workers
    out.update(jobs=len(steps), steps_min=min(steps), steps_max=max(steps),
               one_process_s=round(one, 2), ideal_s=round(ideal, 2),
               static_s=round(max(static), 2), static_ranks_s=[round(t, 2) for t in static],
               ray_cold_s=round(cold, 2), ray_warm_s=round(warm, 2),
               ray_warm_actor_cpu_s=[round(b, 2) for b in busy],
               # the split alone, whatever a step costs: makespan over the mean worker's work
               static_imbalance=round(max(static) / statistics.mean(static), 3),
               ray_warm_imbalance=round(warm / statistics.mean(busy), 3),
               # the work Ray's workers did, against the one process's
               ray_work_vs_one=round(sum(busy) / one, 3),
               static_vs_ideal=round(max(static) / ideal, 3),
               ray_cold_vs_ideal=round(cold / ideal, 3), ray_warm_vs_ideal=round(warm / ideal, 3))
    return out


def medians(runs: list[dict]) -> dict:
    """Each figure's median over the runs of one regime (the CPU's noise between runs is
    larger than the differences measured)."""
    keys = [k for k, v in runs[0].items() if k.endswith(("_s", "_ideal", "_imbalance", "_one"))
            and isinstance(v, float)]
    return {k: statistics.median(r[k] for r in runs) for k in keys}


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
    p.add_argument("--lengths", default="8,16,24,32,48,64")
    p.add_argument("--max-steps", type=int, default=400)
    p.add_argument("--regimes", default="0:4,4:4,4:12", help="MAX_SLOTS:SAMPLES pairs to run "
                   "the mix with (max_slots 0: the engine's own; samples: texts per length)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each regime")
    p.add_argument("--out")
    args = p.parse_args()
    import torch
    torch.set_num_threads(1)            # the driver too, like every worker
    tmp = Path(tempfile.mkdtemp())
    source = corpus(tmp)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    group = Path("/proc/self/autogroup")      # the CPU share this session's processes get
    regimes = []
    for regime in args.regimes.split(","):
        slots, samples = map(int, regime.split(":"))
        runs = [balance(args, tmp, slots, samples, k) for k in range(args.repeats)]
        regimes.append(dict(max_slots=slots or "engine's own", samples=samples,
                            median=medians(runs), runs=runs))
    out = dict(started=started, uptime_before=uptime,
               autogroup=group.read_text().strip() if group.exists() else None,
               workers=args.workers, lengths=args.lengths, max_steps=args.max_steps,
               balance=regimes, overhead=overhead(tmp, source),
               uptime_after=subprocess.run(["uptime"], capture_output=True,
                                           text=True).stdout.strip())
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
