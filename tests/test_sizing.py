"""sizing: the batch settings left to the device."""

import torch

import cramfast
import cramfast.settings


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
    assert sizing.cuda_slots(lm, texts, 1, None) == 300                # all texts fit
    assert sizing.cuda_slots(lm, texts[:3], 1, None) == cramfast.settings.CUDA_MIN_SLOTS
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 ** 7, 2 * 10 ** 9))
    assert sizing.cuda_slots(lm, texts, 1, None) == 10 ** 7 // 2 // (1000 * 21)   # memory-bound

