"""Stopped slots leaving the batch at once on a CPU (_step_live) vs riding to the next sync
(_step): the benchmark's 8 passages of L = 16, fast without restarts or attempts, max 300
steps. Run from the repository root: .venv/bin/python docs/study/step_live_probe.py"""
import sys, time
sys.path.insert(0, "benchmarks")
from _common import bench_texts
from cramfast import compress, compressor
from cramfast.models import load_model
lm = load_model()
texts = bench_texts(lm.tokenizer, 16, 8, seed=0)
compress(texts[:1], model=lm, max_steps=2, sync_every=1)
live = compressor._step_live
for name, fn in (("leave at once", live), ("ride to the sync", compressor._step)):
    compressor._step_live = fn
    t = time.perf_counter()
    rs = compress(texts, model=lm, preset="fast", fill_slots=0, stall_steps=0, max_steps=300)
    print(name, f"{time.perf_counter() - t:.1f} s", [r.steps for r in rs], flush=True)
