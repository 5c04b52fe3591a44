"""Batch sizes from the device, for the batch settings left to it (max_slots 0, token_budget 0,
fill_slots -1).

On a CPU a step costs about its share per text, so the defaults are small and fixed. On a GPU a
step of a small model is bound by launches and by reading the weights until the batch holds
thousands of tokens, so every text should be in the batch at once, and idle slots at the tail
of a run are nearly free for parallel attempts: as many slots as the texts need, as far as half
the free memory holds them, measured by one calibration step (after an unmeasured one that
compiles and autotunes it). A text too long for that memory (a long text on a large model) gets
the backbone's activations recomputed in the backward (recompute_activations) if that makes one
fit: the same results, in a fraction of the memory.
"""
from __future__ import annotations

import math
import sys
from dataclasses import replace

import torch

from cramfast.engine.inits import mem_dtype
from cramfast.engine.optim import SlotState
from cramfast.engine.step import pad_batch, step
from cramfast.errors import CramfastError
from cramfast.models import LoadedModel
from cramfast.settings import (
    CPU_SIZES,
    CUDA_MAX_SLOTS,
    CUDA_MEMORY_FRACTION,
    CUDA_MIN_SLOTS,
    BatchSettings,
)

CALIBRATION_TEXTS = 8

_announced: set = set()


def size_batch(lm: LoadedModel, batch: BatchSettings, token_lists: list[list[int]], n_mem: int,
               settings, backend=None) -> BatchSettings:
    """``batch`` with its automatic sizes resolved for ``lm``'s device and these texts;
    ``settings`` (a TextSettings) is what the calibration step runs with."""
    auto = {k for k, v in (("max_slots", batch.max_slots), ("token_budget", batch.token_budget))
            if v == 0} | ({"fill_slots"} if batch.fill_slots < 0 else set())
    if not auto:
        return batch
    longest = max(len(ids) for ids in token_lists) + n_mem
    if lm.device.type == "cuda":
        slots, recompute = batch.max_slots, batch.recompute_activations
        if not slots:
            slots, recompute = cuda_slots(lm, token_lists, n_mem, settings, backend, recompute)
        if recompute != batch.recompute_activations:
            auto.add("recompute_activations")
        sizes = dict(max_slots=slots, token_budget=slots * longest, fill_slots=slots,
                     recompute_activations=recompute)
    else:
        sizes = dict(CPU_SIZES)
    resolved = replace(batch, **{k: sizes[k] for k in auto})
    _announce(lm, resolved, auto)
    return resolved


def cuda_slots(lm: LoadedModel, token_lists, n_mem: int, settings, backend=None,
               recompute: bool = False) -> tuple[int, bool]:
    """(slots, recompute_activations): as many slots as the texts use (at least
    CUDA_MIN_SLOTS), as far as CUDA_MEMORY_FRACTION of the free memory holds them at the
    measured bytes per token; recompute switched on when without it not one text of the
    longest length fits there and with it one does."""
    longest = max(len(ids) for ids in token_lists) + n_mem
    per_token = calibrated_bytes_per_token(lm, token_lists, n_mem, settings, backend, recompute)
    room = CUDA_MEMORY_FRACTION * torch.cuda.mem_get_info(lm.device)[0]
    if per_token * longest > room and not recompute and _can_recompute(lm):
        with_recompute = calibrated_bytes_per_token(lm, token_lists, n_mem, settings, backend,
                                                    True)
        if with_recompute * longest <= room or (math.isinf(per_token)
                                                  and not math.isinf(with_recompute)):
            per_token, recompute = with_recompute, True
    if math.isinf(per_token):
        raise CramfastError(f"one step of a text of {longest - n_mem} tokens (+ {n_mem} mem) does "
                            f"not fit in the memory free on {lm.device}"
                            + ("" if recompute or not _can_recompute(lm) else
                               " even with recompute_activations")
                            + ": cut the texts shorter (max_length)")
    fits = int(room // max(per_token * longest, 1))
    slots = max(1, min(fits, CUDA_MAX_SLOTS, max(len(token_lists), CUDA_MIN_SLOTS)))
    return slots, recompute


def calibrated_bytes_per_token(lm: LoadedModel, token_lists, n_mem: int, settings, backend=None,
                               recompute: bool = False) -> float:
    """bytes_per_token of the first CALIBRATION_TEXTS texts, or of the longest alone where
    their step runs out of memory; inf where even that one does."""
    longest = max(token_lists, key=len)
    for texts in (token_lists[:CALIBRATION_TEXTS], [longest]):
        try:
            return bytes_per_token(lm, texts, n_mem, settings, backend, recompute)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
    return math.inf


def _can_recompute(lm: LoadedModel) -> bool:
    try:
        return bool(lm.layers())
    except CramfastError:                   # no layers transformers can checkpoint
        return False


def bytes_per_token(lm: LoadedModel, token_lists, n_mem: int, settings, backend=None,
                    recompute: bool = False) -> float:
    """Peak memory of one real step (forward, backward, update) of these texts on a throwaway
    state, per token of the padded batch, measured on a second step: the first compiles and
    autotunes, and the autotuner's timing runs allocate a cache-flush buffer (Triton's
    do_bench: 256 MiB, freed when tuning ends) that the batch's steps never hold."""
    length = max(len(ids) for ids in token_lists)
    state = SlotState(len(token_lists), n_mem, lm.hidden_size, mem_dtype(lm), lm.device)
    ids, targets = pad_batch(token_lists, length, lm.device)
    rows = torch.arange(len(token_lists), device=lm.device)
    _start_all(lm, state, token_lists, n_mem, settings)
    torch.cuda.synchronize(lm.device)
    # Counted from before the first step: what it leaves allocated (buffers kept per shape,
    # library workspaces) is held through every later step too, so it belongs to the peak.
    before = torch.cuda.memory_allocated(lm.device)
    step(lm, state, rows, ids, targets, backend, recompute=recompute)   # compiles, autotunes
    _start_all(lm, state, token_lists, n_mem, settings)  # the same slots active again
    torch.cuda.synchronize(lm.device)
    torch.cuda.reset_peak_memory_stats(lm.device)     # the peak restarts at what is held now
    step(lm, state, rows, ids, targets, backend, recompute=recompute)
    torch.cuda.synchronize(lm.device)
    peak = torch.cuda.max_memory_allocated(lm.device) - before
    return peak / (len(token_lists) * (length + n_mem))


def _start_all(lm: LoadedModel, state: SlotState, token_lists, n_mem: int, settings) -> None:
    """Every slot of ``state`` on a fresh attempt at its text (zero mem), so that a step scores
    all of them whatever the step before it stopped."""
    for slot, ids in enumerate(token_lists):
        state.start(slot, torch.zeros(n_mem, lm.hidden_size), len(ids) - 1, settings)


def _announce(lm: LoadedModel, batch: BatchSettings, auto: set) -> None:
    """Say once per model, device and choice what was chosen (it is also in every result)."""
    chosen = tuple(sorted((k, getattr(batch, k)) for k in auto))
    key = (lm.name, str(lm.device), chosen)
    if lm.device.type == "cuda" and key not in _announced:
        _announced.add(key)
        print(f"cramfast: batch sized for {lm.device}: "
              + ", ".join(f"{k}={v}" for k, v in chosen), file=sys.stderr)
