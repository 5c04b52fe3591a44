"""Redraw restarts under init=text_mean: from a plain seeded random draw (--redraws random, the
rule before) or halfway between the text mean and that draw (--redraws mixed, what `fast`
does), on the passages that restarted in the init study
(lab/study/text-mean-init/text-mean-init-l8-l16-texts.csv:
the optimizer study's 24 passages per length, seed 0), per init scale, m = 1, `fast` with
init=text_mean at that scale, 600 steps, one attempt per text. Both arms run in the same batch
shapes, so they differ only by the restarts' starts (Hooks.start). Prints per length each
passage's steps, an "r" per restart.

The runs quoted in lab/study/text-mean-init/README.md, output
lab/study/text-mean-init/restart-mix.txt;
from the repository root:
    .venv/bin/python benchmarks/probes/restart_mix_probe.py --redraws random
    .venv/bin/python benchmarks/probes/restart_mix_probe.py
"""
from __future__ import annotations

from dataclasses import replace

import torch

from cramfast.engine import Hooks, attempt_start, compress, restart_draws
from cramfast.errors import CramfastError
from cramfast.models import load_model

import _probe

# init scale -> length -> the passages (of 24) that restarted in the init study
HARD = {10: {8: [16, 21, 23], 12: [11, 16, 21], 16: [15, 21]},
        20: {8: [13, 20], 12: [2, 15], 16: [0, 10, 20, 23]}}


def random_redraws(lm, ids, n_mem, seed, settings, attempt=0):
    """The attempt's own start, with the redraws before: seeded randn * init_scale * std(E),
    whatever the init."""
    start, _ = attempt_start(lm, ids, n_mem, seed, settings, attempt)
    return start, restart_draws(lm, ids, n_mem, seed, replace(settings, init="random"), attempt)


def main(args):
    torch.set_num_threads(args.threads)
    unknown = sorted(set(args.lengths) - set(HARD[10]))
    if unknown:
        raise CramfastError(f"--lengths: no hard passages listed for L = {unknown}; "
                            f"choose from {sorted(HARD[10])}")
    hooks = Hooks(start=random_redraws) if args.redraws == "random" else Hooks()
    lm = load_model(args.model)
    for L in args.lengths:
        passages = _probe.study_passages(lm.tokenizer, args.file, L, 24, 0)
        texts, per, names = [], [], []
        for scale in (10, 20):
            for i in HARD[scale][L]:
                texts.append(passages[i])
                per.append(dict(init="text_mean", init_scale=float(scale)))
                names.append((scale, i))
        rs = compress(texts, model=lm, preset="fast", per_text=per, max_steps=args.steps,
                      patience=args.steps, fill_slots=0, max_slots=len(texts), hooks=hooks)
        print(f"{args.redraws} redraws, L={L}:",
              " ".join(f"scale{sc}/text{i}: {r.steps}{'r' * r.restarts}"
                       f"{'' if r.exact else ' (not lossless)'}"
                       for (sc, i), r in zip(names, rs)), flush=True)


if __name__ == "__main__":
    p = _probe.parser(__doc__, "study")
    p.add_argument("--redraws", choices=("mixed", "random"), default="mixed")
    p.add_argument("--lengths", type=_probe.csv_ints, default=[8, 12, 16],
                   help="of 8,12,16 (default 8,12,16)")
    p.add_argument("--steps", type=int, default=600,
                   help="max_steps and patience (default %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    _probe.run(main, p.parse_args())
