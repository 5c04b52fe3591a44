"""The end-to-end benchmark's 8 passages (L=16, seed 0, max 600 steps) under `fast` with the
tail levers switched: one compress call per variant, printing seconds, lossless count and per
text (steps, restarts, attempts, accuracy). Run from the repository root, e.g.
    .venv/bin/python docs/study/tail_levers.py stall_steps=0,fill_slots=0 fill_slots=0 -
("-": the preset as it is; "paper": preset paper instead; CRAMFAST_TAIL_TEXTS=24 takes 24
passages instead of 8, CRAMFAST_TAIL_LENGTH=8 passages of 8 tokens instead of 16)."""
import os
import sys
import time

sys.path.insert(0, "benchmarks")
from _common import bench_texts  # noqa: E402
from cramfast import compress, presets  # noqa: E402
from cramfast.models import load_model  # noqa: E402

lm = load_model()
texts = bench_texts(lm.tokenizer, int(os.environ.get("CRAMFAST_TAIL_LENGTH", 16)),
                    int(os.environ.get("CRAMFAST_TAIL_TEXTS", 8)), seed=0)
for variant in sys.argv[1:]:
    overrides = presets.parse_settings(variant.split(",")) if variant not in ("-", "paper") else {}
    start = time.perf_counter()
    results = compress(texts, model=lm, preset="paper" if variant == "paper" else "fast",
                       max_steps=600, patience=2000, **overrides)
    print(variant, f"{time.perf_counter() - start:.1f} s",
          sum(r.accuracy == 1.0 for r in results), "lossless",
          [(r.steps, r.restarts, r.attempts, round(r.accuracy, 2)) for r in results], flush=True)
