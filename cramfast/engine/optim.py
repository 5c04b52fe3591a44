"""Per-slot optimization state and everything that updates it on the device, vectorized over
slots: the objective's weights, the stop rule, stall restarts and the AdamW/LAMB update.

Each slot of the batch holds one attempt of one text with its own hyperparameters, step
counts and stop bookkeeping, so texts of one batch never share a number: a text ends with the
same mem in a batch as alone (in fp64; tested).

Stop rule, at evaluation s (= updates applied so far; the C++ scheduler applies the same rule
and the two are cross-checked at every sync): keep the best accuracy and the mem that reached
it *before* the update that follows; stop LOSSLESS if every token is right (by the required
margin: solved_positions), STALLED if
s - best_step >= patience, MAX_STEPS if s >= max_steps; a non-finite loss stops that text alone
(NONFINITE).
"""
from __future__ import annotations

import torch

from cramfast.constants import IGNORE_INDEX
from cramfast.settings import SLOT_FLOATS, SLOT_INTS, StopReason, TextSettings


class SlotState:
    """Everything one slot carries, as [S, ...] tensors on the device: the mem being optimized,
    its moments, step counts and hyperparameters (settings.SLOT_FLOATS in ``hyper``, SLOT_INTS
    as tensors of their own), the best mem so far, the stop bookkeeping and the current
    attempt's own (for stall restarts)."""

    COUNTS = ("steps", "opt_steps", "best_correct", "best_step", "try_best_correct",
              "try_best_step", "n_pred", "reason", "restarts", "max_restarts") + SLOT_INTS

    def __init__(self, n_slots: int, n_mem: int, d: int, dtype, device, n_draws: int = 0):
        z = lambda *s, dt=dtype: torch.zeros(*s, dtype=dt, device=device)
        self.mem, self.exp_avg, self.exp_avg_sq, self.best_mem = (z(n_slots, n_mem,
                                                                    d) for _ in range(4))
        self.draws = z(n_slots, n_draws, n_mem, d)
        self.hyper = z(n_slots, len(SLOT_FLOATS))
        for name in self.COUNTS:
            setattr(self, name, z(n_slots, dt=torch.long))
        self.active = z(n_slots, dt=torch.bool)

    def hyper_column(self, name: str, rows) -> torch.Tensor:
        """One per-slot hyperparameter of ``rows`` (e.g. "lr", "focal_gamma")."""
        return self.hyper[rows, SLOT_FLOATS.index(name)]

    def set_hyper_column(self, name: str, rows, values: torch.Tensor):
        """Change one per-slot hyperparameter of ``rows`` mid-run (a study's own schedule)."""
        self.hyper[rows, SLOT_FLOATS.index(name)] = values.to(self.hyper)

    def start(self, slot: int, mem: torch.Tensor, n_pred: int, settings: TextSettings,
              draws: torch.Tensor | None = None):
        """A new attempt in ``slot``: its start, fresh moments and counts, its settings."""
        self.mem[slot] = mem
        self.best_mem[slot] = mem
        for t in (self.exp_avg, self.exp_avg_sq, self.steps, self.opt_steps, self.best_step,
                  self.try_best_step, self.reason, self.restarts):
            t[slot] = 0
        self.best_correct[slot] = -1
        self.try_best_correct[slot] = -1
        self.n_pred[slot] = n_pred
        values = settings.slot_values()
        self.hyper[slot] = torch.tensor([values[k] for k in SLOT_FLOATS], dtype=self.hyper.dtype)
        for name in SLOT_INTS:
            getattr(self, name)[slot] = values[name]
        n_draws = 0 if draws is None else len(draws)
        self.max_restarts[slot] = min(n_draws, settings.max_restarts)
        if n_draws:
            self.draws[slot, :n_draws] = draws
        self.active[slot] = True

    # what a slot's attempt has made of its start: all a checkpoint must keep (optim's own
    # state; the start, draws and settings are the attempt's and are kept with it)
    CARRIED = ("mem", "exp_avg", "exp_avg_sq", "best_mem", "hyper", "active") + COUNTS

    def snapshot(self, slot: int) -> dict[str, torch.Tensor]:
        """The slot's attempt as it stands, on the CPU."""
        return {name: getattr(self, name)[slot].detach().cpu().clone() for name in self.CARRIED}

    def restore(self, slot: int, snapshot: dict, settings: TextSettings,
                draws: torch.Tensor | None = None):
        """An attempt resumed in ``slot`` exactly as ``snapshot`` took it."""
        self.start(slot, snapshot["mem"], int(snapshot["n_pred"]), settings, draws)
        for name in self.CARRIED:
            if name in snapshot:        # else (a counter newer than the checkpoint) as started
                getattr(self, name)[slot] = snapshot[name].to(getattr(self, name).device)


def objective_weights(loss: torch.Tensor, gamma: torch.Tensor, margin: torch.Tensor | None = None,
                      required: torch.Tensor | None = None) -> torch.Tensor:
    """Each position's weight in a text's objective, detached: the focal weight
    (1 - p_target) ** gamma, p_target = exp(-CE), exactly 1 where gamma is 0 (x ** 0 is 1 for
    every x, 0 and NaN included: the paper's objective); and 1 where a margin is required
    (> 0) and the position's ``margin`` is short of it, so a position the focal weight would
    leave alone (right, but by a hair) keeps being pushed until it has its margin."""
    weight = (-torch.expm1(-loss.detach())).clamp(min=0) ** gamma
    if margin is None:
        return weight
    return torch.where((required > 0) & (margin < required), torch.ones_like(weight), weight)


def solved_positions(argmax, margin, targets, required) -> torch.Tensor:
    """The positions that count as right: the argmax is the target and, where a margin is
    required (> 0), the target leads the best other logit by at least that much."""
    scored = targets != IGNORE_INDEX
    return scored & (argmax == targets) & ((required <= 0) | (margin >= required))


def apply_stop_rule(state: SlotState, rows, active, correct, loss, mem) -> torch.Tensor:
    """The stop rule at this evaluation (module docstring) for ``rows``; returns which of them
    stalled (their attempt, not the text: a stall restart follows the update)."""
    steps = state.steps[rows]
    improved = active & (correct > state.best_correct[rows])
    state.best_correct[rows] = torch.where(improved, correct, state.best_correct[rows])
    state.best_step[rows] = torch.where(improved, steps, state.best_step[rows])
    state.best_mem[rows] = torch.where(improved.view(-1, 1, 1), mem, state.best_mem[rows])
    reason = torch.zeros_like(steps)
    reason = torch.where(steps >= state.max_steps[rows], int(StopReason.MAX_STEPS), reason)
    reason = torch.where(steps - state.best_step[rows] >= state.patience[rows],
                         int(StopReason.STALLED), reason)
    reason = torch.where(correct == state.n_pred[rows], int(StopReason.LOSSLESS), reason)
    reason = torch.where(~torch.isfinite(loss), int(StopReason.NONFINITE), reason)
    stop = active & (reason > 0)
    state.reason[rows] = torch.where(stop, reason, state.reason[rows])
    state.active[rows] = active & ~stop
    # the current attempt's own progress, for stall restarts
    tried = active & (correct > state.try_best_correct[rows])
    state.try_best_correct[rows] = torch.where(tried, correct, state.try_best_correct[rows])
    state.try_best_step[rows] = torch.where(tried, steps, state.try_best_step[rows])
    stall = state.stall_steps[rows]
    return (active & ~stop & (stall > 0) & (steps - state.try_best_step[rows] >= stall)
            & (state.restarts[rows] < state.max_restarts[rows]))


def scheduled_lr(lr, warmup, decay_steps, final_ratio, t):
    """lr at update t (1-based, counted from the attempt's start): linear warm-up, then a
    cosine from lr to lr * final_ratio over decay_steps, constant after (and when 0)."""
    warm = torch.where(warmup > 0, (t / warmup.clamp(min=1)).clamp(max=1), torch.ones_like(t))
    progress = ((t - warmup) / decay_steps.clamp(min=1)).clamp(0, 1)
    cosine = final_ratio + (1 - final_ratio) * 0.5 * (1 + torch.cos(torch.pi * progress))
    return lr * warm * torch.where(decay_steps > 0, cosine, torch.ones_like(t))


def mem_update(state: SlotState, rows: torch.Tensor, grad: torch.Tensor, active: torch.Tensor):
    """torch.optim.AdamW's update (or LAMB's, per slot), vectorized over slots, each with its own
    hyperparameters, lr schedule and step count (so a refilled or restarted slot starts its bias
    correction afresh), applied where ``active``. The default of Hooks.update; like any rule
    it reads the counters and leaves them to count_step."""
    a = active.view(-1, 1, 1)
    hyper = dict(zip(SLOT_FLOATS, state.hyper[rows].T.reshape(len(SLOT_FLOATS), -1, 1, 1)))
    beta1, beta2, wd = hyper["beta1"], hyper["beta2"], hyper["weight_decay"]
    mem, m1, m2 = state.mem[rows], state.exp_avg[rows], state.exp_avg_sq[rows]
    t = (state.opt_steps[rows] + 1).to(mem.dtype).view(-1, 1, 1)
    lr = scheduled_lr(hyper["lr"], hyper["warmup"], hyper["decay_steps"],
                      hyper["final_lr_ratio"], t)
    m1_new = torch.lerp(m1, grad, 1 - beta1)
    m2_new = m2 * beta2 + (1 - beta2) * grad * grad
    adam = (m1_new / (1 - beta1 ** t)) / (m2_new.sqrt() / (1 - beta2 ** t).sqrt() + hyper["eps"])
    adamw_mem = mem * (1 - lr * wd) - lr * adam
    lamb_step = adam + wd * mem
    lamb_mem = mem - lr * trust_ratio(mem, lamb_step) * lamb_step
    mem_new = torch.where(hyper["lamb"] > 0, lamb_mem, adamw_mem)
    state.mem[rows] = torch.where(a, mem_new, mem)
    state.exp_avg[rows] = torch.where(a, m1_new, m1)
    state.exp_avg_sq[rows] = torch.where(a, m2_new, m2)


def count_step(state: SlotState, rows: torch.Tensor, active: torch.Tensor):
    """Advance the step counters of the slots that stepped: ``steps`` (the text's, which the
    stop rule and the C++ scheduler both count) and ``opt_steps`` (the attempt's since its start
    or last restart: the update rule's bias correction and schedule). step() calls it after the
    update rule, so no rule can leave the two stop rules out of step."""
    state.steps[rows] = torch.where(active, state.steps[rows] + 1, state.steps[rows])
    state.opt_steps[rows] = torch.where(active, state.opt_steps[rows] + 1, state.opt_steps[rows])


def trust_ratio(mem: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """||mem|| / ||step|| per mem vector (1 where either norm is 0, as in LAMB)."""
    mem_norm = torch.linalg.vector_norm(mem, dim=-1, keepdim=True)
    step_norm = torch.linalg.vector_norm(step, dim=-1, keepdim=True)
    both = (mem_norm > 0) & (step_norm > 0)
    return torch.where(both, mem_norm / torch.where(both, step_norm, 1), 1)


def restart_stalled(state: SlotState, rows: torch.Tensor, stalled: torch.Tensor):
    """Start a new attempt where ``stalled``: mem = keep * best mem + the next seeded draw,
    fresh moments and schedule. The stop bookkeeping (best mem, patience) carries over."""
    if state.draws.shape[1] == 0:
        return
    s = stalled.view(-1, 1, 1)
    draw = state.draws[rows, state.restarts[rows].clamp(max=state.draws.shape[1] - 1)]
    keep = state.hyper_column("restart_keep", rows).view(-1, 1, 1)
    state.mem[rows] = torch.where(s, keep * state.best_mem[rows] + draw, state.mem[rows])
    for t in (state.exp_avg, state.exp_avg_sq):
        t[rows] = torch.where(s, 0, t[rows])
    state.opt_steps[rows] = torch.where(stalled, 0, state.opt_steps[rows])
    state.restarts[rows] = state.restarts[rows] + stalled.long()
    state.try_best_correct[rows] = torch.where(stalled, -1, state.try_best_correct[rows])
    state.try_best_step[rows] = torch.where(stalled, state.steps[rows], state.try_best_step[rows])
