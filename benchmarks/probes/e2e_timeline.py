"""Where `fast` spends its seconds on the end-to-end benchmark's passages: steps and seconds per
number of texts in the batch, and the time of the metrics and greedy-decode checks.

The run quoted in docs/benchmarks.md (2026-11-29, end to end with fast v3 under the published
protocol: 8 passages of L = 16, seed 0, max 5000 steps, patience 2000), made with `fast` v3;
the probe runs the `fast` preset. From the repository root:
    .venv/bin/python benchmarks/probes/e2e_timeline.py

A step counts for the texts it updated (on a CPU, texts that stopped since the last sync have
left the batch already); its seconds run from the step before it to its own update (Hooks.update
marks each update, Hooks.on_timing each stretch between host syncs, whose sync the last step of
the stretch carries), so the steps' seconds add up to the time spent stepping. Steps replayed
as CUDA graphs call no Python, so this is a probe of eager (CPU) runs.
"""
from __future__ import annotations

import collections
import time

from cramfast.engine import Hooks, TextSettings, Timing, compress, mem_update
from cramfast.models import load_model

import _probe


class Timeline:
    """Steps and seconds per number of texts stepped, and the seconds of the other phases
    (decode checks and metrics)."""

    def __init__(self):
        self.per_batch = collections.defaultdict(lambda: [0, 0.0])   # texts -> [steps, seconds]
        self.finish_seconds = 0.0
        self.updates: list[tuple[int, float]] = []   # this stretch's (texts, time of update)

    def update(self, state, rows, grad, active):
        mem_update(state, rows, grad, active)
        self.updates.append((len(rows), time.perf_counter()))

    def on_timing(self, timing: Timing):
        now = time.perf_counter()
        if timing.phase != "steps":
            self.finish_seconds += timing.seconds
            return
        ends = [t for _, t in self.updates[:-1]] + [now]
        begin = now - timing.seconds
        for (texts, _), end in zip(self.updates, ends):
            self.per_batch[texts][0] += 1
            self.per_batch[texts][1] += end - begin
            begin = end
        self.updates = []


def main(args):
    lm = load_model(args.model)
    texts = _probe.bench_passages(lm.tokenizer, args.file, args.length, args.texts, seed=0)
    compress(texts[:1], model=lm, max_steps=1, sync_every=1)          # warm-up
    timeline = Timeline()
    start = time.perf_counter()
    results = compress(texts, model=lm, preset="fast", max_steps=args.steps,
                       patience=args.patience,
                       hooks=Hooks(update=timeline.update, on_timing=timeline.on_timing))
    total = time.perf_counter() - start
    print(f"{total:.1f} s, {sum(r.accuracy == 1 for r in results)}/{len(texts)} lossless, steps "
          f"{[r.steps for r in results]}, attempts {[r.attempts for r in results]}")
    for texts_in_batch, (steps, seconds) in sorted(timeline.per_batch.items(), reverse=True):
        print(f"{texts_in_batch} texts in the batch: {steps} steps, {seconds:.1f} s")
    stepping = sum(s for _, s in timeline.per_batch.values())
    print(f"steps {stepping:.1f} s, metrics and decode checks {timeline.finish_seconds:.1f} s")


if __name__ == "__main__":
    p = _probe.parser(__doc__, "bench")
    p.add_argument("--texts", type=int, default=8, help="passages (default %(default)s)")
    p.add_argument("--length", type=int, default=16, help="tokens each (default %(default)s)")
    p.add_argument("--steps", type=int, default=TextSettings().max_steps,
                   help="max_steps (default %(default)s, the published protocol's)")
    p.add_argument("--patience", type=int, default=TextSettings().patience,
                   help="default %(default)s, the published protocol's")
    _probe.run(main, p.parse_args())
