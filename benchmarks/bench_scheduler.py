"""Continuous batching vs static batching on a simulated cramming workload.

    pytest benchmarks/bench_scheduler.py --benchmark-only

The workload (deterministic, seed SEED):
  * 64 jobs, n_tokens uniform on 8..64;
  * convergence step c = ceil(3 * n_tokens * LogNormal(0, 0.5)): longer texts need more steps
    (roughly proportional to length, as cramming capacity is spent per token), with a
    multiplicative spread and a right tail, as observed across texts of one length;
  * 85% of jobs converge: n_correct(s) = floor((n_tokens - 1) * min(1, s / c)), so they stop
    "lossless" at s = c, or "max_steps" if c > MAX_STEPS; 15% plateau at 80% of the tokens
    and stop "stalled" PATIENCE evaluations after their last improvement.
The device is simulated by these trajectories; the scheduler sees only n_correct rows.

Cost unit: padded token-steps = sum over evaluations of n_occupied * (padded_length + n_mem),
as Scheduler.token_steps() counts it. The static baseline (static_batching_token_steps) cuts
the jobs into batches of MAX_SLOTS in input order, pads each to its longest job and runs it
until its slowest job stops. ratio = static / scheduler: the speed-up in device work, a
deterministic count (not a timing). The scheduler's budget is MAX_SLOTS * (64 + N_MEM): the
memory a static batch of the longest texts needs, so both get the same memory.

sync_every = 1 refills freed slots after every evaluation; sync_every = 16 reports (and so
refills) every 16 evaluations, as the compressor does by default, which leaves freed slots
idle until the next report.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

from cramfast.engine.scheduler import Scheduler, static_batching_token_steps

SEED = 20250
N_JOBS = 64
MIN_LEN, MAX_LEN = 8, 64
STEPS_PER_TOKEN = 3.0
SPREAD_SIGMA = 0.5
PLATEAU_FRACTION, PLATEAU_LEVEL = 0.15, 0.8
MAX_STEPS, PATIENCE = 400, 50
N_MEM = 1
MAX_SLOTS = 16
TOKEN_BUDGET = MAX_SLOTS * (MAX_LEN + N_MEM)
MIN_BUCKETED_RATIO = 1.5


def make_workload(seed=SEED):
    """(lengths, trajectories): trajectories[j][s] = n_correct of job j at evaluation s."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(MIN_LEN, MAX_LEN + 1, size=N_JOBS)
    spread = rng.lognormal(0.0, SPREAD_SIGMA, size=N_JOBS)
    plateaus = rng.random(N_JOBS) < PLATEAU_FRACTION
    trajectories = []
    for n, factor, plateau in zip(lengths.tolist(), spread.tolist(), plateaus.tolist()):
        converge_at = max(1, math.ceil(STEPS_PER_TOKEN * n * factor))
        top = math.floor(PLATEAU_LEVEL * (n - 1)) if plateau else n - 1
        s = np.arange(MAX_STEPS + 1)
        trajectories.append(np.floor(top * np.minimum(1.0, s / converge_at)).astype(np.int64))
    return lengths.tolist(), trajectories


def simulate(policy, sync_every, lengths, trajectories):
    """Runs the workload; returns (scheduler, finished jobs by id, recorded report matrices)."""
    sched = Scheduler(MAX_SLOTS, TOKEN_BUDGET, N_MEM, policy)
    for job_id, n in enumerate(lengths):
        sched.add_job(job_id, n, MAX_STEPS, PATIENCE)
    evals_done, results, recorded = {}, {}, []
    while not sched.done():
        plan = sched.plan()
        for slot in plan.new_slots:
            evals_done[plan.slot_jobs[slot]] = 0
        rows = np.full((sync_every, MAX_SLOTS), -1, dtype=np.int64)
        for slot, job_id in enumerate(plan.slot_jobs):
            if job_id >= 0:  # past its stop the device repeats the frozen value: ignored
                s = np.minimum(evals_done[job_id] + np.arange(sync_every), MAX_STEPS)
                rows[:, slot] = trajectories[job_id][s]
                evals_done[job_id] += sync_every
        recorded.append(rows)
        for fin in sched.report(rows):
            results[fin.job_id] = fin
    return sched, results, recorded


def ideal_token_steps(lengths, steps):
    """No padding and no idle slot: every job pays only its own (n_tokens + n_mem) per
    evaluation."""
    return sum((n + N_MEM) * (s + 1) for n, s in zip(lengths, steps))


@pytest.mark.parametrize("sync_every", [1, 16])
@pytest.mark.parametrize("policy", ["bucketed", "fifo"])
def test_token_steps_vs_static_batching(benchmark, policy, sync_every):
    lengths, trajectories = make_workload()
    sched, results, _ = benchmark.pedantic(simulate, args=(policy, sync_every, lengths,
                                                           trajectories),
                                           rounds=3, iterations=1)
    assert sorted(results) == list(range(N_JOBS))
    steps = [results[j].steps for j in range(N_JOBS)]
    static = static_batching_token_steps(lengths, steps, N_MEM, MAX_SLOTS)
    ideal = ideal_token_steps(lengths, steps)
    ratio = static / sched.token_steps()
    reasons = [results[j].reason for j in range(N_JOBS)]
    benchmark.extra_info.update(
        policy=policy, sync_every=sync_every, scheduler_token_steps=sched.token_steps(),
        static_token_steps=static, ideal_token_steps=ideal, ratio_static_over_scheduler=round(ratio,
                                                                                              3),
        scheduler_efficiency=round(ideal / sched.token_steps(), 3),
        static_efficiency=round(ideal / static, 3),
        evaluations=sched.evaluations(), reports=math.ceil(sched.evaluations() / sync_every),
        reasons={r: reasons.count(r) for r in ("lossless", "stalled", "max_steps")})
    print(f"\n{policy:8s} sync_every={sync_every:2d}: static/scheduler = {ratio:.2f} "
          f"({static} / {sched.token_steps()} token-steps, ideal {ideal})")
    if policy == "bucketed" and sync_every == 1:
        assert ratio >= MIN_BUCKETED_RATIO


@pytest.mark.parametrize("layer", ["python_face", "core"])
def test_microseconds_per_plan_and_report(benchmark, layer):
    """Replays the recorded bucketed run (sync_every 1) through cramfast.scheduler.Scheduler or
    its raw binding. The benchmark times a whole replay (construction and add_job included);
    us_per_plan_report is the median time of the plan() + report() loop alone, per step."""
    lengths, trajectories = make_workload()
    _, _, recorded = simulate("bucketed", 1, lengths, trajectories)
    loop_seconds = []

    def replay():
        sched = Scheduler(MAX_SLOTS, TOKEN_BUDGET, N_MEM, "bucketed")
        for job_id, n in enumerate(lengths):
            sched.add_job(job_id, n, MAX_STEPS, PATIENCE)
        target = sched if layer == "python_face" else sched.core
        start = time.perf_counter()
        for rows in recorded:
            target.plan()
            target.report(rows)
        loop_seconds.append(time.perf_counter() - start)
        assert sched.done()

    benchmark.pedantic(replay, rounds=30, iterations=1, warmup_rounds=3)
    steps = len(recorded)
    us_per_step = 1e6 * float(np.median(loop_seconds)) / steps
    stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
    benchmark.extra_info.update(layer=layer, plan_report_steps=steps,
                                us_per_plan_report=round(us_per_step, 3))
    if stats is not None:
        benchmark.extra_info["us_per_step_whole_replay"] = round(1e6 * stats.stats.median / steps,
                                                                 3)
    print(f"\n{layer}: {us_per_step:.2f} us per plan+report (median over replays of {steps} steps)")
