"""Seconds per optimization step of the embedded model against the number of 16-token texts in
the batch (fixed work: 16 evaluations each, lr 1e-9 so nothing stops). Run from the repository
root: .venv/bin/python docs/study/step_time_by_batch.py"""
import sys
import time

sys.path.insert(0, "benchmarks")
from _common import bench_texts  # noqa: E402
from cramfast import compressor as C  # noqa: E402
from cramfast.models import load_model  # noqa: E402

lm = load_model()
texts = bench_texts(lm.tokenizer, 16, 32, seed=0)
C.compress(texts[:1], model=lm, max_steps=1, sync_every=1)          # warm-up
for batch in (1, 2, 4, 8, 16, 32):
    opt = C.OptimSettings(lr=1e-9, max_steps=15, patience=1000, max_slots=batch)
    jobs = [C.Job(i, ids, C.init_mem(lm, ids, 1, 0, 1.0), opt) for i, ids in enumerate(texts[:batch])]
    start = time.perf_counter()
    for _ in C._run(lm, jobs, 1, opt, None):
        pass
    step = (time.perf_counter() - start) / 16
    print(f"B={batch:2d}: {step * 1000:.0f} ms per step, {step / batch * 1000:.1f} ms per text-step")
