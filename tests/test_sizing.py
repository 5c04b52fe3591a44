"""sizing: the batch settings left to the device."""

from types import SimpleNamespace

import pytest
import torch

import cramfast
import cramfast.settings
from cramfast.errors import CramfastError


def test_batch_sizes_left_to_the_device(tiny_models, monkeypatch):
    """max_slots 0, token_budget 0 and fill_slots -1 are sized to the device: fixed on a CPU
    (and recorded in every result); on CUDA every text at once (at least CUDA_MIN_SLOTS), as
    far as half the free memory holds them at the measured bytes per token."""
    from cramfast.engine import sizing
    lm = cramfast.load_model(tiny_models["llama"], dtype=torch.float64)
    [res] = cramfast.compress([[3, 50, 7, 9]], model=lm, max_steps=2)     # preset fast
    assert {k: res.settings[k] for k in cramfast.settings.CPU_SIZES} == cramfast.settings.CPU_SIZES
    [own] = cramfast.compress([[3, 50, 7, 9]], model=lm, max_steps=2, max_slots=5, fill_slots=2)
    assert (own.settings["max_slots"], own.settings["fill_slots"]) == (5, 2)
    assert own.settings["token_budget"] == cramfast.settings.CPU_SIZES["token_budget"]
    texts = [[1] * 20] * 300
    monkeypatch.setattr(sizing, "bytes_per_token", lambda *a: 1000.0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 ** 9, 2 * 10 ** 9))
    assert sizing.cuda_slots(lm, texts, 1, None) == (300, False)       # all texts fit
    assert sizing.cuda_slots(lm, texts[:3], 1, None) == (cramfast.settings.CUDA_MIN_SLOTS, False)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 ** 7, 2 * 10 ** 9))
    assert sizing.cuda_slots(lm, texts, 1, None) == (10 ** 7 // 2 // (1000 * 21), False)


def test_a_text_too_long_for_the_device_gets_its_activations_recomputed(tiny_models,
                                                                        monkeypatch):
    """Where half the free memory does not hold one step of the longest text, the device-sized
    batch recomputes the backbone's activations if that makes it fit (slots sized at the
    recomputing step's bytes); a calibration that runs out of memory is retried on the longest
    text alone, then with recomputation; a text that fits in neither way is refused in one
    line."""
    from cramfast.engine import sizing
    from cramfast.settings import BatchSettings, TextSettings
    lm = cramfast.load_model(tiny_models["llama"], dtype=torch.float64)
    texts = [[1] * 20] * 300                                   # 21 tokens with the mem
    calls = []

    def per_token(lm, texts, n_mem, settings, backend=None, recompute=False):
        calls.append((len(texts), recompute))
        return 100.0 if recompute else 1000.0

    monkeypatch.setattr(sizing, "bytes_per_token", per_token)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 ** 4, 10 ** 9))
    assert sizing.cuda_slots(lm, texts, 1, None) == (10 ** 4 // 2 // (100 * 21), True)
    assert calls == [(8, False), (8, True)]
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 ** 3, 10 ** 9))
    assert sizing.cuda_slots(lm, texts, 1, None) == (1, False)      # neither fits: try as is

    def out_of_memory_unless(fits):
        def per_token(lm, texts, n_mem, settings, backend=None, recompute=False):
            calls.append((len(texts), recompute))
            if not fits(len(texts), recompute):
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            return 100.0
        return per_token

    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(sizing, "bytes_per_token", out_of_memory_unless(lambda n, r: r))
    calls.clear()
    assert sizing.cuda_slots(lm, texts, 1, None) == (1, True)
    assert calls == [(8, False), (1, False), (8, True)]
    monkeypatch.setattr(sizing, "bytes_per_token", out_of_memory_unless(lambda n, r: False))
    with pytest.raises(CramfastError, match=r"does not fit in the memory free.*even with "
                                            r"recompute_activations"):
        sizing.cuda_slots(lm, texts, 1, None)

    # size_batch records the switch in the batch settings (and so in every result)
    monkeypatch.setattr(sizing, "cuda_slots", lambda *a: (3, True))
    on_cuda = SimpleNamespace(device=torch.device("cuda"), name="tiny")
    sized = sizing.size_batch(on_cuda, BatchSettings(), texts, 1, TextSettings())
    assert (sized.max_slots, sized.token_budget, sized.recompute_activations) == (3, 63, True)
    pinned = sizing.size_batch(on_cuda, BatchSettings(max_slots=5, token_budget=0), texts, 1,
                               TextSettings())
    assert (pinned.max_slots, pinned.recompute_activations) == (5, False)   # not device-sized


class FakeCudaMemory:
    """torch.cuda's allocator counters as sizing reads them, for a CPU run: ``held`` bytes
    allocated now, ``peak`` the most since the last reset."""

    def __init__(self, held: int):
        self.held = self.peak = held

    def install(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: self.held)
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: self.peak)
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", self.reset)

    def reset(self, device=None):
        self.peak = self.held

    def transient(self, size: int):
        """``size`` bytes allocated and freed again."""
        self.peak = max(self.peak, self.held + size)


def test_calibration_leaves_out_the_autotuners_flush_buffer(tiny_models, monkeypatch):
    """The calibration step's first launch tunes the fused CE: Triton's do_bench allocates a
    256 MiB cache-flush buffer and frees it. Only a second step is measured, so that buffer
    does not count against the batch, while what the first step leaves allocated (a buffer kept
    per shape) does; and the two steps score the same slots."""
    from cramfast.engine import sizing
    from cramfast.settings import CUDA_MAX_SLOTS, TextSettings
    lm = cramfast.load_model(tiny_models["llama"], dtype=torch.float64)
    texts = [[3, 50, 7, 9, 11], [5, 6, 7]]                     # padded: 2 slots x (5 + 1) tokens
    n_mem, tokens = 1, 2 * (5 + 1)
    flush, per_step, kept = 256 * 2 ** 20, 600_000, 6_000      # bytes
    memory = FakeCudaMemory(held=10 ** 9)
    memory.install(monkeypatch)
    real_step, scored = sizing.step, []

    def step(lm, state, rows, ids, targets, backend=None, recompute=False):
        scored.append(int(state.active[rows].sum()))
        if len(scored) == 1:
            memory.transient(flush)                            # autotuning, then freed
            memory.held += kept                                # allocated once, held after
        memory.transient(per_step)                             # activations of the step itself
        out = real_step(lm, state, rows, ids, targets, backend, recompute=recompute)
        state.active[rows[0]] = False                          # as if its text had stopped
        return out

    monkeypatch.setattr(sizing, "step", step)
    per_token = sizing.bytes_per_token(lm, texts, n_mem, TextSettings())
    assert per_token == (per_step + kept) / tokens
    assert scored == [2, 2]
    # 1024 texts of 4 tokens, calibrated on the first 8: (4 + 1) x 8 tokens, 5 per slot
    free = 10 ** 8
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 2 * free))
    fraction = cramfast.settings.CUDA_MEMORY_FRACTION
    fits = lambda step_bytes: int(fraction * free // (step_bytes / (8 * 5) * 5))
    scored.clear()
    slots, _ = sizing.cuda_slots(lm, [[1] * 4] * CUDA_MAX_SLOTS, n_mem, TextSettings())
    assert scored == [8, 8]
    assert slots == fits(per_step + kept) < CUDA_MAX_SLOTS              # memory-bound
    assert fits(flush + per_step + kept) < slots // 100    # what counting the buffer cost
