"""Redraw restarts under init=text_mean: from a plain seeded random draw (OLD=1, the rule before)
or halfway between the text mean and that draw (the shipped seeded_start), on the passages that
restarted in the init study (docs/study/text-mean-init-l8-l16-texts.csv), per init scale, m = 1,
600 steps, one attempt per text. Both arms run in the same batch shapes, so they differ only by
the restarts. From the repository root:
    OLD=1 .venv/bin/python docs/study/restart_mix_probe.py; .venv/bin/python docs/study/restart_mix_probe.py
Output: docs/study/restart-mix.txt."""
import os
import torch
import cramfast
from cramfast import compressor as C, sources

torch.set_num_threads(int(os.environ.get("T", 1)))
OLD = os.environ.get("OLD") == "1"
shipped = C.restart_draws


def random_redraws(lm, ids, n_mem, seed, s, attempt=0):
    """The redraws before: seeded randn * init_scale * std(E), whatever the init."""
    return shipped(lm, ids, n_mem, seed, C.replace(s, init="random"), attempt)


if OLD:
    C.restart_draws = random_redraws
lm = cramfast.load_model()
text = "\n\n".join(sources.read_text_file(f) for f in sources.text_files("../shared/data/books"))
hard = {10: {8: [16, 21, 23], 12: [11, 16, 21], 16: [15, 21]},
        20: {8: [13, 20], 12: [2, 15], 16: [0, 10, 20, 23]}}
for L in (8, 12, 16):
    passages = sources.sample_passages(lm.tokenizer, text, L, 24, 0)
    texts, per, names = [], [], []
    for scale in (10, 20):
        for i in hard[scale][L]:
            texts.append(passages[i])
            per.append(dict(init="text_mean", init_scale=float(scale)))
            names.append((scale, i))
    rs = cramfast.compress(texts, model=lm, preset="fast", per_text=per, max_steps=600,
                           patience=600, fill_slots=0, max_slots=len(texts))
    print(f"{'random' if OLD else 'mixed'} redraws, L={L}:",
          " ".join(f"scale{sc}/text{i}: {r.steps}{'r' * r.restarts}{'' if r.exact else ' (not lossless)'}"
                   for (sc, i), r in zip(names, rs)), flush=True)
