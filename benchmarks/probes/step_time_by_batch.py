"""Seconds per optimization step against the number of texts in the batch: the end-to-end
benchmark's passages of L = 16 (seed 0), preset `paper` with lr 1e-9 so that nothing stops,
fixed work (16 evaluations of every text, one stretch between host syncs), timed by
Hooks.on_timing (the stepping alone: no metrics, no decode check).

The run quoted in lab/study/tail/README.md, from the
repository root:
    .venv/bin/python benchmarks/probes/step_time_by_batch.py
"""
from __future__ import annotations

from cramfast.engine import compress
from cramfast.errors import CramfastError
from cramfast.models import load_model

import _probe


def main(args):
    if args.steps < 1 or not args.batches or min(args.batches) < 1:
        raise CramfastError("--steps and every batch size must be >= 1")
    lm = load_model(args.model)
    texts = _probe.bench_passages(lm.tokenizer, args.file, args.length, max(args.batches),
                                  seed=0)
    compress(texts[:1], model=lm, max_steps=1, sync_every=1)          # warm-up
    for batch in args.batches:
        step = _probe.seconds_per_step(lm, texts[:batch], args.steps)
        print(f"B={batch:2d}: {step * 1000:.0f} ms per step, "
              f"{step / batch * 1000:.1f} ms per text-step")


if __name__ == "__main__":
    p = _probe.parser(__doc__, "bench")
    p.add_argument("--length", type=int, default=16, help="tokens each (default %(default)s)")
    p.add_argument("--batches", type=_probe.csv_ints, default=[1, 2, 4, 8, 16, 32],
                   help="batch sizes (default 1,2,4,8,16,32)")
    p.add_argument("--steps", type=int, default=16,
                   help="evaluations per text (default %(default)s)")
    _probe.run(main, p.parse_args())
