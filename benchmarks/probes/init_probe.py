"""Where a mem vector starts, and a loss-adaptive lr: the first N of the optimizer study's 24
passages of length L (seed 0), `fast` v6 (LAMB lr 0.2, decay 7 steps
per token, focal 1: the `fast` preset with init=random, init_scale=1) with no restarts and no
patience, STEPS steps, every text in one batch; prints the lossless count, the median of the
steps (an unsolved passage counts as STEPS) and the steps per passage.

--up/--down: each text's lr multiplier is multiplied by UP after a step that lowered its plain
CE and by DOWN after one that raised it (1 1: off). --bow w starts from the random init mixed
with the direction of the text's mean input embedding at the random start's norm,
(1 - w) * random + w * mean (w = 1: the mean alone, today's init=text_mean at attempt 0, at the
random draw's norm); --bow-tokens rest leaves the first token out of the mean. key=value
arguments change settings of the base (init_scale=k scales both starts); as everywhere in
cramfast, an absolute setting replaces its relative form (decay_steps=0 also ends
decay_steps_per_token).

Output of the runs quoted in lab/study/text-mean-init/README.md:
lab/study/text-mean-init/init-probe.txt, one row per run, e.g. from the repository root
    .venv/bin/python benchmarks/probes/init_probe.py                        # L=8, random init
    .venv/bin/python benchmarks/probes/init_probe.py --bow 1 init_scale=10
    .venv/bin/python benchmarks/probes/init_probe.py --up 1.1 --down 0.5
    .venv/bin/python benchmarks/probes/init_probe.py --length 16 --steps 160 --bow 1 init_scale=10
"""
from __future__ import annotations

import statistics
from dataclasses import replace

import torch

from cramfast.constants import IGNORE_INDEX
from cramfast.engine import (
    SlotState,
    TextSettings,
    apply_stop_rule,
    count_step,
    init_mem,
    mem_dtype,
    mem_update,
    objective_weights,
    pad_batch,
    predict,
    settings_for,
)
from cramfast.models import load_model
from cramfast.settings import parse_settings, preset_settings, split

import _probe


def base_settings(changes: dict) -> TextSettings:
    """`fast` with the random init at scale 1 and ``changes``; no restarts, no patience."""
    settings = split(preset_settings("fast", **dict(dict(init="random", init_scale=1.0),
                                                    **changes)))[0]
    return replace(settings, stall_steps=0, stall_steps_per_token=0.0, patience=10**6)


def start_of(lm, ids: list[int], settings: TextSettings, bow: float, bow_tokens: str):
    """The seeded random start (seed 0), mixed with the text's mean input embedding by ``bow``
    (the mean taken on the model's device in its dtype, as for the quoted rows: text_mean_init's
    fp64 mean rounds differently, and a few dozen steps make that another trajectory)."""
    start = init_mem(lm, ids, 1, 0, settings.init_scale).to(lm.device)
    if not bow:
        return start
    mean = lm.embedding.detach()[ids[1:] if bow_tokens == "rest" else ids].mean(0, keepdim=True)
    return (1 - bow) * start + bow * mean / mean.norm() * start.norm()


def main(args):
    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    L, n, steps = args.length, args.texts, args.steps
    texts = _probe.study_passages(lm.tokenizer, args.file, L, n, 0)   # the first n of 24
    changes = parse_settings(args.settings)
    base = base_settings(changes)
    state = SlotState(n, 1, lm.hidden_size, mem_dtype(lm), lm.device)
    for i, ids in enumerate(texts):
        settings = settings_for(lm, base, ids)
        state.start(i, start_of(lm, ids, settings, args.bow, args.bow_tokens), len(ids) - 1,
                    settings)
    rows = torch.arange(n)
    lr0 = state.hyper_column("lr", rows).clone()
    mult, prev = torch.ones(n), torch.full((n,), float("inf"))
    ids, targets = pad_batch(texts, L, lm.device)
    first = [None] * n
    for t in range(steps):
        active = state.active.clone()
        mem = state.mem.clone().requires_grad_(True)
        scored = torch.where(active[:, None], targets, torch.full_like(targets, IGNORE_INDEX))
        loss, argmax, _ = predict(lm, ids, scored, mem, "torch")
        gamma = state.hyper_column("focal_gamma", rows).view(-1, 1)
        ((loss * objective_weights(loss, gamma)).sum(1) / state.n_pred).sum().backward()
        plain = loss.detach().sum(1) / state.n_pred
        correct = ((argmax == scored) & (scored != IGNORE_INDEX)).sum(1)
        apply_stop_rule(state, rows, active, correct, plain, mem.detach())
        mult = torch.where(plain < prev, mult * args.up, mult * args.down)
        prev = plain
        state.set_hyper_column("lr", rows, lr0 * mult)
        mem_update(state, rows, mem.grad, state.active)
        count_step(state, rows, state.active)
        for i in range(n):
            if first[i] is None and correct[i] == L - 1:
                first[i] = t + 1
    res = [f or steps for f in first]
    print(f"L={L} BOW={args.bow} UP/DOWN={args.up}/{args.down} {changes}: lossless "
          f"{sum(f is not None for f in first)}/{n}, median {statistics.median(res)}, "
          f"steps {sorted(res)}")


if __name__ == "__main__":
    p = _probe.parser(__doc__, "study")
    p.add_argument("settings", nargs="*", metavar="key=value", help="changes to the base")
    p.add_argument("--length", type=int, default=8, help="L, tokens each (default %(default)s)")
    p.add_argument("--texts", type=int, default=8, help="N passages (default %(default)s)")
    p.add_argument("--steps", type=int, default=120, help="STEPS (default %(default)s)")
    p.add_argument("--up", type=float, default=1.0, help="default %(default)s")
    p.add_argument("--down", type=float, default=1.0, help="default %(default)s")
    p.add_argument("--bow", type=float, default=0.0, help="w (default %(default)s)")
    p.add_argument("--bow-tokens", choices=("all", "rest"), default="all")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    _probe.run(main, p.parse_args())
