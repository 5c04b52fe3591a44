"""The end-to-end benchmark's passages (L = 16, seed 0, max 600 steps, patience 2000) under
`fast` with the tail levers switched: one compress call per variant, printing its seconds, the
lossless count and per text (steps, restarts, attempts, accuracy). A variant is settings
joined by commas over `fast` (settings.parse_settings: "stall_steps=0,fill_slots=0"), "-" for
`fast` as it is, or "paper" for the preset paper.

Runs quoted in lab/study/tail/README.md and lab/study/focal/README.md, from the repository
root, e.g.
    .venv/bin/python benchmarks/probes/tail_levers.py stall_steps=0,fill_slots=0 fill_slots=0 -
    .venv/bin/python benchmarks/probes/tail_levers.py --texts 24 focal_gamma=0 -
    .venv/bin/python benchmarks/probes/tail_levers.py --texts 24 --length 8 - paper
(outputs lab/study/focal/tail24.txt and lab/study/paper-vs-fast-24/tail24-L8.txt). They were
measured with `fast` as it stood then (AdamW); "-" is today's `fast`.
"""
from __future__ import annotations

import time

from cramfast.engine import compress
from cramfast.models import load_model
from cramfast.settings import parse_settings

import _probe


def main(args):
    lm = load_model(args.model)
    texts = _probe.bench_passages(lm.tokenizer, args.file, args.length, args.texts, seed=0)
    variants = [(v, {} if v in ("-", "paper") else parse_settings(v.split(",")))
                for v in args.variants]             # every variant checked before any run
    for variant, overrides in variants:
        start = time.perf_counter()
        results = compress(texts, model=lm, preset="paper" if variant == "paper" else "fast",
                           max_steps=args.steps, patience=args.patience, **overrides)
        print(variant, f"{time.perf_counter() - start:.1f} s",
              sum(r.accuracy == 1.0 for r in results), "lossless",
              [(r.steps, r.restarts, r.attempts, round(r.accuracy, 2)) for r in results],
              flush=True)


if __name__ == "__main__":
    p = _probe.parser(__doc__, "bench")
    p.add_argument("variants", nargs="*", default=["-"], metavar="variant",
                   help='settings over fast ("k=v,k=v"), "-" or "paper" (default: -)')
    p.add_argument("--texts", type=int, default=8, help="passages (default %(default)s)")
    p.add_argument("--length", type=int, default=16, help="tokens each (default %(default)s)")
    p.add_argument("--steps", type=int, default=600, help="max_steps (default %(default)s)")
    p.add_argument("--patience", type=int, default=2000, help="default %(default)s")
    _probe.run(main, p.parse_args())
