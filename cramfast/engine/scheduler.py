"""Continuous-batching scheduler of cramming jobs: the Python face of the C++
``cramfast._scheduler``.

Each text to cram is a *job*; the batch has ``max_slots`` fixed *slots*, each holding one job
with its own mem vectors and optimizer state. The loop that drives it::

    sched = Scheduler(max_slots=32, token_budget=16384, n_mem=1, policy="bucketed")
    for i, ids in enumerate(texts):
        sched.add_job(i, len(ids), max_steps, patience)     # ValueError if it can never fit
    while not sched.done():
        plan = sched.plan()               # fills free slots; plan.new_slots need a fresh mem/AdamW
        history = run_k_evaluations(plan) # k x max_slots n_correct matrix, -1 (ignored) for empty
        slots
        for fin in sched.report(history): # finished jobs, their slots are free for the next plan
            ...

API (all counts are Python ints):
    Scheduler(max_slots, token_budget, n_mem, policy="bucketed", max_passes=None)
    .add_job(job_id, n_tokens, max_steps, patience, s=0, best_correct=-1, best_step=0) -> None
                              a job resumed from a checkpoint passes its stop-rule counters
    .plan() -> Plan(slot_jobs, new_slots, padded_length, n_occupied)
    .report(n_correct_history) -> list[Finished(job_id, slot, reason, steps, best_step,
    best_correct)]
    .cancel(job_id) -> bool   drop a queued or running job without a result (slot freed)
    .pending() / .running() / .finished() / .cancelled() -> int
                              queued / in a slot / stopped so far / cancelled so far
    .done() -> bool                                     nothing queued and nothing running
    .token_steps() -> int    sum over reported evaluations of n_occupied * (padded_length + n_mem)
    .evaluations() -> int    rows reported so far
    .max_slots, .token_budget, .n_mem, .policy, .max_passes       (read-only)
    static_batching_token_steps(lengths, steps_per_job, n_mem, batch_size) -> int

Budget: the batch is right-padded to ``padded_length`` = max n_tokens over occupied slots, and
``n_occupied * (padded_length + n_mem) <= token_budget`` always holds. A job whose
``n_tokens + n_mem`` alone exceeds the budget is refused by ``add_job`` (ValueError), as are
negative or duplicate (still queued/running) job ids, ``n_tokens < 1``, ``max_steps < 0`` and
``patience < 1``.

Policies (``plan`` starts jobs one at a time into the lowest free slot, while one fits):
  * ``"fifo"``: strict arrival order; if the oldest queued job does not fit, nothing starts.
  * ``"bucketed"``: an empty batch starts with the oldest job; otherwise the fitting job that
    adds the least padding is taken (a job of n <= padded wastes ``padded - n``, a longer one
    wastes ``(n - padded) * n_occupied``; ties go to the older job). Starvation guard: the
    oldest queued job counts the plans in which, being the oldest, it was passed over (a
    younger job started); once that count exceeds ``max_passes`` (default ``max_slots``) it is
    taken first, and nothing else starts until it fits. Only the oldest job counts, so a long
    queue does not turn into FIFO as a whole. From the plan where a job becomes the oldest, it
    starts within ``(max_passes + 2) * (max_steps + 1)`` plans (max_steps: the largest among
    jobs): every job stops by its max_steps, so plans that start something are at most
    max_steps + 1 apart, and once starving it waits only for the batch to drain enough.

Stop rule (identical on the device, see cramfast.engine.optim.apply_stop_rule): a job is evaluated
at
s = 0, 1, 2, ... (s = optimizer updates applied so far). With n_correct the number of its
n_tokens - 1 predicted tokens that are right: if n_correct > best_correct (initially -1) then
best_correct, best_step = n_correct, s; then stop "lossless" if n_correct == n_tokens - 1, else
"stalled" if s - best_step >= patience, else "max_steps" if s >= max_steps; otherwise update
s + 1 follows. ``Finished.steps`` is s at the stop. The counter s carries over from report to
report. In a k-row report, a job that stops at row j ignores rows after j (the device froze it
there), so one k-row report equals k one-row reports made without a plan in between. The
device may also stop a job outside the rule (a non-finite loss): it reports FAILED_ON_DEVICE
(-2) at that evaluation and the job finishes with reason "nonfinite".

``report`` accepts a list of lists, a numpy array or a CPU/GPU torch tensor (integers) of shape
(k, max_slots), or one row of length max_slots. Entries must lie in [0, n_tokens - 1] (or be
FAILED_ON_DEVICE) for slots whose job is still running (ValueError otherwise, and the scheduler is
left unchanged).

Token-step accounting counts the batch as the device holds it: every reported row costs the
last plan's ``n_occupied * (padded_length + n_mem)``, including slots whose job stopped earlier
in the same report (they stay in the batch until the next ``plan``).

This module imports numpy and cramfast.settings only (no torch): it sits below the compressor.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from cramfast.settings import StopReason

try:
    from cramfast import _scheduler as _ext
except ImportError as _err:  # pragma: no cover - exercised by a test that hides the extension
    raise ImportError(
        "cramfast._scheduler is not built: run `pip install -e .` (needs a C++ compiler)") from _err

POLICIES = ("fifo", "bucketed")
# the reasons a Finished carries: cramfast.settings.StopReason's names but "running"
STOP_REASONS = tuple(r.label for r in StopReason if r is not StopReason.RUNNING)
FAILED_ON_DEVICE = -2  # report entry: the device stopped the job outside the stop rule


class Plan(NamedTuple):
    slot_jobs: tuple[int, ...]  # job id per slot, -1 where empty
    new_slots: tuple[int, ...]  # slots whose job started in this plan: reset their mem/AdamW
    padded_length: int          # the batch is right-padded to this many tokens
    n_occupied: int


class Finished(NamedTuple):
    job_id: int
    slot: int
    reason: str                 # one of STOP_REASONS
    steps: int                  # s at the stopping evaluation
    best_step: int
    best_correct: int


class Scheduler:
    """See the module docstring. Thin wrapper: the logic is C++ (csrc/scheduler.cpp)."""

    def __init__(self, max_slots: int, token_budget: int, n_mem: int, policy: str = "bucketed",
                 max_passes: int | None = None):
        passes = -1 if max_passes is None else int(max_passes)
        if passes < 0 and max_passes is not None:
            raise ValueError(f"max_passes must be >= 0 or None, got {max_passes}")
        self._core = _ext.Scheduler(int(max_slots), int(token_budget), int(n_mem), str(policy),
                                    passes)

    @property
    def core(self):
        """The C++ binding itself (plan/report without this face's conversions): what the
        scheduler benchmark times apart from the face."""
        return self._core

    def add_job(self, job_id: int, n_tokens: int, max_steps: int, patience: int, s: int = 0,
                best_correct: int = -1, best_step: int = 0) -> None:
        self._core.add_job(int(job_id), int(n_tokens), int(max_steps), int(patience), int(s),
                           int(best_correct), int(best_step))

    def plan(self) -> Plan:
        p = self._core.plan()
        return Plan(tuple(p.slot_jobs), tuple(p.new_slots), p.padded_length, p.n_occupied)

    def report(self, n_correct_history) -> list[Finished]:
        matrix = as_history_matrix(n_correct_history, self._core.max_slots)
        return [Finished(f.job_id, f.slot, f.reason, f.steps, f.best_step, f.best_correct)
                for f in self._core.report(matrix)]

    def cancel(self, job_id: int) -> bool:
        return self._core.cancel(int(job_id))

    def pending(self) -> int:
        return self._core.pending()

    def running(self) -> int:
        return self._core.running()

    def finished(self) -> int:
        return self._core.finished()

    def cancelled(self) -> int:
        return self._core.cancelled()

    def done(self) -> bool:
        return self._core.done()

    def token_steps(self) -> int:
        return self._core.token_steps()

    def evaluations(self) -> int:
        return self._core.evaluations()

    max_slots = property(lambda self: self._core.max_slots)
    token_budget = property(lambda self: self._core.token_budget)
    n_mem = property(lambda self: self._core.n_mem)
    policy = property(lambda self: self._core.policy)
    max_passes = property(lambda self: self._core.max_passes)

    def __repr__(self) -> str:
        return (f"Scheduler(max_slots={self.max_slots}, token_budget={self.token_budget}, "
                f"n_mem={self.n_mem}, policy={self.policy!r}, pending={self.pending()}, "
                f"running={self.running()}, finished={self.finished()})")


def as_history_matrix(history, max_slots: int) -> np.ndarray:
    """A C-contiguous int64 (k, max_slots) array from a list of lists, numpy array or torch
    tensor (duck-typed: torch is never imported here). One row may be given as a 1-D vector."""
    if hasattr(history, "detach") and hasattr(history, "cpu"):  # a torch tensor, on any device
        history = history.detach().cpu().numpy()
    matrix = np.asarray(history)
    if matrix.size and matrix.dtype.kind not in "iu":
        raise TypeError(f"n_correct_history must hold integers, got dtype {matrix.dtype}")
    if matrix.ndim == 1:
        matrix = matrix.reshape(1, -1)
    if matrix.ndim != 2 or matrix.shape[1] != max_slots or matrix.shape[0] < 1:
        raise ValueError(f"n_correct_history must have shape (k >= 1, {max_slots}), "
                         f"got {tuple(np.shape(history))}")
    return np.ascontiguousarray(matrix, dtype=np.int64)


def static_batching_token_steps(lengths: Sequence[int], steps_per_job: Sequence[int], n_mem: int,
                                batch_size: int) -> int:
    """Token-steps of naive static batching, the baseline the scheduler is compared with.

    Jobs are cut into batches of ``batch_size`` consecutive jobs in input order (the last may be
    smaller); each batch is right-padded to its longest job and runs until its slowest job
    stops, i.e. ``max(steps) + 1`` evaluations (``steps`` = s at the stop, as in
    ``Finished.steps``). Cost = sum over batches of ``len(batch) * (max length + n_mem) *
    (max steps + 1)``, the same unit as ``Scheduler.token_steps()``.
    """
    if len(lengths) != len(steps_per_job):
        raise ValueError(f"{len(lengths)} lengths but {len(steps_per_job)} steps_per_job")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lengths = [int(n) for n in lengths]
    steps_per_job = [int(s) for s in steps_per_job]
    total = 0
    for start in range(0, len(lengths), batch_size):
        batch_lengths = lengths[start:start + batch_size]
        batch_steps = steps_per_job[start:start + batch_size]
        total += len(batch_lengths) * (max(batch_lengths) + n_mem) * (max(batch_steps) + 1)
    return int(total)
