"""On a CPU, a batch of two text lengths stepped in length groups (each cut to its own longest
text, EagerSteps' default there) vs as one batch right-padded to the longest (Hooks.drop_stopped
False, which also keeps the padded batch whole): the workload of a capacity climb's round, where
the next grid length joins the current one (16 passages of L = 96 beside 16 of L = 128). The
end-to-end benchmark's passages (seed 0), preset `paper` with lr 1e-9 so that nothing stops,
fixed work (every text evaluated --steps times in one stretch between host syncs), timed by
Hooks.on_timing (the stepping alone); the arms alternate --repeats times.

The run quoted in docs/benchmarks.md, from the repository root:
    .venv/bin/python benchmarks/probes/length_groups_probe.py
"""
from __future__ import annotations

from cramfast.engine import compress
from cramfast.errors import CramfastError
from cramfast.models import load_model

import _probe

ARMS = (("length groups", None), ("one padded batch", False))


def main(args):
    if args.steps < 1 or args.texts < 1 or args.repeats < 1 or len(args.lengths) < 2:
        raise CramfastError("--steps, --texts and --repeats must be >= 1, --lengths two or more")
    lm = load_model(args.model)
    texts = [t for n in args.lengths
             for t in _probe.bench_passages(lm.tokenizer, args.file, n, args.texts, seed=0)]
    compress(texts[:1], model=lm, max_steps=1, sync_every=1)          # warm-up
    seconds = {name: [] for name, _ in ARMS}
    for _ in range(args.repeats):
        for name, drop in ARMS:
            seconds[name].append(_probe.seconds_per_step(lm, texts, args.steps, drop))
    tokens = sum(len(t) for t in texts)
    for name, _ in ARMS:
        best = min(seconds[name])
        print(f"{name}: {best * 1000:.0f} ms per step (best of {args.repeats}), "
              f"{best / tokens * 1e6:.0f} us per token")
    ratio = min(seconds["one padded batch"]) / min(seconds["length groups"])
    print(f"padded / grouped: {ratio:.3f}")


if __name__ == "__main__":
    p = _probe.parser(__doc__, "bench")
    p.add_argument("--lengths", type=_probe.csv_ints, default=[96, 128],
                   help="the texts' lengths in tokens (default 96,128)")
    p.add_argument("--texts", type=int, default=16,
                   help="passages per length (default %(default)s)")
    p.add_argument("--steps", type=int, default=4,
                   help="evaluations per text and arm (default %(default)s)")
    p.add_argument("--repeats", type=int, default=2,
                   help="times each arm runs (default %(default)s)")
    _probe.run(main, p.parse_args())
