"""Where `fast` spends its seconds on the end-to-end benchmark's 8 passages (L = 16, seed 0,
the published budget: max 5000 steps, patience 2000): steps and seconds per batch size, and the
time of the metrics and greedy-decode checks. Run from the repository root:
    .venv/bin/python docs/study/e2e_timeline.py"""
import collections
import sys
import time

sys.path.insert(0, "benchmarks")
from _common import bench_texts  # noqa: E402
from cramfast import compressor as C  # noqa: E402
from cramfast.models import load_model  # noqa: E402

lm = load_model()
texts = bench_texts(lm.tokenizer, 16, 8, seed=0)
C.compress(texts[:1], model=lm, max_steps=1, sync_every=1)          # warm-up
per_batch = collections.defaultdict(lambda: [0, 0.0])               # rows -> [steps, seconds]
finish_seconds = [0.0]
step, finish = C._step, C._finish


def timed_step(lm_, state, rows, *args):
    start = time.perf_counter()
    out = step(lm_, state, rows, *args)
    per_batch[len(rows)][0] += 1
    per_batch[len(rows)][1] += time.perf_counter() - start
    return out


def timed_finish(*args):
    start = time.perf_counter()
    out = finish(*args)
    finish_seconds[0] += time.perf_counter() - start
    return out


C._step, C._finish = timed_step, timed_finish
start = time.perf_counter()
results = C.compress(texts, model=lm, preset="fast", max_steps=5000, patience=2000)
total = time.perf_counter() - start
print(f"{total:.1f} s, {sum(r.accuracy == 1 for r in results)}/8 lossless, steps "
      f"{[r.steps for r in results]}, attempts {[r.attempts for r in results]}")
for rows, (steps, seconds) in sorted(per_batch.items(), reverse=True):
    print(f"{rows} texts in the batch: {steps} steps, {seconds:.1f} s")
stepping = sum(s for _, s in per_batch.values())
print(f"steps {stepping:.1f} s, metrics and decode checks {finish_seconds[0]:.1f} s")
