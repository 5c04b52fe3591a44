"""The places where a study or a benchmark may change or watch the engine, passed as
``compress(..., hooks=Hooks(...))`` or to the engine's steppers. The defaults are what
``compress`` always does; nothing else of the engine is meant to be patched."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from cramfast.engine.inits import attempt_start
from cramfast.engine.optim import mem_update


class Timing(NamedTuple):
    """One timed phase of the scheduled loop: ``phase`` "steps" (``steps`` updates of a batch
    of ``texts`` slots, ending with the host sync), "decode_check" (the greedy decoding of
    ``texts`` texts that just stopped), "checkpoint" (the saved state of ``texts`` texts in
    flight, taken and written) or "finish" (the metrics of ``texts`` finished texts); ``steps``
    is 0 but for "steps"."""
    phase: str
    seconds: float
    texts: int
    steps: int


@dataclass
class Hooks:
    # the per-slot update rule: update(state, rows, grad, active), optim.mem_update's contract.
    # It may change, for the rows where ``active``, the mems and its own moments (state.mem,
    # exp_avg, exp_avg_sq) and read anything. It must not change the counters (steps,
    # opt_steps: step() advances them after the rule, for the stop rule and the C++ scheduler
    # alike), the stop bookkeeping (best_*, reason, active) or the hyperparameters.
    update: Callable = mem_update
    # where an attempt starts: start(lm, ids, n_mem, seed, settings, attempt) -> (mem [m, d],
    # restart draws [r, m, d] or None), inits.attempt_start's contract
    start: Callable = attempt_start
    # called with a Timing after each phase of the loop (None: nothing is timed)
    on_timing: Callable[[Timing], None] | None = None
    # slots that stopped between syncs leave the batch at once (True), or ride along to the next
    # sync (False); None: at once on a CPU, where reading the device's state costs nothing
    drop_stopped: bool | None = None
