"""`paper` and `fast` pinned: the same texts, model and seed give the mems, steps and metrics
recorded in tests/data/pinned_presets.json, so a change that is meant to leave results alone
(a refactor, a faster kernel) is checked against the results before it.

The runs are in fp64 on the shipped pretrained tiny model (tests/data/tiny-llama-trained, the
same bits on every machine): discrete outcomes (steps, stop reason, accuracy, decoded ids,
attempts, restarts) must match exactly, floats to 1e-9. What may differ between CPUs is the
rounding of fp64 kernels (AVX2 vs AVX-512 blocking, FMA or not): ulps. Scaling every weight by
1 +- 2^-50 at random (a few ulps, more than any such rounding) moves the pinned floats by under
1e-14 here, so 1e-9 leaves five orders of magnitude for the platform and none for a change of
behaviour.

A change that is meant to change results regenerates the file and says so in its commit:
    .venv/bin/python tests/test_pinned_presets.py --write
"""
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
PINNED = HERE / "data" / "pinned_presets.json"
LENGTHS = (6, 9, 12, 16)
RUNS = {"paper": dict(preset="paper", lr=0.03, max_steps=60, patience=60),
        "fast": dict(preset="fast", max_steps=60, patience=60),
        "fast_restarts": dict(preset="fast", stall_steps=3, max_restarts=2, max_steps=60,
                              patience=60)}


def pinned_outputs(model_path) -> dict:
    import cramfast

    from conftest import corpus_texts
    lm = cramfast.load_model(model_path, dtype=torch.float64)
    texts = corpus_texts(lm.tokenizer, LENGTHS, seed=4)
    out = {}
    for name, kwargs in RUNS.items():
        results = cramfast.compress(texts, model=lm, seed=1, sync_every=4, **kwargs)
        out[name] = [dict(steps=r.steps, best_step=r.best_step, stop_reason=r.stop_reason,
                          accuracy=r.accuracy, exact=r.exact, decoded_ids=r.decoded_ids,
                          restarts=r.restarts, attempts=r.attempts, attempt=r.attempt,
                          ce_with_mem=r.ce_with_mem, ce_without_mem=r.ce_without_mem,
                          mem=r.mem.flatten().tolist()) for r in results]
    return out


def test_presets_give_the_pinned_results(trained_path):
    expected = json.loads(PINNED.read_text())
    got = pinned_outputs(trained_path)
    for name in RUNS:
        assert len(got[name]) == len(expected[name])
        for i, (g, e) in enumerate(zip(got[name], expected[name])):
            floats = ("ce_with_mem", "ce_without_mem", "mem")
            assert {k: v for k, v in g.items() if k not in floats} == \
                {k: v for k, v in e.items() if k not in floats}, (name, i)
            for key in floats:
                torch.testing.assert_close(torch.tensor(g[key], dtype=torch.float64),
                                           torch.tensor(e[key], dtype=torch.float64),
                                           rtol=1e-9, atol=1e-9, msg=f"{name} text {i} {key}")


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import os
    os.environ.setdefault("TRITON_INTERPRET", "1")
    sys.path.insert(0, str(HERE))
    from conftest import TRAINED
    PINNED.write_text(json.dumps(pinned_outputs(TRAINED)) + "\n")
    print(f"wrote {PINNED}")
