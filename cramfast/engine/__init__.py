"""The engine's supported API: what benchmarks, studies and probes build on instead of private
functions. Everything here is public, documented and tested; nothing else is meant to be
patched (swap behaviour through ``Hooks``).

    batch = start_batch(lm, token_lists, TextSettings(...))   # slots filled, as compress does
    stepper = make_stepper(lm, batch.state, BatchSettings())  # eager, or CUDA graphs on CUDA
    counts = stepper.steps(batch.rows, batch.ids, batch.targets, k)   # k steps, no host sync
    step(lm, state, rows, ids, targets, update=my_rule)       # one step, any update rule
    compress(texts, hooks=Hooks(update=..., start=..., on_timing=...))

The pieces, one concern per module of this package: inits (where an attempt starts), optim
(SlotState, stop rule, AdamW/LAMB update, the step counters, restarts), step (forward and step,
steppers), decoding (evaluation, greedy decoding), jobs and sizing (inputs, batch sizes),
hooks, scheduler (the C++ scheduler's face), compressor (the scheduled loop); the settings are
cramfast.settings (TextSettings, BatchSettings).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from cramfast.engine.compressor import compress, compress_iter, optimize
from cramfast.engine.decoding import decodes_back, evaluate, greedy_decode
from cramfast.engine.hooks import Hooks, Timing
from cramfast.engine.inits import attempt_start, init_mem, mem_dtype, restart_draws, text_mean_init
from cramfast.engine.jobs import settings_for
from cramfast.engine.optim import (
    SlotState,
    apply_stop_rule,
    count_step,
    mem_update,
    objective_weights,
    restart_stalled,
    scheduled_lr,
    trust_ratio,
)
from cramfast.engine.step import (
    EagerSteps,
    GraphedSteps,
    make_stepper,
    pad_batch,
    predict,
    step,
    use_cuda_graphs,
)
from cramfast.models import LoadedModel
from cramfast.settings import BatchSettings, TextSettings


class Batch(NamedTuple):
    """Slots filled with texts, ready to step: the state and the padded batch."""
    state: SlotState
    rows: torch.Tensor
    ids: torch.Tensor
    targets: torch.Tensor


def start_batch(lm: LoadedModel, token_lists: list[list[int]], settings: TextSettings,
                n_mem: int = 1, seed: int = 0, length: int | None = None) -> Batch:
    """One slot per text, each started as compress starts attempt 0 (settings resolved for the
    model and the text's length, the seeded start and restart draws), padded to ``length``
    (default: the longest text)."""
    resolved = [settings_for(lm, settings, ids) for ids in token_lists]
    starts = [attempt_start(lm, ids, n_mem, seed, s) for ids, s in zip(token_lists, resolved)]
    n_draws = max((0 if draws is None else len(draws)) for _, draws in starts)
    state = SlotState(len(token_lists), n_mem, lm.hidden_size, mem_dtype(lm), lm.device, n_draws)
    for slot, (ids, s, (mem, draws)) in enumerate(zip(token_lists, resolved, starts)):
        state.start(slot, mem.to(lm.device), len(ids) - 1, s,
                    None if draws is None else draws.to(lm.device))
    ids, targets = pad_batch(token_lists, length or max(map(len, token_lists)), lm.device)
    return Batch(state, torch.arange(len(token_lists), device=lm.device), ids, targets)


__all__ = ["Batch", "BatchSettings", "EagerSteps", "GraphedSteps", "Hooks", "SlotState",
           "TextSettings", "Timing", "apply_stop_rule", "count_step", "attempt_start", "compress",
           "compress_iter", "decodes_back", "evaluate", "greedy_decode", "init_mem", "make_stepper",
           "mem_dtype",
           "mem_update", "objective_weights", "optimize", "pad_batch", "predict",
           "restart_draws", "restart_stalled", "scheduled_lr", "settings_for", "start_batch",
           "step",
           "text_mean_init", "trust_ratio", "use_cuda_graphs"]
