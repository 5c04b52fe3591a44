"""Stall restarts on the passages that the fast preset without them left unsolved within 600
steps in the end-to-end benchmark (bench texts 0 and 1 of L=16, seed 0), 900-step budget.
("fast" now includes stall_steps=150; the output file was written when the candidates were
named fast, fast+stall_steps=150, fast+stall_steps=150+restart=perturb: the same settings.)"""
import sys
sys.path.insert(0, "benchmarks")  # run from the repository root
from _common import bench_texts
import cramfast
from cramfast import study
lm = cramfast.load_model()
texts = bench_texts(lm.tokenizer, 16, 8, seed=0)
hard = [texts[i] for i in (0, 1)]
cands = {c: study.parse_candidate(c) for c in
         ["fast+stall_steps=0", "fast", "fast+restart=perturb"]}
per_text = []
rows = study.run_optimizer_study(lm, {16: hard}, [1], cands, max_steps=900, patience=900,
                                 texts_out=per_text)
print(study.markdown(rows))
for t in per_text:
    print(t)
