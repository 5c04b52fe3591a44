"""Update rules in place of AdamW (Hooks.update), on the end-to-end benchmark's passages (L = 16,
seed 0): `fast` v4, pinned here (AdamW, lr = std(E), cosine to a tenth over 200 steps, focal 1,
the random init at scale 1), one attempt per text, no restarts, 300 steps. One compress
call per rule, each printing the lossless count, the median steps (unsolved: the budget), the
steps and accuracy per text, the exact count and the mem norms.

Rules: adam (AdamW itself), lion, normgd (heavy-ball momentum on the normalized gradient, step
norm lr * sqrt(d)), adamnorm (AdamW's direction at step norm lr * sqrt(d)), lamb and relgd
(AdamW's direction, or normgd's, at step norm ETA * schedule * ||mem||; weight decay a separate
shrink per step: the first form tried; the shipped optimizer=lamb adds it to the step before
the trust ratio, as LAMB does). --lr-scale multiplies the scheduled lr; --eta, --decay 0 (no
schedule) and --wd (a multiple of the weight decay) shape lamb and relgd.

The runs quoted in lab/study/lamb/README.md, output lab/study/lamb/update-rules.txt;
from the repository root:
    .venv/bin/python benchmarks/probes/update_rules_probe.py adam normgd adamnorm lamb relgd
    .venv/bin/python benchmarks/probes/update_rules_probe.py --lr-scale 0.3 lion
    .venv/bin/python benchmarks/probes/update_rules_probe.py --eta 0.2 lamb
"""
from __future__ import annotations

import statistics
import time

import torch

from cramfast.engine import Hooks, compress, scheduled_lr
from cramfast.models import load_model

import _probe

RULES = ("adam", "lion", "normgd", "adamnorm", "lamb", "relgd")
# `fast` as it stood before LAMB, over the preset paper
BEFORE_LAMB = dict(optimizer="adamw", lr_std=1.0, decay_steps=200, final_lr_ratio=0.1,
                   focal_gamma=1.0)
HYPER = ("lr", "beta1", "beta2", "weight_decay", "eps", "warmup", "decay_steps",
         "final_lr_ratio")


def _unit(v):
    return v / v.norm(dim=(1, 2), keepdim=True).clamp(min=1e-30)


def make_rule(rule: str, lr_scale: float, eta: float, decay: bool, wd_scale: float):
    """An update rule with optim.mem_update's contract: update(state, rows, grad, active)."""
    def update(state, rows, grad, active):
        a = active.view(-1, 1, 1)
        h = {name: state.hyper_column(name, rows).view(-1, 1, 1) for name in HYPER}
        beta1, beta2, wd, eps = h["beta1"], h["beta2"], h["weight_decay"], h["eps"]
        mem, m1, m2 = state.mem[rows], state.exp_avg[rows], state.exp_avg_sq[rows]
        t = (state.opt_steps[rows] + 1).to(mem.dtype).view(-1, 1, 1)
        lr = scheduled_lr(h["lr"], h["warmup"], h["decay_steps"], h["final_lr_ratio"],
                          t) * lr_scale
        d = mem.shape[-1]
        if rule == "lion":
            step = torch.sign(beta1 * m1 + (1 - beta1) * grad)
            m1_new, m2_new = 0.99 * m1 + 0.01 * grad, m2
        elif rule == "normgd":     # heavy-ball momentum on the normalized gradient
            m1_new, m2_new = beta1 * m1 + _unit(grad), m2
            step = _unit(m1_new) * d ** 0.5
        elif rule == "adamnorm":   # Adam direction, step rescaled to norm lr * sqrt(d)
            m1_new = torch.lerp(m1, grad, 1 - beta1)
            m2_new = m2 * beta2 + (1 - beta2) * grad * grad
            u = (m1_new / (1 - beta1 ** t)) / ((m2_new / (1 - beta2 ** t)).sqrt() + eps)
            step = _unit(u) * d ** 0.5
        else:                      # lamb, relgd: step norm = eta * schedule * ||mem||
            if rule == "lamb":
                m1_new = torch.lerp(m1, grad, 1 - beta1)
                m2_new = m2 * beta2 + (1 - beta2) * grad * grad
                u = (m1_new / (1 - beta1 ** t)) / ((m2_new / (1 - beta2 ** t)).sqrt() + eps)
            else:
                m1_new, m2_new = beta1 * m1 + _unit(grad), m2
                u = m1_new
            ratio = (mem.norm(dim=(1, 2), keepdim=True)
                     / u.norm(dim=(1, 2), keepdim=True).clamp(min=1e-30))
            schedule = lr / h["lr"] if decay else 1.0
            step = u * ratio * schedule * eta
            lr = torch.ones_like(lr)
            wd = wd * wd_scale
        mem_new = mem * (1 - lr * wd) - lr * step
        state.mem[rows] = torch.where(a, mem_new, mem)
        state.exp_avg[rows] = torch.where(a, m1_new, m1)
        state.exp_avg_sq[rows] = torch.where(a, m2_new, m2)
    return update


def main(args):
    lm = load_model(args.model)
    texts = _probe.bench_passages(lm.tokenizer, args.file, args.length, args.texts, args.seed)
    cap = args.steps
    for rule in args.rules:
        hooks = Hooks() if rule == "adam" else Hooks(
            update=make_rule(rule, args.lr_scale, args.eta, bool(args.decay), args.wd))
        t0 = time.perf_counter()
        res = compress(texts, model=lm, preset="paper", max_steps=cap,
                       patience=cap, hooks=hooks, **BEFORE_LAMB)
        st = [r.steps if r.accuracy == 1.0 else cap for r in res]
        print(rule, args.lr_scale, f"eta={args.eta} decay={args.decay} wd={args.wd}",
              f"{time.perf_counter() - t0:.0f}s lossless {sum(r.accuracy == 1.0 for r in res)}/"
              f"{len(res)} median {statistics.median(st)}",
              st, [round(r.accuracy, 2) for r in res], "exact", sum(r.exact for r in res),
              "norms", [round(r.mem.norm().item(), 1) for r in res], flush=True)


if __name__ == "__main__":
    p = _probe.parser(__doc__, "bench")
    p.add_argument("rules", nargs="+", choices=RULES, metavar="rule",
                   help=f"one or more of {', '.join(RULES)}")
    p.add_argument("--lr-scale", type=float, default=1.0,
                   help="multiplies the scheduled lr (default %(default)s)")
    p.add_argument("--eta", type=float, default=0.1, help="lamb, relgd (default %(default)s)")
    p.add_argument("--decay", type=int, choices=(0, 1), default=1,
                   help="lamb, relgd: 1 follows the lr schedule (default %(default)s)")
    p.add_argument("--wd", type=float, default=1.0,
                   help="lamb, relgd: multiple of the weight decay (default %(default)s)")
    p.add_argument("--texts", type=int, default=8, help="passages (default %(default)s)")
    p.add_argument("--length", type=int, default=16, help="tokens each (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="of the passages (default %(default)s)")
    p.add_argument("--steps", type=int, default=300,
                   help="max_steps and patience (default %(default)s)")
    _probe.run(main, p.parse_args())
