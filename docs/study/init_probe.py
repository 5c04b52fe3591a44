"""Where a mem vector starts, and a loss-adaptive lr: the first N of the study's passages of
length L (seed 0), `fast` as it stood before init=text_mean (LAMB lr 0.2, decay 7 steps per
token, focal 1) with no restarts, STEPS steps; prints the lossless count, the median of the
steps (unsolved count as STEPS) and the steps per passage. From the repository root:
    .venv/bin/python docs/study/init_probe.py L N STEPS UP DOWN [key=value ...]
UP/DOWN: each text's lr multiplier is multiplied by UP after a step that lowered its plain CE
and by DOWN after one that raised it (1 1: off). Environment: BOW=w mixes the random init with
the text's mean input embedding at the same norm, (1 - w) * random + w * mean (BOW=1: the mean
alone, today's init=text_mean at attempt 0); BOWTOK=rest leaves the first token out of the mean;
init_scale=k scales both. Output of the runs quoted in docs/study.md: docs/study/init-probe.txt."""
import os
import statistics
import sys

import torch

from cramfast import compressor as C, ops, presets, sources
from cramfast.models import load_model

torch.set_num_threads(int(os.environ.get("T", 1)))
lm = load_model()
text = "\n\n".join(sources.read_text_file(f) for f in sources.text_files("../shared/data/books"))
L, n, steps = (int(a) for a in sys.argv[1:4])
up, down = float(sys.argv[4]), float(sys.argv[5])
changes = dict(a.split("=") for a in sys.argv[6:])
texts = sources.sample_passages(lm.tokenizer, text, L, 24, 0)[:n]
base = dict(presets.preset("fast"), init="random", init_scale=1.0)
base.update({k: type(base.get(k, 0.0))(v) for k, v in changes.items()})
s = C.OptimSettings(**base).for_model(lm)
state = C.SlotState(n, 1, lm.hidden_size, torch.float32, lm.device, 0)
w = float(os.environ.get("BOW", 0))
for i, ids in enumerate(texts):
    start = C.init_mem(lm, ids, 1, 0, s.init_scale)
    if w:
        E = lm.embedding.detach()
        chosen = ids[1:] if os.environ.get("BOWTOK") == "rest" else ids
        mean = E[chosen].mean(0, keepdim=True)
        start = (1 - w) * start + w * mean / mean.norm() * start.norm()
    state.start(i, start, len(ids) - 1, s.for_text(len(ids)))
    state.patience[i] = 10**6
    state.stall_steps[i] = 0
lr0 = state.hyper[:, C.SlotState.HYPER.index("lr")].clone()
mult, prev = torch.ones(n), torch.full((n,), float("inf"))
rows = torch.arange(n)
ids, targets = C.pad_batch(texts, L, lm.device)
first = [None] * n
for t in range(steps):
    active = state.active.clone()
    mem = state.mem.clone().requires_grad_(True)
    scored = torch.where(active[:, None], targets, torch.full_like(targets, ops.IGNORE_INDEX))
    loss, argmax = C.predict(lm, ids, scored, mem, "torch")
    gamma = state.hyper[:, C.SlotState.HYPER.index("focal_gamma")].view(-1, 1)
    ((loss * C.focal_weights(loss, gamma)).sum(1) / state.n_pred).sum().backward()
    plain = loss.detach().sum(1) / state.n_pred
    correct = ((argmax == scored) & (scored != ops.IGNORE_INDEX)).sum(1)
    C._apply_stop_rule(state, rows, active, correct, plain, mem.detach())
    mult = torch.where(plain < prev, mult * up, mult * down)
    prev = plain
    state.hyper[:, C.SlotState.HYPER.index("lr")] = lr0 * mult
    C.mem_update(state, rows, mem.grad, state.active)
    for i in range(n):
        if first[i] is None and correct[i] == L - 1:
            first[i] = t + 1
res = [f or steps for f in first]
print(f"L={L} BOW={w} UP/DOWN={up}/{down} {changes}: lossless {sum(f is not None for f in first)}"
      f"/{n}, median {statistics.median(res)}, steps {sorted(res)}")
