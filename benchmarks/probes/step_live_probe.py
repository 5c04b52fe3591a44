"""Stopped slots leaving the batch at once on a CPU vs riding along to the next host sync
(Hooks.drop_stopped True / False): the end-to-end benchmark's 8 passages of L = 16 (seed 0),
`fast` without stall restarts or parallel attempts, max 300 steps. Prints per arm the seconds
and each text's steps.

The run quoted in docs/benchmarks.md (2026-11-29, stopped slots leaving a CPU batch), made with
`fast` v3; the probe runs the `fast` preset. From the repository root:
    .venv/bin/python benchmarks/probes/step_live_probe.py
"""
from __future__ import annotations

import time

from cramfast.engine import Hooks, compress
from cramfast.models import load_model

import _probe

ARMS = (("leave at once", True), ("ride to the sync", False))


def main(args):
    lm = load_model(args.model)
    texts = _probe.bench_passages(lm.tokenizer, args.file, args.length, args.texts, seed=0)
    compress(texts[:1], model=lm, max_steps=2, sync_every=1)          # warm-up
    for name, drop in ARMS:
        start = time.perf_counter()
        rs = compress(texts, model=lm, preset="fast", fill_slots=0, stall_steps=0,
                      max_steps=args.steps, hooks=Hooks(drop_stopped=drop))
        print(name, f"{time.perf_counter() - start:.1f} s", [r.steps for r in rs], flush=True)


if __name__ == "__main__":
    p = _probe.parser(__doc__, "bench")
    p.add_argument("--texts", type=int, default=8, help="passages (default %(default)s)")
    p.add_argument("--length", type=int, default=16, help="tokens each (default %(default)s)")
    p.add_argument("--steps", type=int, default=300, help="max_steps (default %(default)s)")
    _probe.run(main, p.parse_args())
