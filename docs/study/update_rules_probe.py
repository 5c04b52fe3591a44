"""Update rules in place of AdamW, on the end-to-end benchmark's passages (L=16, seed 0): `fast`
as it stood before LAMB (lr = std(E), cosine to a tenth over 200 steps, focal 1), one attempt,
no restarts, CAP=300 steps. Run from the repository root:
    .venv/bin/python docs/study/update_rules_probe.py normgd          # or lion 0.3, adamnorm
    ETA=0.1 DECAY=1 WD=1 .venv/bin/python docs/study/update_rules_probe.py lamb   # or relgd
"lamb" here is the first form tried (weight decay as a separate 1 % shrink per step); the
shipped optimizer=lamb adds it to the step before the trust ratio, as LAMB does."""
import os, sys, time, statistics, torch
sys.path.insert(0, "benchmarks")
from _common import bench_texts
from cramfast import compress
from cramfast import compressor as C
from cramfast.models import load_model
L = int(os.environ.get("L", 16)); N = int(os.environ.get("N", 8)); CAP = int(os.environ.get("CAP", 300))
SEED = int(os.environ.get("SEED", 0))
VAR = sys.argv[1]; P = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
ETA = float(os.environ.get("ETA", 0.1)); DECAY = int(os.environ.get("DECAY", 1)); WD = float(os.environ.get("WD", 1))
lm = load_model()
texts = bench_texts(lm.tokenizer, L, N, seed=SEED)
orig = C.mem_update
def update(state, rows, grad, active):
    if VAR == "adam":
        return orig(state, rows, grad, active)
    a = active.view(-1, 1, 1)
    lr, beta1, beta2, wd, eps, warmup, decay, final, *_ = state.hyper[rows].T.reshape(len(C.SlotState.HYPER), -1, 1, 1)
    mem, m1, m2 = state.mem[rows], state.exp_avg[rows], state.exp_avg_sq[rows]
    t = (state.opt_steps[rows] + 1).to(mem.dtype).view(-1, 1, 1)
    lr = C.scheduled_lr(lr, warmup, decay, final, t) * P
    d = mem.shape[-1]
    if VAR == "lion":
        c = beta1 * m1 + (1 - beta1) * grad
        step = torch.sign(c)
        m1_new = 0.99 * m1 + 0.01 * grad; m2_new = m2
    elif VAR == "normgd":     # heavy-ball momentum on the normalized gradient; step norm lr*sqrt(d)
        gn = grad / grad.norm(dim=(1, 2), keepdim=True).clamp(min=1e-30)
        m1_new = beta1 * m1 + gn
        step = m1_new / m1_new.norm(dim=(1, 2), keepdim=True).clamp(min=1e-30) * d ** 0.5
        m2_new = m2
    elif VAR == "adamnorm":   # Adam direction, step rescaled to norm lr*sqrt(d)
        m1_new = torch.lerp(m1, grad, 1 - beta1)
        m2_new = m2 * beta2 + (1 - beta2) * grad * grad
        u = (m1_new / (1 - beta1 ** t)) / ((m2_new / (1 - beta2 ** t)).sqrt() + eps)
        step = u / u.norm(dim=(1, 2), keepdim=True).clamp(min=1e-30) * d ** 0.5
    elif VAR in ("lamb", "relgd"):   # step norm = ETA * schedule * ||mem||
        if VAR == "lamb":
            m1_new = torch.lerp(m1, grad, 1 - beta1)
            m2_new = m2 * beta2 + (1 - beta2) * grad * grad
            u = (m1_new / (1 - beta1 ** t)) / ((m2_new / (1 - beta2 ** t)).sqrt() + eps)
        else:
            gn = grad / grad.norm(dim=(1, 2), keepdim=True).clamp(min=1e-30)
            m1_new = beta1 * m1 + gn; m2_new = m2; u = m1_new
        ratio = mem.norm(dim=(1, 2), keepdim=True) / u.norm(dim=(1, 2), keepdim=True).clamp(min=1e-30)
        sched = (lr / state.hyper[rows, 0].view(-1, 1, 1)) if DECAY else 1.0
        step = u * ratio * sched * ETA
        lr = torch.ones_like(lr)
        wd = wd * WD
    mem_new = mem * (1 - lr * wd) - lr * step
    state.mem[rows] = torch.where(a, mem_new, mem)
    state.exp_avg[rows] = torch.where(a, m1_new, m1)
    state.exp_avg_sq[rows] = torch.where(a, m2_new, m2)
    state.steps[rows] = torch.where(active, state.steps[rows] + 1, state.steps[rows])
    state.opt_steps[rows] = torch.where(active, state.opt_steps[rows] + 1, state.opt_steps[rows])
C.mem_update = update
t0 = time.perf_counter()
res = compress(texts, model=lm, preset="fast", optimizer="adamw", lr_std=1.0, max_steps=CAP, patience=CAP, fill_slots=0, stall_steps=0)
st = [r.steps if r.accuracy == 1.0 else CAP for r in res]
print(VAR, P, f"eta={ETA} decay={DECAY} wd={WD}", f"{time.perf_counter()-t0:.0f}s lossless {sum(r.accuracy == 1.0 for r in res)}/{N} median {statistics.median(st)}",
      st, [round(r.accuracy, 2) for r in res], "exact", sum(r.exact for r in res), "norms", [round(r.mem.norm().item(), 1) for r in res], flush=True)
