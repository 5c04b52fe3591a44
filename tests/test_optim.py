"""optim: the AdamW/LAMB update against references, the lr schedule, stall restarts and the
per-token triggers and decays, the stop rules."""

import pytest
import torch

import cramfast
import cramfast.settings
from cramfast import engine
from cramfast.engine import SlotState, TextSettings, count_step, mem_update


def test_adamw_matches_torch_optim():
    torch.manual_seed(0)
    settings = TextSettings(lr=0.05, weight_decay=0.01, beta1=0.9, beta2=0.9)
    state = SlotState(3, 2, 5, torch.float64, "cpu")
    init = torch.randn(2, 5, dtype=torch.float64)
    state.start(1, init, 4, settings)
    ref = init.clone().requires_grad_(True)
    opt = torch.optim.AdamW([ref], lr=0.05, betas=(0.9, 0.9), weight_decay=0.01, eps=1e-8)
    rows = torch.tensor([0, 1, 2])
    for _ in range(7):
        grad = torch.randn(3, 2, 5, dtype=torch.float64)
        mem_update(state, rows, grad, torch.tensor([False, True, False]))
        count_step(state, rows, torch.tensor([False, True, False]))
        ref.grad = grad[1].clone()
        opt.step()
    torch.testing.assert_close(state.mem[1], ref.detach(), rtol=1e-12, atol=1e-12)
    assert state.mem[0].abs().sum() == 0 and state.mem[2].abs().sum() == 0  # inactive: untouched
    assert state.steps.tolist() == [0, 7, 0]


def test_lamb_matches_a_reference_and_mixes_with_adamw_in_one_batch():
    """LAMB per mem vector (You et al. 2019: AdamW's moments, step + weight decay rescaled by
    ||mem|| / ||step||), written out step by step, beside an AdamW slot in the same batch."""
    torch.manual_seed(2)
    lamb = TextSettings(optimizer="lamb", lr=0.1, weight_decay=0.01, beta1=0.9, beta2=0.9)
    adamw = TextSettings(lr=0.05, weight_decay=0.01, beta1=0.9, beta2=0.9)
    state = SlotState(2, 2, 5, torch.float64, "cpu")
    init = torch.randn(2, 5, dtype=torch.float64)
    init[1] = 0                                      # a zero vector: trust ratio 1, as in LAMB
    state.start(0, init, 4, lamb)
    state.start(1, init, 4, adamw)
    ref_adamw = init.clone().requires_grad_(True)
    opt = torch.optim.AdamW([ref_adamw], lr=0.05, betas=(0.9, 0.9), weight_decay=0.01, eps=1e-8)
    ref, m1, m2 = init.clone(), torch.zeros_like(init), torch.zeros_like(init)
    for t in range(1, 8):
        grad = torch.randn(2, 2, 5, dtype=torch.float64)
        mem_update(state, torch.tensor([0, 1]), grad, torch.tensor([True, True]))
        count_step(state, torch.tensor([0, 1]), torch.tensor([True, True]))
        ref_adamw.grad = grad[1].clone()
        opt.step()
        m1 = 0.9 * m1 + 0.1 * grad[0]
        m2 = 0.9 * m2 + 0.1 * grad[0] ** 2
        for v in range(2):
            adam = (m1[v] / (1 - 0.9 ** t)) / ((m2[v] / (1 - 0.9 ** t)).sqrt() + 1e-8)
            step = adam + 0.01 * ref[v]
            ratio = ref[v].norm() / step.norm() if ref[v].norm() > 0 else 1.0
            ref[v] = ref[v] - 0.1 * ratio * step
    torch.testing.assert_close(state.mem[0], ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state.mem[1], ref_adamw.detach(), rtol=1e-12, atol=1e-12)
    assert state.mem[0, 1].abs().sum() > 0                 # the zero vector moved


def test_lamb_rejects_lr_std():
    with pytest.raises(cramfast.CramfastError, match="lr_std applies to adamw only"):
        TextSettings(optimizer="lamb", lr_std=1.0)
    with pytest.raises(cramfast.CramfastError, match="optimizer must be"):
        TextSettings(optimizer="sgd")


def test_lr_schedule_matches_torch_lambda_lr():
    """Warm-up then cosine decay, per slot, == torch.optim.AdamW driven by LambdaLR."""
    import math
    torch.manual_seed(1)
    warmup, decay, final = 3, 5, 0.2
    settings = TextSettings(lr=0.05, warmup=warmup, decay_steps=decay, final_lr_ratio=final)
    state = SlotState(2, 1, 4, torch.float64, "cpu")
    init = torch.randn(1, 4, dtype=torch.float64)
    state.start(0, init, 4, settings)
    state.start(1, init, 4, TextSettings(lr=0.05))       # constant lr beside it

    def factor(i):  # LambdaLR's i = steps taken; cramfast's t = i + 1
        t = i + 1
        warm = min(1.0, t / warmup)
        progress = min(1.0, max(0.0, (t - warmup) / decay))
        return warm * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress)))
    refs = [init.clone().requires_grad_(True) for _ in range(2)]
    opts = [torch.optim.AdamW([r], lr=0.05, betas=(0.9, 0.9), weight_decay=0.01) for r in refs]
    sched = torch.optim.lr_scheduler.LambdaLR(opts[0], factor)
    for _ in range(12):
        grad = torch.randn(2, 1, 4, dtype=torch.float64)
        mem_update(state, torch.tensor([0, 1]), grad, torch.tensor([True, True]))
        count_step(state, torch.tensor([0, 1]), torch.tensor([True, True]))
        for k in range(2):
            refs[k].grad = grad[k].clone()
            opts[k].step()
        sched.step()
    for k in range(2):
        torch.testing.assert_close(state.mem[k], refs[k].detach(), rtol=1e-12, atol=1e-12)


def test_restart_stalled_redraw_and_perturb():
    state = SlotState(3, 1, 4, torch.float64, "cpu", n_draws=2)
    draws = torch.randn(3, 2, 1, 4, dtype=torch.float64)
    modes = ["redraw", "perturb", "redraw"]
    for slot, mode in enumerate(modes):
        state.start(slot, torch.ones(1, 4, dtype=torch.float64), 4,
                    TextSettings(stall_steps=5, restart=mode, max_restarts=2), draws[slot])
    state.best_mem[:] = 2.0
    state.exp_avg[:] = state.exp_avg_sq[:] = state.opt_steps[:] = 1
    state.steps[:] = 9
    rows = torch.tensor([0, 1, 2])
    engine.restart_stalled(state, rows, torch.tensor([True, True, False]))
    torch.testing.assert_close(state.mem[0], draws[0, 0])             # a fresh draw
    torch.testing.assert_close(state.mem[1], 2.0 + draws[1, 0])       # best mem + noise
    assert state.mem[2].eq(1).all() and state.exp_avg[2].eq(1).all()  # not stalled: untouched
    assert state.exp_avg[:2].eq(0).all() and state.exp_avg_sq[:2].eq(0).all()
    assert state.opt_steps.tolist() == [0, 0, 1] and state.restarts.tolist() == [1, 1, 0]
    assert state.try_best_step.tolist()[:2] == [9, 9] and state.steps.tolist() == [9, 9, 9]
    engine.restart_stalled(state, rows, torch.tensor([True, False, False]))
    torch.testing.assert_close(state.mem[0], draws[0, 1])             # the next draw


def test_stall_restarts_batched_equals_solo_and_reproducible(tiny_models):
    """Restarts happen on the device, seeded per text: the same in a batch as alone, the same
    on a rerun, and the stop rule (checked against the C++ scheduler) spans all attempts."""
    lm = cramfast.load_model(tiny_models["llama"], dtype=torch.float64)
    texts = [[3, 50, 7, 9, 11, 40, 41, 42], [4, 8, 15, 16, 23, 42, 99, 7, 1]]
    kw = dict(model=lm, lr=0.02, max_steps=40, patience=1000, sync_every=4, stall_steps=3,
              max_restarts=3, fill_slots=0)
    for restart in ("redraw", "perturb"):
        together = cramfast.compress(texts, restart=restart, **kw)
        assert any(r.restarts > 0 for r in together)
        assert all(r.restarts <= 3 for r in together)
        for text, res in zip(texts, together):
            [alone] = cramfast.compress([text], restart=restart, **kw)
            assert (alone.steps, alone.stop_reason, alone.restarts) == \
                (res.steps, res.stop_reason, res.restarts)
            torch.testing.assert_close(alone.mem, res.mem, rtol=1e-6, atol=1e-6)
    off = cramfast.compress(texts, **dict(kw, stall_steps=0))
    assert all(r.restarts == 0 for r in off)
    with pytest.raises(cramfast.CramfastError, match="restart"):
        cramfast.compress(texts, restart="jump", **kw)


def test_stall_trigger_per_token_equals_explicit_triggers(tiny_models):
    """stall_steps_per_token gives a text of N tokens the trigger round(k * (N - 1)): the same
    run as that stall_steps given per text; an explicit stall_steps replaces it."""
    lm = cramfast.load_model(tiny_models["llama"], dtype=torch.float64)
    texts = [[3, 50, 7, 9, 11, 40, 41, 42], [4, 8, 15, 16, 23, 42, 99, 7, 1, 5, 6, 2, 9]]
    kw = dict(model=lm, lr=0.02, max_steps=40, patience=1000, sync_every=4, max_restarts=3,
              fill_slots=0)
    scaled = cramfast.compress(texts, stall_steps_per_token=0.5, **kw)
    assert [r.settings["stall_steps"] for r in scaled] == [4, 6]
    assert any(r.restarts > 0 for r in scaled)
    explicit = cramfast.compress(texts, per_text=[{"stall_steps": 4}, {"stall_steps": 6}], **kw)
    for a, b in zip(scaled, explicit):
        assert (a.steps, a.stop_reason, a.restarts) == (b.steps, b.stop_reason, b.restarts)
        torch.testing.assert_close(a.mem, b.mem, rtol=0, atol=0)
    [wins] = cramfast.compress(texts[:1], stall_steps_per_token=0.5, **kw,
                               per_text=[{"stall_steps": 2}])
    assert wins.settings["stall_steps"] == 2 and wins.settings["stall_steps_per_token"] == 0


def test_decay_per_token_equals_explicit_decays(tiny_models):
    """decay_steps_per_token gives a text of N tokens a cosine over round(k * (N - 1)) steps:
    the same run as that decay_steps given per text; an explicit decay_steps replaces it."""
    lm = cramfast.load_model(tiny_models["llama"], dtype=torch.float64)
    texts = [[3, 50, 7, 9, 11, 40, 41, 42], [4, 8, 15, 16, 23, 42, 99, 7, 1, 5, 6, 2, 9]]
    kw = dict(model=lm, preset="paper", lr=0.05, max_steps=30, patience=1000, sync_every=4)
    scaled = cramfast.compress(texts, decay_steps_per_token=2, **kw)
    assert [r.settings["decay_steps"] for r in scaled] == [14, 24]
    explicit = cramfast.compress(texts, per_text=[{"decay_steps": 14}, {"decay_steps": 24}], **kw)
    for a, b in zip(scaled, explicit):
        assert (a.steps, a.stop_reason) == (b.steps, b.stop_reason)
        torch.testing.assert_close(a.mem, b.mem, rtol=0, atol=0)
    constant = cramfast.compress(texts[:1], **kw)[0]
    assert not torch.equal(constant.mem, scaled[0].mem)        # the decay did act
    [wins] = cramfast.compress(texts[:1], decay_steps_per_token=2, **kw,
                               per_text=[{"decay_steps": 5}])
    assert wins.settings["decay_steps"] == 5 and wins.settings["decay_steps_per_token"] == 0


def test_stop_rules(tiny_models):
    lm = cramfast.load_model(tiny_models["llama"])
    text = [[5, 9, 100, 200, 7, 33, 80, 12, 250, 3, 17, 1]]
    res, = cramfast.compress(text, model=lm, max_steps=7, patience=100)
    assert (res.stop_reason, res.steps) == ("max_steps", 7)
    res, = cramfast.compress(text, model=lm, lr=1e-12, max_steps=100, patience=5)
    assert (res.stop_reason, res.steps, res.best_step) == ("stalled", 5, 0)

