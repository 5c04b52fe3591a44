"""Hooks: what a study may swap. An update rule owns the mems and its moments only; the step
counters advance outside it (engine.step), so the device's stop rule and the C++ scheduler's
count the same steps whatever the rule does."""
import torch

import cramfast
from cramfast.engine import Hooks


def plain_sgd(state, rows, grad, active):
    """A rule that knows nothing of the counters: it moves the mems and touches nothing else."""
    lr = state.hyper_column("lr", rows).view(-1, 1, 1)
    step = torch.where(active.view(-1, 1, 1), lr * grad, torch.zeros_like(grad))
    state.mem[rows] = state.mem[rows] - step


def test_an_update_rule_that_ignores_the_counters_still_stops_on_time(tiny_models):
    lm = cramfast.load_model(tiny_models["llama"], dtype=torch.float64)
    texts = [[5, 9, 100, 200, 7, 33, 80, 12, 250, 3, 17, 1], [4, 8, 15, 16, 23, 42, 99]]
    results = cramfast.compress(texts, model=lm, lr=1e-3, max_steps=7, patience=100,
                                hooks=Hooks(update=plain_sgd))
    assert [(r.stop_reason, r.steps) for r in results] == [("max_steps", 7)] * 2
    stalled = cramfast.compress(texts[:1], model=lm, lr=1e-30, max_steps=50, patience=5,
                                hooks=Hooks(update=plain_sgd))
    assert [(r.stop_reason, r.steps, r.best_step) for r in stalled] == [("stalled", 5, 0)]


def test_the_rule_sees_the_attempts_step_count(tiny_models):
    """opt_steps, the attempt's own count (bias correction, schedules), is 0, 1, 2, ... as the
    rule is called: advanced after each call, not by the rule."""
    lm = cramfast.load_model(tiny_models["llama"], dtype=torch.float64)
    seen = []

    def watching(state, rows, grad, active):
        if active[0]:                        # a slot that stopped is not updated
            seen.append(int(state.opt_steps[rows][0]))
        plain_sgd(state, rows, grad, active)
    cramfast.compress([[5, 9, 100, 200, 7, 33]], model=lm, lr=1e-3, max_steps=4, patience=100,
                      hooks=Hooks(update=watching), sync_every=1)
    assert seen == [0, 1, 2, 3]
