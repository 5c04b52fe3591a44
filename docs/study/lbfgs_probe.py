"""Another optimizer: torch.optim.LBFGS (strong-Wolfe line search) on one text at a time,
counting forward+backward evaluations until the teacher-forced argmax is right everywhere.
The end-to-end benchmark's passages (L = 16, seed 0), each from its seeded init (the one `fast`
starts from), plain mean CE. Run from the repository root:
    N=8 CAP=300 HIST=20 .venv/bin/python docs/study/lbfgs_probe.py
(N passages, CAP evaluations at most, HIST L-BFGS history; GAMMA=1 for the focal objective)."""
import os
import statistics
import sys
import time

sys.path.insert(0, "benchmarks")
import torch  # noqa: E402
from _common import bench_texts  # noqa: E402
from cramfast.compressor import focal_weights, init_mem, pad_batch, predict  # noqa: E402
from cramfast.models import load_model  # noqa: E402

N, CAP = int(os.environ.get("N", 8)), int(os.environ.get("CAP", 300))
HIST, GAMMA = int(os.environ.get("HIST", 20)), float(os.environ.get("GAMMA", 0))


class Lossless(Exception):
    pass


def lbfgs_evaluations(lm, token_ids):
    """(evaluations, lossless?, best correct-count) for one text."""
    ids, targets = pad_batch([token_ids], len(token_ids), lm.device)
    mem = init_mem(lm, token_ids, 1, 0, 1.0)[None].clone().requires_grad_(True)
    opt = torch.optim.LBFGS([mem], lr=1, history_size=HIST, max_iter=CAP, max_eval=CAP,
                            tolerance_grad=0, tolerance_change=0, line_search_fn="strong_wolfe")
    seen = dict(evaluations=0, best=0)

    def closure():
        opt.zero_grad()
        loss, argmax = predict(lm, ids, targets, mem, None)
        seen["evaluations"] += 1
        correct = int((argmax == targets).sum())
        seen["best"] = max(seen["best"], correct)
        if correct == len(token_ids) - 1:      # judged before the update, as the compressor does
            raise Lossless
        weighted = (loss * focal_weights(loss, torch.tensor(GAMMA))).mean()
        weighted.backward()
        return weighted

    try:
        opt.step(closure)
        return seen["evaluations"], False, seen["best"]
    except Lossless:
        return seen["evaluations"], True, seen["best"]


lm = load_model()
start = time.perf_counter()
runs = []
for i, ids in enumerate(bench_texts(lm.tokenizer, 16, N, seed=0)):
    runs.append(lbfgs_evaluations(lm, ids))
    print(i, *runs[-1], f"{time.perf_counter() - start:.0f} s", flush=True)
print(f"lossless {sum(ok for _, ok, _ in runs)}/{N}, median evaluations "
      f"{statistics.median(e for e, _, _ in runs)}")
