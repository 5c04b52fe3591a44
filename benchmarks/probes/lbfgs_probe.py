"""Another optimizer: torch.optim.LBFGS (strong-Wolfe line search) on one text at a time,
counting forward+backward evaluations until the teacher-forced argmax is right everywhere.
The end-to-end benchmark's passages (L = 16, seed 0), each from its seeded random init at scale
1 (init=random, the start of `fast` v1 to v6), plain mean CE (--gamma 1: the focal
objective). Prints per passage: its index, evaluations, lossless, the most tokens right, the
seconds so far; then the lossless count and the median of the evaluations.

The run quoted in lab/study/lbfgs/README.md, from the repository root:
    .venv/bin/python benchmarks/probes/lbfgs_probe.py --texts 8 --cap 300 --history 20
"""
from __future__ import annotations

import statistics
import time

import torch

from cramfast.engine import init_mem, objective_weights, pad_batch, predict
from cramfast.models import load_model

import _probe


class Lossless(Exception):
    pass


def lbfgs_evaluations(lm, token_ids, cap: int, history: int, gamma: float):
    """(evaluations, lossless?, best correct-count) for one text."""
    ids, targets = pad_batch([token_ids], len(token_ids), lm.device)
    mem = init_mem(lm, token_ids, 1, 0, 1.0)[None].to(lm.device).clone().requires_grad_(True)
    opt = torch.optim.LBFGS([mem], lr=1, history_size=history, max_iter=cap, max_eval=cap,
                            tolerance_grad=0, tolerance_change=0, line_search_fn="strong_wolfe")
    seen = dict(evaluations=0, best=0)

    def closure():
        opt.zero_grad()
        loss, argmax, _ = predict(lm, ids, targets, mem, None)
        seen["evaluations"] += 1
        correct = int((argmax == targets).sum())
        seen["best"] = max(seen["best"], correct)
        if correct == len(token_ids) - 1:      # judged before the update, as the compressor does
            raise Lossless
        weighted = (loss * objective_weights(loss, torch.tensor(gamma))).mean()
        weighted.backward()
        return weighted

    try:
        opt.step(closure)
        return seen["evaluations"], False, seen["best"]
    except Lossless:
        return seen["evaluations"], True, seen["best"]


def main(args):
    lm = load_model(args.model)
    start = time.perf_counter()
    runs = []
    texts = _probe.bench_passages(lm.tokenizer, args.file, args.length, args.texts, seed=0)
    for i, ids in enumerate(texts):
        runs.append(lbfgs_evaluations(lm, ids, args.cap, args.history, args.gamma))
        print(i, *runs[-1], f"{time.perf_counter() - start:.0f} s", flush=True)
    print(f"lossless {sum(ok for _, ok, _ in runs)}/{len(texts)}, median evaluations "
          f"{statistics.median(e for e, _, _ in runs)}")


if __name__ == "__main__":
    p = _probe.parser(__doc__, "bench")
    p.add_argument("--texts", type=int, default=8, help="N passages (default %(default)s)")
    p.add_argument("--length", type=int, default=16, help="tokens each (default %(default)s)")
    p.add_argument("--cap", type=int, default=300,
                   help="evaluations at most (default %(default)s)")
    p.add_argument("--history", type=int, default=20,
                   help="L-BFGS history (default %(default)s)")
    p.add_argument("--gamma", type=float, default=0.0,
                   help="focal gamma of the objective (default %(default)s)")
    _probe.run(main, p.parse_args())
