"""The C++ continuous-batching scheduler (cramfast._scheduler through cramfast.scheduler).

Two pure-Python references keep it honest:
  * ``stop_rule`` - the stop rule transcribed from the spec, run over a whole trajectory;
  * ``OracleScheduler`` - the same plan/report algorithm with plain lists and linear scans
    (the C++ uses ordered sets), compared plan by plan and report by report.
Simulated workloads draw accuracy trajectories from a seeded numpy RNG.
"""
from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cramfast.engine.scheduler import Finished, Plan, Scheduler, static_batching_token_steps

# ---------------------------------------------------------------------------------------------
# references


def stop_rule(trajectory, n_tokens, max_steps, patience):
    """(reason, steps, best_step, best_correct) of a job whose evaluation s reads trajectory[s]."""
    best_correct, best_step, s = -1, 0, 0
    while True:
        n_correct = trajectory[s]
        if n_correct > best_correct:
            best_correct, best_step = n_correct, s
        if n_correct == n_tokens - 1:
            return "lossless", s, best_step, best_correct
        if s - best_step >= patience:
            return "stalled", s, best_step, best_correct
        if s >= max_steps:
            return "max_steps", s, best_step, best_correct
        s += 1


class OracleScheduler:
    """Pure-Python twin of csrc/scheduler.cpp (same tie rules), written for clarity not speed."""

    def __init__(self, max_slots, token_budget, n_mem, policy="bucketed", max_passes=None):
        self.max_slots, self.token_budget = max_slots, token_budget
        self.n_mem, self.policy = n_mem, policy
        self.max_passes = max_slots if max_passes is None else max_passes
        self.queue = []  # oldest first: dicts id, n, max_steps, patience, seq
        self.slots = [None] * max_slots  # dicts job, s, best_correct, best_step
        self.seq = self.plan_cost = self.tokens = self.evals = self.n_finished = 0
        self.passes = {}  # seq -> plans in which that job, being the oldest queued, was passed over

    def add_job(self, job_id, n_tokens, max_steps, patience):
        assert n_tokens + self.n_mem <= self.token_budget
        self.queue.append(dict(id=job_id, n=n_tokens, max_steps=max_steps, patience=patience,
                               seq=self.seq))
        self.seq += 1

    def padded(self):
        return max((slot["job"]["n"] for slot in self.slots if slot), default=0)

    def occupied(self):
        return sum(slot is not None for slot in self.slots)

    def fits(self, n, padded, occupied):
        return (occupied + 1) * (max(n, padded) + self.n_mem) <= self.token_budget

    def choose(self, padded, occupied):
        head = self.queue[0]
        starving = self.passes.get(head["seq"], 0) > self.max_passes
        if self.policy == "fifo" or occupied == 0 or starving:
            return head if self.fits(head["n"], padded, occupied) else None
        fitting = [job for job in self.queue if self.fits(job["n"], padded, occupied)]
        def waste(job):
            return padded - job["n"] if job["n"] <= padded else occupied * (job["n"] - padded)
        return min(fitting, key=lambda job: (waste(job), job["seq"]), default=None)

    def plan(self):
        new_slots, started = [], []
        while self.occupied() < self.max_slots and self.queue:
            job = self.choose(self.padded(), self.occupied())
            if job is None:
                break
            self.queue.remove(job)
            started.append(job["seq"])
            slot = self.slots.index(None)
            self.slots[slot] = dict(job=job, s=0, best_correct=-1, best_step=0)
            new_slots.append(slot)
        if self.queue:  # only the job that is oldest now keeps a count
            oldest = self.queue[0]["seq"]
            self.passes = {oldest: self.passes.get(oldest,
                                                   0) + any(seq > oldest for seq in started)}
        self.plan_cost = self.occupied() * (self.padded() + self.n_mem)
        return Plan(tuple(slot["job"]["id"] if slot else -1 for slot in self.slots),
                    tuple(new_slots), self.padded(), self.occupied())

    def report(self, history):
        out = []
        for row in np.asarray(history).reshape(-1, self.max_slots).tolist():
            for i, slot in enumerate(self.slots):
                if slot is None:
                    continue
                job, n_correct = slot["job"], row[i]
                if n_correct > slot["best_correct"]:
                    slot["best_correct"], slot["best_step"] = n_correct, slot["s"]
                reason = ("lossless" if n_correct == job["n"] - 1 else
                          "stalled" if slot["s"] - slot["best_step"] >= job["patience"] else
                          "max_steps" if slot["s"] >= job["max_steps"] else None)
                if reason is None:
                    slot["s"] += 1
                    continue
                out.append(Finished(job["id"], i, reason, slot["s"], slot["best_step"],
                                    slot["best_correct"]))
                self.slots[i] = None
            self.evals += 1
            self.tokens += self.plan_cost
        self.n_finished += len(out)
        return out

    def pending(self):
        return len(self.queue)

    def running(self):
        return self.occupied()

    def finished(self):
        return self.n_finished

    def done(self):
        return not self.queue and not self.occupied()

    def token_steps(self):
        return self.tokens

    def evaluations(self):
        return self.evals


# ---------------------------------------------------------------------------------------------
# simulated workloads


def make_workload(seed, n_jobs, max_len, max_steps_cap, patience_cap):
    """Jobs (id, n_tokens, max_steps, patience, arrival_round) and one n_correct trajectory per
    job: a seeded random walk in [0, n_tokens - 1] that sometimes jumps to lossless."""
    rng = np.random.default_rng(seed)
    jobs, trajectories = [], {}
    for job_id in range(n_jobs):
        n = int(rng.integers(1, max_len + 1))
        max_steps = int(rng.integers(0, max_steps_cap + 1))
        patience = int(rng.integers(1, patience_cap + 1))
        arrival = 0 if rng.random() < 0.5 else int(rng.integers(0, 3 * max_steps_cap + 2))
        jobs.append((job_id, n, max_steps, patience, arrival))
        steps = rng.integers(-1, 3, size=max_steps + 1)
        walk = np.clip(np.cumsum(steps), 0, n - 1)
        if rng.random() < 0.3:
            walk[int(rng.integers(0, max_steps + 1)):] = n - 1
        trajectories[job_id] = [int(v) for v in walk]
    return jobs, trajectories


def history_rows(plan, trajectories, evals_done, stop_at, k):
    """k x max_slots n_correct rows for the plan; rows after a job's stop hold garbage (the
    scheduler must ignore them), empty slots -1."""
    rows = np.full((k, len(plan.slot_jobs)), -1, dtype=np.int64)
    for slot, job_id in enumerate(plan.slot_jobs):
        if job_id < 0:
            continue
        for r in range(k):
            s = evals_done[job_id] + r
            rows[r, slot] = trajectories[job_id][s] if s <= stop_at[job_id] else 10**9
    return rows


def drive(sched, jobs, trajectories, seed, max_k=3, check=None):
    """Runs the workload to the end; returns the trace [(plan, finished), ...]. Jobs arrive at
    their arrival round (or earlier, once nothing else is left). ``check(sched, plan)`` runs
    after every plan."""
    rng = np.random.default_rng(seed + 1)
    stop_at = {j[0]: stop_rule(trajectories[j[0]], *j[1:4])[1] for j in jobs}
    arrivals = sorted(jobs, key=lambda j: (j[4], j[0]))
    evals_done, trace, round_ = {}, [], 0
    while arrivals or not sched.done():
        while arrivals and (arrivals[0][4] <= round_ or sched.done()):
            job_id, n, max_steps, patience, _ = arrivals.pop(0)
            sched.add_job(job_id, n, max_steps, patience)
        plan = sched.plan()
        if check:
            check(sched, plan)
        for slot in plan.new_slots:
            evals_done[plan.slot_jobs[slot]] = 0
        k = int(rng.integers(1, max_k + 1))
        finished = sched.report(history_rows(plan, trajectories, evals_done, stop_at, k))
        for job_id in plan.slot_jobs:
            if job_id >= 0:
                evals_done[job_id] += k
        trace.append((plan, finished))
        round_ += 1
        assert round_ < 100_000, "simulation did not terminate"
    return trace


def budget_for(jobs, n_mem, max_slots, slack):
    """A budget every job fits alone in, from tight (slack 0) to roomy."""
    longest = max(j[1] for j in jobs) + n_mem
    return longest + slack * (max_slots * longest - longest) // 4


workloads = st.fixed_dictionaries(dict(
    seed=st.integers(0, 2**31),
    n_jobs=st.integers(1, 25),
    max_len=st.integers(1, 40),
    max_steps_cap=st.integers(0, 20),
    patience_cap=st.integers(1, 8),
    max_slots=st.integers(1, 6),
    n_mem=st.integers(0, 4),
    slack=st.integers(0, 5),
    policy=st.sampled_from(["fifo", "bucketed"]),
    max_passes=st.sampled_from([None, 0, 1, 3, 1000]),
))


def build(w, impl=Scheduler):
    jobs, trajectories = make_workload(w["seed"], w["n_jobs"], w["max_len"], w["max_steps_cap"],
                                       w["patience_cap"])
    budget = budget_for(jobs, w["n_mem"], w["max_slots"], w["slack"])
    sched = impl(w["max_slots"], budget, w["n_mem"], w["policy"], w["max_passes"])
    return sched, jobs, trajectories


# ---------------------------------------------------------------------------------------------
# property tests through the bindings

fast = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fast
@given(workloads)
def test_matches_oracle_and_invariants(w):
    sched, jobs, trajectories = build(w)
    oracle, _, _ = build(w, OracleScheduler)

    def check(s, plan):
        assert plan.n_occupied <= s.max_slots
        assert plan.n_occupied * (plan.padded_length + s.n_mem) <= s.token_budget
        occupied = [j for j in plan.slot_jobs if j >= 0]
        assert len(occupied) == plan.n_occupied == len(set(occupied))
        assert plan.padded_length == max((jobs[j][1] for j in occupied), default=0)
        assert all(plan.slot_jobs[slot] >= 0 for slot in plan.new_slots)
        assert s.running() == plan.n_occupied

    trace = drive(sched, jobs, trajectories, w["seed"], check=check)
    assert trace == drive(oracle, jobs, trajectories, w["seed"])
    assert sched.token_steps() == oracle.token_steps()
    assert sched.evaluations() == oracle.evaluations()

    results = [fin for _, finished in trace for fin in finished]
    assert sorted(fin.job_id for fin in results) == [j[0] for j in jobs]  # each exactly once
    for fin in results:
        job_id, n, max_steps, patience, _ = jobs[fin.job_id]
        expected = stop_rule(trajectories[job_id], n, max_steps, patience)
        assert (fin.reason, fin.steps, fin.best_step, fin.best_correct) == expected
    assert sched.done() and sched.pending() == sched.running() == 0
    assert sched.finished() == len(jobs)


@fast
@given(workloads)
def test_oldest_job_waits_a_bounded_number_of_plans(w):
    """Once a job is the oldest queued, it starts within (max_passes + 2) * (max_steps + 1)
    plans: it is passed over at most max_passes + 1 times before it starves, plans that start
    a job are at most max_steps + 1 apart (by then every running job has stopped), and once
    starving it waits only for the batch to drain."""
    sched, jobs, trajectories = build(w, OracleScheduler)  # identical to C++ (test above)
    head_since = {}

    def check(s, plan):
        started = {j for j in plan.slot_jobs if j >= 0}
        for job_id in list(head_since):
            if job_id in started:
                del head_since[job_id]
        if s.queue:
            head_since.setdefault(s.queue[0]["id"], len(waits))
        waits.append(dict(head_since))

    waits = []
    drive(sched, jobs, trajectories, w["seed"], check=check)
    bound = (sched.max_passes + 2) * (max(j[2] for j in jobs) + 1)
    for plan_index, heads in enumerate(waits):
        for job_id, since in heads.items():
            assert plan_index - since <= bound, f"job {job_id} is oldest since plan {since}"


@settings(max_examples=40, deadline=None)
@given(workloads, st.integers(2, 5))
def test_report_of_k_rows_equals_k_reports_of_one_row(w, k):
    one, jobs, trajectories = build(w)
    many, _, _ = build(w)
    stop_at = {j[0]: stop_rule(trajectories[j[0]], *j[1:4])[1] for j in jobs}
    for job_id, n, max_steps, patience, _ in jobs:
        one.add_job(job_id, n, max_steps, patience)
        many.add_job(job_id, n, max_steps, patience)
    evals_done = {}
    while not one.done():
        plan = one.plan()
        assert many.plan() == plan
        for slot in plan.new_slots:
            evals_done[plan.slot_jobs[slot]] = 0
        rows = history_rows(plan, trajectories, evals_done, stop_at, k)
        together = one.report(rows)
        apart = [fin for row in rows for fin in many.report(row[None])]
        assert together == apart
        assert one.token_steps() == many.token_steps()
        for job_id in plan.slot_jobs:
            if job_id >= 0:
                evals_done[job_id] += k
    assert many.done() and one.evaluations() == many.evaluations()


@settings(max_examples=30, deadline=None)
@given(workloads)
def test_deterministic(w):
    traces = []
    for _ in range(2):
        sched, jobs, trajectories = build(w)
        traces.append((drive(sched, jobs, trajectories, w["seed"]), sched.token_steps()))
    assert traces[0] == traces[1]


# ---------------------------------------------------------------------------------------------
# the stop rule, by hand


def run_one(n_tokens, max_steps, patience, values):
    """Feeds values one evaluation per report to a lone job; returns (finished, reports used)."""
    sched = Scheduler(1, 1000, 1, "fifo")
    sched.add_job(7, n_tokens, max_steps, patience)
    sched.plan()
    for used, value in enumerate(values, start=1):
        finished = sched.report([[value]])
        if finished:
            assert sched.done() and used == len(values), "stopped earlier than expected"
            return finished[0]
    return None


@pytest.mark.parametrize("n_tokens, max_steps, patience, values, expected", [
    # lossless at s=0, before anything else can apply
    (5, 10, 3, [4], ("lossless", 0, 0, 4)),
    (1, 10, 3, [0], ("lossless", 0, 0, 0)),  # nothing to predict: lossless at once
    # stalled exactly when s - best_step reaches patience, not one evaluation earlier
    (10, 100, 3, [1, 1, 1, 1], ("stalled", 3, 0, 1)),
    (10, 100, 3, [1, 0, 1, 0], ("stalled", 3, 0, 1)),  # equal is no improvement
    (10, 100, 2, [1, 2, 2, 2], ("stalled", 3, 1, 2)),  # an improvement restarts the count
    # max_steps at s == max_steps
    (10, 2, 5, [0, 1, 2], ("max_steps", 2, 2, 2)),
    (10, 0, 5, [3], ("max_steps", 0, 0, 3)),
    # priorities when several apply at the same evaluation
    (10, 2, 5, [0, 1, 9], ("lossless", 2, 2, 9)),    # lossless beats max_steps
    (10, 2, 2, [3, 3, 3], ("stalled", 2, 0, 3)),     # stalled beats max_steps
])
def test_stop_rule_by_hand(n_tokens, max_steps, patience, values, expected):
    fin = run_one(n_tokens, max_steps, patience, values)
    assert fin is not None and (fin.reason, fin.steps, fin.best_step, fin.best_correct) == expected
    assert (fin.job_id, fin.slot) == (7, 0)
    assert stop_rule(values, n_tokens, max_steps, patience) == expected


def test_no_stop_one_evaluation_before_patience():
    assert run_one(10, 100, 3, [1, 1, 1]) is None


def test_rows_after_a_stop_are_ignored():
    sched = Scheduler(2, 1000, 1, "fifo")
    sched.add_job(0, 5, 10, 5)
    sched.add_job(1, 5, 10, 5)
    sched.plan()
    # job 0 stops at row 0; its later entries are garbage and must not be looked at
    finished = sched.report([[4, 1], [10**9, 2], [-7, 4]])
    assert [(f.job_id, f.reason, f.steps) for f in finished] == [(0, "lossless", 0), (1, "lossless",
                                                                                      2)]


# ---------------------------------------------------------------------------------------------
# starvation, budget and refusals


@pytest.mark.parametrize("slots_for_long_job", [4, 2])
def test_bucketed_bounded_wait_under_adversarial_stream(slots_for_long_job):
    """A long job among an endless stream of short ones that finish one per round, so the
    batch never drains: the padding rule alone never picks the long job; the starvation guard
    starts it after max_passes + 1 passes (with a tight budget, once the batch has drained)."""
    def first_start_of_long_job(max_passes):
        sched = Scheduler(4, slots_for_long_job * (60 + 1), 1, "bucketed", max_passes)
        sched.add_job(0, 4, 1000, 1000)  # a short job arrives first and anchors the bucket
        sched.add_job(1, 60, 1000, 1000)
        for next_id in range(2, 6):  # enough short jobs to fill the first batch
            sched.add_job(next_id, 4, 1000, 1000)
        next_id = 6
        for round_ in range(300):
            for _ in range(2):  # short jobs keep arriving faster than they finish
                sched.add_job(next_id, 4, 1000, 1000)
                next_id += 1
            plan = sched.plan()
            if 1 in plan.slot_jobs:
                return round_
            # the job in the lowest occupied slot converges, the others make no progress
            first = min(slot for slot, j in enumerate(plan.slot_jobs) if j >= 0)
            sched.report([[3 if slot == first else (0 if j >= 0 else -1)
                           for slot, j in enumerate(plan.slot_jobs)]])
        return None

    assert first_start_of_long_job(10**9) is None  # the stream really is adversarial
    for wait in (0, 1, 4, 8):
        started = first_start_of_long_job(wait)
        # passed over once per round, starving after wait + 1, then the batch drains to fit it
        assert started is not None and started <= wait + 1 + (4 - slots_for_long_job)


def test_refill_respects_budget_growth():
    # budget for 3 slots of 10 + 2, or 1 slot of 30 + 2: a long job must not join short ones
    sched = Scheduler(4, 36, 2, "fifo")
    for job_id, n in enumerate([10, 10, 10, 30]):
        sched.add_job(job_id, n, 5, 5)
    plan = sched.plan()
    assert plan.slot_jobs == (0, 1, 2, -1) and plan.padded_length == 10 and plan.new_slots == (0, 1,
                                                                                               2)
    sched.report([[9, 9, 9, -1]])  # all lossless
    plan = sched.plan()
    assert plan.slot_jobs == (3, -1, -1, -1) and plan.new_slots == (0,) and plan.padded_length == 30


def test_bucketed_prefers_least_padding_and_fifo_does_not():
    lengths = [20, 5, 19, 40, 21, 20]
    picks = {}
    for policy in ("fifo", "bucketed"):
        sched = Scheduler(3, 10_000, 1, policy, max_passes=100)
        for job_id, n in enumerate(lengths):
            sched.add_job(job_id, n, 5, 5)
        picks[policy] = sched.plan().slot_jobs
    assert picks["fifo"] == (0, 1, 2)
    # 20 anchors; then 20 (waste 0), then 19 (waste 1 < 21's 2)
    assert picks["bucketed"] == (0, 5, 2)


def test_token_steps_count_the_planned_batch():
    sched = Scheduler(3, 1000, 2, "fifo")
    sched.add_job(0, 8, 10, 10)
    sched.add_job(1, 4, 10, 10)
    sched.plan()  # 2 occupied, padded 8: (8 + 2) * 2 = 20 per evaluation
    sched.report([[7, 0, -1], [-1, 1, -1]])  # job 0 stops at row 0 but its slot stays in the batch
    assert sched.token_steps() == 40 and sched.evaluations() == 2
    sched.plan()  # only job 1 left: padded 4
    sched.report([[-1, 3, -1]])
    assert sched.token_steps() == 40 + 6 and sched.done()


def test_oversized_job_is_refused_with_one_line():
    sched = Scheduler(4, 100, 3, "bucketed")
    sched.add_job(0, 97, 10, 10)  # exactly the budget
    with pytest.raises(ValueError) as err:
        sched.add_job(1, 98, 10, 10)
    assert "\n" not in str(err.value) and "token_budget" in str(err.value)
    assert sched.pending() == 1


@pytest.mark.parametrize("args", [(-1, 5, 1, 1), (0, 5, 1, 1), (1, 0, 1, 1), (1, 5, -1, 1), (1, 5,
                                                                                             1, 0)])
def test_bad_jobs_are_refused(args):
    sched = Scheduler(2, 100, 1)
    sched.add_job(0, 5, 1, 1)
    with pytest.raises(ValueError):
        sched.add_job(*args)  # negative id, duplicate id, n_tokens 0, max_steps < 0, patience 0


def test_job_id_may_return_after_it_finished():
    sched = Scheduler(1, 100, 1)
    sched.add_job(0, 3, 5, 5)
    sched.plan()
    assert sched.report([[2]])[0].reason == "lossless"
    sched.add_job(0, 3, 5, 5)
    assert sched.plan().new_slots == (0,)


@pytest.mark.parametrize("kwargs", [dict(max_slots=0), dict(token_budget=0), dict(n_mem=-1),
                                    dict(policy="lifo"), dict(max_passes=-2)])
def test_bad_scheduler_arguments(kwargs):
    args = dict(max_slots=2, token_budget=100, n_mem=1, policy="fifo") | kwargs
    with pytest.raises(ValueError):
        Scheduler(**args)


def test_bad_reports_leave_the_scheduler_unchanged():
    sched = Scheduler(2, 100, 1, "fifo")
    sched.add_job(0, 5, 10, 3)
    sched.plan()
    for bad in ([[1, -1], [5, -1]], [[-3, -1]], [[1, 1, 1]], np.zeros((0, 2), np.int64)):
        with pytest.raises(ValueError):
            sched.report(bad)
    with pytest.raises(TypeError):
        sched.report([[1.5, -1.0]])
    assert sched.evaluations() == 0 and sched.token_steps() == 0
    # the bad first report did not advance s: stall needs exactly 3 more equal rows after this
    assert sched.report([[1, -1]]) == []
    assert sched.report([[1, -1], [1, -1]]) == []
    assert sched.report([[1, -1]])[0] == Finished(0, 0, "stalled", 3, 0, 1)


def test_report_accepts_lists_numpy_and_torch():
    torch = pytest.importorskip("torch")
    matrices = ([[1, -1]], np.array([[1, -1]], dtype=np.int32), np.array([1, -1]),
                np.asfortranarray(np.array([[1, -1], [1, -1]])), torch.tensor([[1, -1]]))
    for matrix in matrices:
        sched = Scheduler(2, 100, 1, "fifo")
        sched.add_job(0, 5, 10, 3)
        sched.plan()
        assert sched.report(matrix) == [] and sched.running() == 1


def test_static_batching_token_steps():
    # batches [8, 4] and [6]: 2 * (8 + 1) * (3 + 1) + 1 * (6 + 1) * (0 + 1)
    assert static_batching_token_steps([8, 4, 6], [1, 3, 0], 1, 2) == 72 + 7
    with pytest.raises(ValueError):
        static_batching_token_steps([8], [1, 2], 1, 2)


def test_missing_extension_gives_a_clear_import_error(monkeypatch):
    import cramfast
    monkeypatch.setitem(sys.modules, "cramfast._scheduler", None)  # import of it now fails
    monkeypatch.delattr(cramfast, "_scheduler")
    monkeypatch.delitem(sys.modules, "cramfast.engine.scheduler")
    with pytest.raises(ImportError,
                       match=r"cramfast\._scheduler is not built: run `pip install -e \.`"):
        importlib.import_module("cramfast.engine.scheduler")
    monkeypatch.undo()
    importlib.import_module("cramfast.engine.scheduler")


def test_failed_on_device_frees_the_slot_with_reason_nonfinite():
    from cramfast.engine.scheduler import FAILED_ON_DEVICE, Scheduler
    sched = Scheduler(2, 100, 1, "fifo")
    sched.add_job(0, 5, 100, 10)
    sched.add_job(1, 5, 100, 10)
    sched.plan()
    finished = sched.report([[1, 2], [FAILED_ON_DEVICE, 3]])
    assert [(f.job_id, f.reason, f.steps) for f in finished] == [(0, "nonfinite", 1)]
    assert sched.running() == 1 and sched.finished() == 1


def test_cancel_frees_a_running_slot_or_drops_a_queued_job():
    sched = Scheduler(2, 100, 1, "fifo")
    for job in range(3):
        sched.add_job(job, 5, 100, 10)
    assert sched.plan().slot_jobs == (0, 1)
    assert sched.cancel(1) and sched.cancel(2)          # running, queued
    assert not sched.cancel(1) and not sched.cancel(7)  # gone, never added
    assert (sched.running(), sched.pending(), sched.cancelled(), sched.finished()) == (1, 0, 2, 0)
    sched.add_job(1, 5, 100, 10)                        # a cancelled id may come back
    plan = sched.plan()
    assert plan.slot_jobs == (0, 1) and plan.new_slots == (1,)
    assert [f.job_id for f in sched.report([[4, 4]])] == [0, 1]
    assert sched.done()


def test_a_resumed_job_goes_on_with_its_counters():
    """add_job(s, best_correct, best_step): the stop rule continues where a checkpoint left it,
    exactly as if the job had run those evaluations here; inconsistent counters are refused."""
    fresh, resumed = Scheduler(1, 100, 1), Scheduler(1, 100, 1)
    fresh.add_job(0, 6, max_steps=20, patience=4)
    resumed.add_job(0, 6, max_steps=20, patience=4, s=5, best_correct=3, best_step=4)
    fresh.plan()
    resumed.plan()
    assert fresh.report([[1], [2], [2], [2], [3]]) == []        # s 0..4: best 3 at s = 4
    tail = [[3], [3], [3], [2]]                                 # s 5..8: no better, stalls at 8
    assert fresh.report(tail) == resumed.report(tail)
    assert resumed.finished() == 1
    for bad in (dict(s=3, best_step=4), dict(s=21), dict(best_correct=6), dict(best_correct=-2)):
        with pytest.raises(ValueError, match="job 1"):
            Scheduler(1, 100, 1).add_job(1, 6, 20, 4, **bad)
