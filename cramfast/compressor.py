"""Batched cramming: many texts, each with its own mem vectors, AdamW state and stop rule,
optimized together in one forward/backward of a frozen LM.

The loop, top to bottom:
  compress(texts) / compress_iter tokenize + validate everything first (bad input costs nothing)
  -> _run(jobs)                   the scheduler (csrc/) plans which attempts occupy which slots
                                  (one attempt per text, more in idle slots: _fill_idle_slots)
     -> SlotState.start(...)      refilled slots get a fresh seeded mem and fresh AdamW moments
     -> _step(...) x sync_every   forward (ops.mem_embed -> backbone -> ops.linear_cross_entropy),
                                  stop rule and per-slot AdamW, all on the device, no host sync
     -> scheduler.report(...)     the k evaluations' correct-counts; finished attempts free
                                  slots; a text ends with its first lossless attempt
                                  (_attempt_finished cancels the others) or its last one
  -> _finish(...)                 metrics with and without mem, greedy decode check, per batch
                                  of jobs finished at the same sync

Stop rule (evaluation s = number of updates applied; the scheduler applies the same rule and
the two are cross-checked): keep the best accuracy and the mem that reached it *before* the
update that follows; stop if every token is right ("lossless"), if s - best_step >= patience
("stalled"), or if s >= max_steps ("max_steps"). A non-finite loss stops that text alone.
"""
from __future__ import annotations

import hashlib
import time
import warnings
from dataclasses import asdict, dataclass, field, replace

import torch

from cramfast import ops, presets
from cramfast.errors import CramfastError
from cramfast.metrics import CompressionResult, make_result
from cramfast.models import LoadedModel, load_model
from cramfast.scheduler import FAILED_ON_DEVICE, Scheduler

REASONS = {1: "lossless", 2: "stalled", 3: "max_steps", 4: "nonfinite"}
INITS = ("random", "text_mean")


@dataclass
class OptimSettings:
    """The published settings by default (Kuratov et al. 2025); compress() starts from the
    'fast' preset unless told otherwise (presets.py)."""
    # "adamw" (the paper's) or "lamb": AdamW's moments, but each mem vector's step (plus weight
    # decay) rescaled to lr * ||mem vector|| (LAMB's trust ratio, You et al. 2019), so lr is a
    # fraction of the vector's norm. Why it helps here: a mem vector enters every layer through
    # an RMSNorm and gets lossless at a norm of tens to thousands (init: ~3), where a fixed AdamW
    # step is a small relative change; LAMB's steps grow with the norm (docs/study.md).
    optimizer: str = "adamw"
    lr: float = 1e-2
    lr_std: float = 0.0           # > 0 (adamw only): lr = lr_std * std(embedding matrix), per model
    beta1: float = 0.9
    beta2: float = 0.9
    weight_decay: float = 0.01
    eps: float = 1e-8
    max_steps: int = 5000
    patience: int = 2000
    init_scale: float = 1.0       # mem init = randn * init_scale * std(embedding matrix)
    # "random": the paper's init above. "text_mean": the first attempt starts from the mean of
    # the text's input embeddings (mem vector j: of the j-th of m contiguous chunks), as a
    # direction, at the norm the random init has on average (init_scale * std(E) * sqrt(d));
    # restarts and parallel attempts start halfway between that and a seeded random direction
    # (seeded_start; so the seed picks only those). Why: the LM reads a mem vector mostly by
    # its direction (an RMSNorm comes first), and the text's own mean embedding already points
    # towards its tokens, where a random direction points nowhere (docs/study.md, "Starting
    # from the text").
    init: str = "random"
    # learning-rate schedule, counted from each (re)start: linear warm-up over `warmup` steps,
    # then cosine decay to lr * final_lr_ratio over `decay_steps` (0: constant lr)
    warmup: int = 0
    decay_steps: int = 0
    # > 0: the decay grows with the text, round(decay_steps_per_token * (N - 1)) steps for a
    # text of N tokens, in place of decay_steps (a short text is solved before a long decay ends)
    decay_steps_per_token: float = 0.0
    final_lr_ratio: float = 0.1
    # the objective: the mean over the text's positions of (1 - p_target) ** focal_gamma * CE,
    # the weight held constant in the gradient, so positions the LM already predicts with
    # confidence give way to those it does not (0: the paper's mean CE). Lossless still means
    # argmax accuracy 1.0, and every reported CE is the plain one.
    focal_gamma: float = 0.0
    # stall handling: when an attempt's accuracy has not improved for `stall_steps` steps
    # (0: off), start a new attempt with fresh moments: "redraw" a new seeded init, or
    # "perturb" the best mem so far by randn * restart_noise * std(E) (an absolute noise: small
    # beside a mem that LAMB has grown); at most max_restarts.
    # The stop rule (best mem, patience, max_steps) runs over all attempts together.
    stall_steps: int = 0
    # > 0: the trigger grows with the text, round(stall_steps_per_token * (N - 1)) steps for a
    # text of N tokens, in place of stall_steps (a long text improves slowly between gains)
    stall_steps_per_token: float = 0.0
    restart: str = "redraw"
    restart_noise: float = 0.5
    max_restarts: int = 8
    # parallel attempts: when nothing is queued and fewer than `fill_slots` slots are busy, the
    # idle slots run extra attempts of running texts (other seeded inits, within what is left
    # of the text's max_steps); a text ends with its first lossless attempt (0: off). Idle
    # slots are nearly free where a small batch is bound by reading the weights.
    fill_slots: int = 0
    sync_every: int = 16          # evaluations between host syncs (stop rules run on device)
    # on CUDA with the Triton backend, replay each batch shape's step as a CUDA graph (the same
    # kernels on the same memory, so the same results; off: launch every kernel eagerly)
    cuda_graphs: bool = True
    max_slots: int = 32           # texts optimized at once
    token_budget: int = 16384     # sum over slots of (padded length + n_mem) per step
    policy: str = "bucketed"      # scheduler fill policy: fifo | bucketed

    def __post_init__(self):
        if self.lr <= 0 or self.lr_std < 0 or self.max_steps < 0 or self.patience < 1 or self.sync_every < 1:
            raise CramfastError("lr must be > 0, lr_std >= 0, max_steps >= 0, patience >= 1, "
                                "sync_every >= 1")
        if min(self.warmup, self.decay_steps, self.decay_steps_per_token, self.stall_steps,
               self.stall_steps_per_token, self.max_restarts, self.fill_slots) < 0:
            raise CramfastError("warmup, decay_steps(_per_token), stall_steps(_per_token), "
                                "max_restarts and fill_slots must be >= 0")
        if self.optimizer not in ("adamw", "lamb"):
            raise CramfastError(f"optimizer must be 'adamw' or 'lamb', got {self.optimizer!r}")
        if self.optimizer == "lamb" and self.lr_std > 0:
            raise CramfastError("lr_std applies to adamw only: lamb's lr is already relative "
                                "(a fraction of the mem vector's norm); give lr")
        if self.init not in INITS or self.init_scale <= 0:
            raise CramfastError(f"init must be one of {', '.join(INITS)} and init_scale > 0, "
                                f"got {self.init!r}, {self.init_scale}")
        if self.restart not in ("redraw", "perturb"):
            raise CramfastError(f"restart must be 'redraw' or 'perturb', got {self.restart!r}")

    def to_dict(self):
        return asdict(self)

    def for_model(self, lm: LoadedModel) -> "OptimSettings":
        """lr_std resolved into lr for this model (both are kept in the recorded settings)."""
        if self.lr_std == 0:
            return self
        return replace(self, lr=self.lr_std * lm.embedding_std())

    def for_text(self, n_tokens: int) -> "OptimSettings":
        """The per-token settings (stall_steps_per_token, decay_steps_per_token) resolved into
        stall_steps and decay_steps for a text of ``n_tokens`` tokens (both forms are kept in
        the recorded settings)."""
        per_token = {absolute: getattr(self, relative) for absolute, relative
                     in presets.RELATIVE.items() if relative.endswith("_per_token")}
        resolved = {absolute: max(1, round(k * (n_tokens - 1)))
                    for absolute, k in per_token.items() if k > 0}
        return replace(self, **resolved) if resolved else self


@dataclass
class Job:
    index: int
    token_ids: list[int]
    init_mem: torch.Tensor          # [m, d], float
    settings: OptimSettings
    restart_draws: torch.Tensor | None = None   # [max_restarts, m, d] seeded starts
    seed: int = 0
    started: float = 0.0
    first_evaluation: int = 0       # the scheduler's evaluation count when it started
    attempts: int = 0               # attempts started (more than 1 only with fill_slots)
    outcomes: list = field(default_factory=list)   # one dict per finished attempt
    result: dict = field(default_factory=dict)


@dataclass
class Attempt:
    """One optimization of a text in one slot: attempt 0 from the text's own seeded init,
    attempt k >= 1 (parallel attempts, fill_slots) from the k-th other seeded init."""
    job: Job
    number: int
    init_mem: torch.Tensor
    restart_draws: torch.Tensor | None
    settings: OptimSettings


# ---------------------------------------------------------------------------------------------
# public entry


def compress(texts, model=None, n_mem: int = 1, max_length: int | None = None, seed: int = 0,
             backend: str | None = None, preset: str = "fast", per_text: list[dict] | None = None,
             init_mems=None, **optim) -> list[CompressionResult]:
    """Cram each text (str or list of token ids) into ``n_mem`` vectors of the frozen ``model``.
    ``preset`` names the optimization settings (presets.py); ``optim`` overrides OptimSettings
    fields for all texts, ``per_text`` (one dict per text) for single texts: every setting in
    PER_SLOT (lr, betas, schedule, stall restarts, budgets, ...) may differ between texts of one
    batch. ``init_mems`` (one [n_mem, d] tensor or None per text) starts texts from given
    vectors instead of the seeded random init (warm starts; parallel attempts beyond the first
    start from seeded inits). Results come back in input order."""
    results = dict(compress_iter(texts, model, n_mem, max_length, seed, backend, preset, per_text,
                                 init_mems, **optim))
    return [results[i] for i in range(len(results))]


def compress_iter(texts, model=None, n_mem: int = 1, max_length: int | None = None, seed: int = 0,
                  backend: str | None = None, preset: str = "fast",
                  per_text: list[dict] | None = None, init_mems=None, **optim):
    """Like ``compress``, but yields (input index, result) as soon as each text finishes, so a
    caller can store it at once. Every text is tokenized and checked before any work starts."""
    lm = load_model(model)
    settings = OptimSettings(**presets.preset(preset, **optim))
    if isinstance(texts, (str, bytes)) or (texts and isinstance(texts[0], int)):
        texts = [texts]
    if not texts:
        raise CramfastError("no texts to compress")
    token_lists = [tokenize(lm, t, max_length, n_mem) for t in texts]
    job_settings = [s.for_model(lm).for_text(len(ids)) for s, ids in
                    zip(_per_text_settings(settings, per_text, len(texts)), token_lists)]
    starts = _start_mems(lm, init_mems, len(texts), n_mem)
    jobs = [Job(i, ids, start if start is not None else
                init_mem(lm, ids, n_mem, seed, s.init_scale, kind=s.init), s,
                restart_draws(lm, ids, n_mem, seed, s), seed)
            for i, (ids, s, start) in enumerate(zip(token_lists, job_settings, starts))]
    for finished in _run(lm, jobs, n_mem, settings, backend):
        for job, result in zip(finished, _finish(lm, finished, n_mem, seed, backend)):
            yield job.index, result


def _one_per_text(name: str, values, n_texts: int) -> bool:
    """False if ``values`` is None; an error unless it has one entry per text."""
    if values is not None and len(values) != n_texts:
        raise CramfastError(f"{name} has {len(values)} entries for {n_texts} texts")
    return values is not None


def _start_mems(lm, init_mems, n_texts, n_mem):
    if not _one_per_text("init_mems", init_mems, n_texts):
        return [None] * n_texts
    out = []
    for mem in init_mems:
        if mem is not None:
            mem = torch.as_tensor(mem).detach().to("cpu", mem_dtype(lm))
            if tuple(mem.shape) != (n_mem, lm.hidden_size):
                raise CramfastError(f"init mem of shape {list(mem.shape)}; expected "
                                    f"[{n_mem}, {lm.hidden_size}]")
        out.append(mem)
    return out


# every setting that changes a text's result; each text of a batch may carry its own
PER_SLOT = ("optimizer", "lr", "lr_std", "beta1", "beta2", "weight_decay", "eps", "init",
            "init_scale", "max_steps", "patience", "warmup", "decay_steps",
            "decay_steps_per_token", "final_lr_ratio", "focal_gamma", "stall_steps",
            "stall_steps_per_token", "restart", "restart_noise", "max_restarts")
# every setting that changes a text's result: the per-text ones and the batch's fill_slots
RESULT_SETTINGS = PER_SLOT + ("fill_slots",)


def _per_text_settings(base: OptimSettings, per_text, n_texts) -> list[OptimSettings]:
    if not _one_per_text("per_text", per_text, n_texts):
        return [base] * n_texts
    out = []
    for overrides in per_text:
        unknown = set(overrides) - set(PER_SLOT)
        if unknown:
            raise CramfastError(f"per_text settings {sorted(unknown)} cannot differ within a "
                                f"batch; per-text keys: {', '.join(PER_SLOT)}")
        out.append(OptimSettings(**presets.with_overrides(base.to_dict(), overrides)))
    return out


def tokenize(lm: LoadedModel, text, max_length: int | None, n_mem: int) -> list[int]:
    """Token ids of one text as crammed: the tokenizer's default encoding (special tokens
    included, e.g. a BOS where the tokenizer adds one), cut to ``max_length``."""
    if n_mem < 1:
        raise CramfastError(f"n_mem must be >= 1, got {n_mem}")
    if isinstance(text, str):
        if not text.strip():
            raise CramfastError("empty text: nothing to compress")
        ids = lm.tokenizer(text)["input_ids"]
    else:
        ids = [int(t) for t in text]
    if max_length is not None:
        ids = ids[:max_length]
    if len(ids) < 2:
        raise CramfastError(f"text has {len(ids)} token(s); at least 2 are needed "
                            "(the first is given, the rest are predicted)")
    limit = lm.max_positions
    if limit is not None and len(ids) + n_mem > limit:
        raise CramfastError(f"text too long: {len(ids)} tokens + {n_mem} mem > the model's "
                            f"context of {limit}; use max_length")
    if max(ids) >= lm.vocab_size or min(ids) < 0:
        raise CramfastError(f"token id out of the model's vocabulary (size {lm.vocab_size})")
    return ids


def init_mem(lm: LoadedModel, ids: list[int], n_mem: int, seed: int, scale: float,
             attempt: int = 0, kind: str = "random") -> torch.Tensor:
    """randn(m, d) * scale * std(E), seeded by (seed, the text's tokens, the attempt number): a
    text gets the same init whatever batch, order or machine it is compressed in. With kind
    "text_mean", attempt 0 starts from the text's chunk means (text_mean_init) and later
    attempts from those mixed with their seeded draw (seeded_start)."""
    if kind == "text_mean" and attempt == 0:
        return text_mean_init(lm, ids, n_mem, scale)
    return seeded_start(lm, ids, n_mem, _stream(seed, attempt), scale, kind)


def text_mean_init(lm: LoadedModel, ids: list[int], n_mem: int, scale: float) -> torch.Tensor:
    """Mem vector j: the mean input embedding of the j-th of n_mem contiguous chunks of the
    text (the whole text where a chunk is empty), rescaled to scale * std(E) * sqrt(d), the
    random init's mean norm. Computed in fp64 on the host, so it does not depend on the
    device."""
    emb = lm.embedding.detach()[torch.tensor(ids, device=lm.device)].to("cpu", torch.float64)
    chunks = [c if len(c) else emb for c in torch.tensor_split(emb, n_mem)]
    means = torch.stack([c.mean(dim=0) for c in chunks])
    return (_unit(means) * scale * lm.embedding_std() * lm.hidden_size ** 0.5).to(mem_dtype(lm))


def seeded_start(lm: LoadedModel, ids: list[int], n_mem: int, stream: str, scale: float,
                 kind: str = "random") -> torch.Tensor:
    """A seeded start for a new attempt or a redraw restart: randn * scale * std(E); for
    "text_mean", the unit text mean plus that draw's unit vector (45 degrees from each, as
    the draw is near-orthogonal in d dimensions), at text_mean_init's norm, so a new attempt
    explores away from a start that stalled without losing what the text's mean points to."""
    noise = _seeded_randn(stream, ids, n_mem, lm.hidden_size)
    if kind != "text_mean":
        return (noise * scale * lm.embedding_std()).to(mem_dtype(lm))
    mean = _unit(text_mean_init(lm, ids, n_mem, 1.0).double())
    return (_unit(mean + _unit(noise)) * scale * lm.embedding_std()
            * lm.hidden_size ** 0.5).to(mem_dtype(lm))


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp(min=1e-30)


def _stream(seed: int, attempt: int) -> str:
    return f"{seed}" if attempt == 0 else f"{seed}:attempt{attempt}"


def restart_draws(lm: LoadedModel, ids: list[int], n_mem: int, seed: int,
                  settings: OptimSettings, attempt: int = 0) -> torch.Tensor | None:
    """The stall restarts' starting points, drawn up front (seeded like init_mem, one stream
    per restart) so restarts happen on the device without a host sync: [max_restarts, m, d],
    each a seeded_start for "redraw", randn * restart_noise * std(E) for "perturb"."""
    if settings.stall_steps == 0 or settings.max_restarts == 0:
        return None
    streams = [f"{_stream(seed, attempt)}:restart{r}" for r in range(settings.max_restarts)]
    if settings.restart == "redraw":
        return torch.stack([seeded_start(lm, ids, n_mem, stream, settings.init_scale,
                                         settings.init) for stream in streams])
    draws = torch.stack([_seeded_randn(stream, ids, n_mem, lm.hidden_size) for stream in streams])
    return (draws * settings.restart_noise * lm.embedding_std()).to(mem_dtype(lm))


def _seeded_randn(stream: str, ids: list[int], n_mem: int, d: int) -> torch.Tensor:
    digest = hashlib.sha256(f"{stream}:{','.join(map(str, ids))}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return torch.randn(n_mem, d, generator=gen, dtype=torch.float64)


def mem_dtype(lm: LoadedModel) -> torch.dtype:
    # mem is optimized in fp32 even for bf16 models (fp64 only for fp64 test models).
    return torch.float64 if lm.dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------------------------
# the forward pass shared by training and evaluation


def predict(lm: LoadedModel, ids: torch.Tensor, targets: torch.Tensor, mem: torch.Tensor | None,
            backend: str | None):
    """Per-position CE and argmax of the frozen LM on [mem ; ids] for the text positions 2..T.

    ids [B, T] right-padded, targets [B, T-1] (IGNORE_INDEX where not scored), mem [B, m, d] or
    None. Right padding needs no attention mask: causal attention never lets a real position
    see the padding after it. Returns (loss [B, T-1] fp32, argmax [B, T-1])."""
    B, T = ids.shape
    m = 0 if mem is None else mem.shape[1]
    if mem is None:
        x = torch.nn.functional.embedding(ids, lm.embedding)
    else:
        x = ops.mem_embed(ids, lm.embedding, mem, backend=backend)
    hidden = lm.backbone(inputs_embeds=x, use_cache=False)[0]
    hidden = hidden[:, m:m + T - 1].reshape(B * (T - 1), -1)
    head = lm.head
    loss, argmax = ops.linear_cross_entropy(hidden, head.weight, targets.reshape(-1), head.bias,
                                            backend=backend)
    return loss.view(B, T - 1), argmax.view(B, T - 1)


def pad_batch(token_lists: list[list[int]], length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [B, length] right-padded with 0, targets [B, length-1] with IGNORE_INDEX past each text."""
    ids = torch.zeros(len(token_lists), length, dtype=torch.long)
    targets = torch.full((len(token_lists), length - 1), ops.IGNORE_INDEX, dtype=torch.long)
    for row, toks in enumerate(token_lists):
        ids[row, :len(toks)] = torch.tensor(toks)
        targets[row, :len(toks) - 1] = torch.tensor(toks[1:])
    return ids.to(device), targets.to(device)


# ---------------------------------------------------------------------------------------------
# per-slot optimizer state


class SlotState:
    """Everything one slot carries, as [S, ...] tensors on the device: the mem being optimized,
    its AdamW moments, step counts and hyperparameters (each slot may have its own), the best
    mem so far, the stop bookkeeping and the current attempt's (for stall restarts)."""

    HYPER = ("lr", "beta1", "beta2", "weight_decay", "eps", "warmup", "decay_steps",
             "final_lr_ratio", "restart_keep", "focal_gamma", "lamb")
    COUNTS = ("steps", "opt_steps", "best_correct", "best_step", "try_best_correct",
              "try_best_step", "n_pred", "reason", "max_steps", "patience", "stall_steps",
              "restarts", "max_restarts")

    def __init__(self, n_slots: int, n_mem: int, d: int, dtype, device, n_draws: int = 0):
        z = lambda *s, dt=dtype: torch.zeros(*s, dtype=dt, device=device)
        self.mem, self.exp_avg, self.exp_avg_sq, self.best_mem = (z(n_slots, n_mem, d) for _ in range(4))
        self.draws = z(n_slots, n_draws, n_mem, d)
        self.hyper = z(n_slots, len(self.HYPER))
        for name in self.COUNTS:
            setattr(self, name, z(n_slots, dt=torch.long))
        self.active = z(n_slots, dt=torch.bool)

    def start(self, slot: int, mem: torch.Tensor, n_pred: int, settings: OptimSettings,
              draws: torch.Tensor | None = None):
        self.mem[slot] = mem
        self.best_mem[slot] = mem
        for t in (self.exp_avg, self.exp_avg_sq, self.steps, self.opt_steps, self.best_step,
                  self.try_best_step, self.reason, self.restarts):
            t[slot] = 0
        self.best_correct[slot] = -1
        self.try_best_correct[slot] = -1
        self.n_pred[slot] = n_pred
        values = dict(settings.to_dict(), restart_keep=float(settings.restart == "perturb"),
                      lamb=float(settings.optimizer == "lamb"))
        self.hyper[slot] = torch.tensor([values[k] for k in self.HYPER], dtype=self.hyper.dtype)
        for name in ("max_steps", "patience", "stall_steps"):
            getattr(self, name)[slot] = getattr(settings, name)
        n_draws = 0 if draws is None else len(draws)
        self.max_restarts[slot] = min(n_draws, settings.max_restarts)
        if n_draws:
            self.draws[slot, :n_draws] = draws
        self.active[slot] = True


def scheduled_lr(lr, warmup, decay_steps, final_ratio, t):
    """lr at AdamW step t (1-based, counted from the attempt's start): linear warm-up, then a
    cosine from lr to lr * final_ratio over decay_steps, constant after (and when 0)."""
    warm = torch.where(warmup > 0, (t / warmup.clamp(min=1)).clamp(max=1), torch.ones_like(t))
    progress = ((t - warmup) / decay_steps.clamp(min=1)).clamp(0, 1)
    cosine = final_ratio + (1 - final_ratio) * 0.5 * (1 + torch.cos(torch.pi * progress))
    return lr * warm * torch.where(decay_steps > 0, cosine, torch.ones_like(t))


def mem_update(state: SlotState, rows: torch.Tensor, grad: torch.Tensor, active: torch.Tensor):
    """torch.optim.AdamW's update (or LAMB's, per slot), vectorized over slots, each with its own
    hyperparameters, lr schedule and step count (so a refilled or restarted slot starts its bias
    correction afresh), applied where ``active``."""
    a = active.view(-1, 1, 1)
    hyper = dict(zip(SlotState.HYPER, state.hyper[rows].T.reshape(len(SlotState.HYPER), -1, 1, 1)))
    beta1, beta2, wd = hyper["beta1"], hyper["beta2"], hyper["weight_decay"]
    mem, m1, m2 = state.mem[rows], state.exp_avg[rows], state.exp_avg_sq[rows]
    t = (state.opt_steps[rows] + 1).to(mem.dtype).view(-1, 1, 1)
    lr = scheduled_lr(hyper["lr"], hyper["warmup"], hyper["decay_steps"],
                      hyper["final_lr_ratio"], t)
    m1_new = torch.lerp(m1, grad, 1 - beta1)
    m2_new = m2 * beta2 + (1 - beta2) * grad * grad
    adam = (m1_new / (1 - beta1 ** t)) / (m2_new.sqrt() / (1 - beta2 ** t).sqrt() + hyper["eps"])
    adamw_mem = mem * (1 - lr * wd) - lr * adam
    lamb_step = adam + wd * mem
    lamb_mem = mem - lr * trust_ratio(mem, lamb_step) * lamb_step
    mem_new = torch.where(hyper["lamb"] > 0, lamb_mem, adamw_mem)
    state.mem[rows] = torch.where(a, mem_new, mem)
    state.exp_avg[rows] = torch.where(a, m1_new, m1)
    state.exp_avg_sq[rows] = torch.where(a, m2_new, m2)
    state.steps[rows] = torch.where(active, state.steps[rows] + 1, state.steps[rows])
    state.opt_steps[rows] = torch.where(active, state.opt_steps[rows] + 1, state.opt_steps[rows])


def trust_ratio(mem: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """||mem|| / ||step|| per mem vector (1 where either norm is 0, as in LAMB)."""
    mem_norm = torch.linalg.vector_norm(mem, dim=-1, keepdim=True)
    step_norm = torch.linalg.vector_norm(step, dim=-1, keepdim=True)
    both = (mem_norm > 0) & (step_norm > 0)
    return torch.where(both, mem_norm / torch.where(both, step_norm, 1), 1)


def restart_stalled(state: SlotState, rows: torch.Tensor, stalled: torch.Tensor):
    """Start a new attempt where ``stalled``: mem = keep * best mem + the next seeded draw,
    fresh moments and schedule. The stop bookkeeping (best mem, patience) carries over."""
    if state.draws.shape[1] == 0:
        return
    s = stalled.view(-1, 1, 1)
    draw = state.draws[rows, state.restarts[rows].clamp(max=state.draws.shape[1] - 1)]
    keep = state.hyper[rows, SlotState.HYPER.index("restart_keep")].view(-1, 1, 1)
    state.mem[rows] = torch.where(s, keep * state.best_mem[rows] + draw, state.mem[rows])
    for t in (state.exp_avg, state.exp_avg_sq):
        t[rows] = torch.where(s, 0, t[rows])
    state.opt_steps[rows] = torch.where(stalled, 0, state.opt_steps[rows])
    state.restarts[rows] = state.restarts[rows] + stalled.long()
    state.try_best_correct[rows] = torch.where(stalled, -1, state.try_best_correct[rows])
    state.try_best_step[rows] = torch.where(stalled, state.steps[rows], state.try_best_step[rows])


def _step(lm, state: SlotState, rows, ids, targets, backend):
    """One evaluation + update for the slots in ``rows``; returns their correct-counts."""
    active = state.active[rows]
    mem = state.mem[rows].clone().requires_grad_(True)
    scored = torch.where(active[:, None], targets, torch.full_like(targets, ops.IGNORE_INDEX))
    loss, argmax = predict(lm, ids, scored, mem, backend)
    n_pred = state.n_pred[rows]
    gamma = state.hyper[rows, SlotState.HYPER.index("focal_gamma")].view(-1, 1)
    per_text = (loss * focal_weights(loss, gamma)).sum(dim=1) / n_pred
    per_text.sum().backward()                      # texts' gradients do not mix: one mem each
    correct = ((argmax == scored) & (scored != ops.IGNORE_INDEX)).sum(dim=1)
    stalled = _apply_stop_rule(state, rows, active, correct, per_text.detach(), mem.detach())
    mem_update(state, rows, mem.grad.to(state.mem.dtype), state.active[rows])
    restart_stalled(state, rows, stalled)
    failed = active & (state.reason[rows] == 4)
    return torch.where(failed, FAILED_ON_DEVICE, torch.where(active, correct, -1))


def focal_weights(loss: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """(1 - p_target) ** gamma per position, p_target = exp(-CE), detached; exactly 1 where
    gamma is 0 (x ** 0 is 1 for every x, 0 and NaN included: the paper's objective)."""
    return (-torch.expm1(-loss.detach())).clamp(min=0) ** gamma


def _step_live(lm, state: SlotState, rows, ids, targets, backend):
    """_step, where on a CPU the slots that stopped since the last sync leave the batch at once:
    there, reading the device's active mask costs nothing and a row costs its share of the
    step. (On a GPU that read would be a host sync per step, and a stopped row is nearly free.)
    Stopped rows report -1 either way, as _step does for them."""
    live = state.active[rows]
    if lm.device.type != "cpu" or bool(live.all()):
        return _step(lm, state, rows, ids, targets, backend)
    out = torch.full((len(rows),), -1, dtype=torch.long)
    if bool(live.any()):
        out[live] = _step(lm, state, rows[live], ids[live], targets[live], backend)
    return out


class EagerSteps:
    """k steps of the slots in ``rows``, each kernel launched from Python."""

    def __init__(self, lm, state: SlotState, backend):
        self.lm, self.state, self.backend = lm, state, backend

    def steps(self, rows, ids, targets, k: int) -> list[torch.Tensor]:
        return [_step_live(self.lm, self.state, rows, ids, targets, self.backend)
                for _ in range(k)]


def use_cuda_graphs(lm, settings: OptimSettings, backend) -> bool:
    """Graphs need a step without host syncs: on CUDA, the Triton ops (the torch twin of the
    fused CE picks its rows with nonzero(), a sync)."""
    return (settings.cuda_graphs and lm.device.type == "cuda"
            and ops.backend_for(lm.head.weight, backend) == "triton"
            and ops.backend_for(lm.embedding, backend) == "triton")


class GraphedSteps(EagerSteps):
    """_step captured once per batch shape as a CUDA graph and replayed. A step of a small
    model is over a thousand kernel launches; on the H200 host measured here that took about
    100 ms a step for SmolLM2-135M whatever the batch below ~128 texts (benchmarks/
    gpu_throughput.py), far more than the arithmetic. A replay launches the same kernels on
    the same memory: results equal the eager step's.

    A new shape's first steps run eagerly (on a side stream, as capture requires): they compile
    and autotune the kernels and let autograd allocate, and they are real steps. The graphs
    share one memory pool; each replay's output is copied out before the next replay."""
    WARMUP = 2
    MAX_GRAPHS = 16

    def __init__(self, lm, state: SlotState, backend):
        super().__init__(lm, state, backend)
        self.graphs: dict[tuple, tuple] = {}
        self.pool = torch.cuda.graph_pool_handle()

    def steps(self, rows, ids, targets, k: int) -> list[torch.Tensor]:
        key = (len(rows), ids.shape[1])
        out = []
        if key not in self.graphs:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = super().steps(rows, ids, targets, min(k, self.WARMUP))
            torch.cuda.current_stream().wait_stream(side)
            if len(out) == k:
                return out
            try:
                self._capture(key, rows, ids, targets)
            except RuntimeError as exc:  # an op that syncs or cannot be captured: run eagerly
                warnings.warn(f"cramfast: CUDA graph capture failed ({exc}".splitlines()[0]
                              + "); stepping eagerly", stacklevel=2)
                self.steps = super().steps
                return out + self.steps(rows, ids, targets, k - len(out))
        graph, static_in, static_out = self.graphs[key]
        for buffer, value in zip(static_in, (rows, ids, targets)):
            buffer.copy_(value)
        for _ in range(k - len(out)):
            graph.replay()
            out.append(static_out.clone())
        return out

    def _capture(self, key, rows, ids, targets):
        if len(self.graphs) >= self.MAX_GRAPHS:
            self.graphs.pop(next(iter(self.graphs)))
        static_in = (rows.clone(), ids.clone(), targets.clone())
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            static_out = _step(self.lm, self.state, *static_in, self.backend)
        self.graphs[key] = (graph, static_in, static_out)


def _apply_stop_rule(state, rows, active, correct, loss, mem):
    steps = state.steps[rows]
    improved = active & (correct > state.best_correct[rows])
    state.best_correct[rows] = torch.where(improved, correct, state.best_correct[rows])
    state.best_step[rows] = torch.where(improved, steps, state.best_step[rows])
    state.best_mem[rows] = torch.where(improved.view(-1, 1, 1), mem, state.best_mem[rows])
    reason = torch.zeros_like(steps)
    reason = torch.where(steps >= state.max_steps[rows], 3, reason)
    reason = torch.where(steps - state.best_step[rows] >= state.patience[rows], 2, reason)
    reason = torch.where(correct == state.n_pred[rows], 1, reason)
    reason = torch.where(~torch.isfinite(loss), 4, reason)
    stop = active & (reason > 0)
    state.reason[rows] = torch.where(stop, reason, state.reason[rows])
    state.active[rows] = active & ~stop
    # the current attempt's own progress, for stall restarts
    tried = active & (correct > state.try_best_correct[rows])
    state.try_best_correct[rows] = torch.where(tried, correct, state.try_best_correct[rows])
    state.try_best_step[rows] = torch.where(tried, steps, state.try_best_step[rows])
    stall = state.stall_steps[rows]
    return (active & ~stop & (stall > 0) & (steps - state.try_best_step[rows] >= stall)
            & (state.restarts[rows] < state.max_restarts[rows]))


# ---------------------------------------------------------------------------------------------
# the scheduled loop


def _run(lm: LoadedModel, jobs: list[Job], n_mem: int, settings: OptimSettings, backend):
    """Drive the scheduler; yields the list of jobs finished at each sync. Each scheduler job
    is one Attempt: attempt 0 of text i has id i, parallel attempts ids from len(jobs) on."""
    budget = max(settings.token_budget, max(len(j.token_ids) for j in jobs) + n_mem)
    sched = Scheduler(settings.max_slots, budget, n_mem, settings.policy)
    attempts: dict[int, Attempt] = {}
    for job in jobs:
        _add_attempt(sched, attempts, job.index,
                     Attempt(job, 0, job.init_mem, job.restart_draws, job.settings))
    next_id = len(jobs)
    n_draws = max(j.settings.max_restarts if j.restart_draws is not None else 0 for j in jobs)
    state = SlotState(settings.max_slots, n_mem, lm.hidden_size, mem_dtype(lm), lm.device, n_draws)
    fill_width = min(settings.fill_slots, settings.max_slots)
    stepper = (GraphedSteps(lm, state, backend) if use_cuda_graphs(lm, settings, backend)
               else EagerSteps(lm, state, backend))
    while not sched.done():
        if sched.pending() == 0 and sched.running() < fill_width:
            next_id = _fill_idle_slots(lm, sched, attempts, fill_width, settings.sync_every,
                                       n_mem, next_id)
        plan = sched.plan()
        for slot in plan.new_slots:
            attempt = attempts[plan.slot_jobs[slot]]
            draws = None if attempt.restart_draws is None else attempt.restart_draws.to(lm.device)
            state.start(slot, attempt.init_mem.to(lm.device), len(attempt.job.token_ids) - 1,
                        attempt.settings, draws)
            if attempt.number == 0:
                attempt.job.started = time.perf_counter()
                attempt.job.first_evaluation = sched.evaluations()
        occupied = [s for s, j in enumerate(plan.slot_jobs) if j >= 0]
        rows = torch.tensor(occupied, device=lm.device)
        ids, targets = pad_batch([attempts[plan.slot_jobs[s]].job.token_ids for s in occupied],
                                 plan.padded_length, lm.device)
        history = torch.stack(stepper.steps(rows, ids, targets, settings.sync_every))
        report = torch.full((settings.sync_every, settings.max_slots), -1, dtype=torch.long)
        report[:, occupied] = history.cpu()        # the one host sync per sync_every steps
        done = [job for fin in sched.report(report.numpy())
                if (job := _attempt_finished(sched, attempts, fin, state)) is not None]
        if done:
            yield done


def _add_attempt(sched, attempts: dict, attempt_id: int, attempt: Attempt):
    s = attempt.settings
    sched.add_job(attempt_id, len(attempt.job.token_ids), s.max_steps, s.patience)
    attempts[attempt_id] = attempt
    attempt.job.attempts += 1


def _fill_idle_slots(lm, sched, attempts: dict, width: int, sync_every: int, n_mem: int,
                     next_id: int) -> int:
    """Queue parallel attempts of running texts until ``width`` slots would be busy: the
    text with the fewest attempts running goes first (then the lower index). An attempt gets
    what is left of its text's max_steps, so no text runs longer than without parallel
    attempts. Returns the next free attempt id."""
    for _ in range(width - sched.running()):
        running: dict[int, list[Attempt]] = {}
        for attempt in attempts.values():
            running.setdefault(attempt.job.index, []).append(attempt)
        steps_left = {i: group[0].job.settings.max_steps
                      - (sched.evaluations() - group[0].job.first_evaluation)
                      for i, group in running.items()}
        eligible = [i for i in running if steps_left[i] >= sync_every]
        if not eligible:
            break
        index = min(eligible, key=lambda i: (len(running[i]), i))
        job, left = running[index][0].job, steps_left[index]
        k = job.attempts
        s = replace(job.settings, max_steps=left)
        _add_attempt(sched, attempts, next_id, Attempt(
            job, k, init_mem(lm, job.token_ids, n_mem, job.seed, s.init_scale, k, s.init),
            restart_draws(lm, job.token_ids, n_mem, job.seed, s, k), s))
        next_id += 1
    return next_id


def _attempt_finished(sched, attempts: dict, fin, state: SlotState) -> Job | None:
    """Record a finished attempt; its text is done when it went lossless (the text's other
    attempts are cancelled) or when it was the text's last attempt running. Returns the text
    if done, with the best attempt's outcome as its result."""
    attempt = attempts.pop(fin.job_id, None)
    if attempt is None:                 # cancelled by a sibling that finished in this report
        return None
    job = attempt.job
    job.outcomes.append(_collect(attempt, fin, state))
    siblings = [i for i, a in attempts.items() if a.job is job]
    if fin.reason != "lossless" and siblings:
        return None
    for i in siblings:
        sched.cancel(i)
        del attempts[i]
    # lossless first, then the most tokens right, then the earlier attempt
    best = max(job.outcomes, key=lambda o: (o["stop_reason"] == "lossless", o["best_correct"],
                                            -o["attempt"]))
    job.result = dict({k: v for k, v in best.items() if k != "best_correct"},
                      seconds=time.perf_counter() - job.started, attempts=job.attempts)
    return job


def _collect(attempt: Attempt, fin, state: SlotState) -> dict:
    slot = fin.slot
    reason = REASONS.get(int(state.reason[slot]), "unknown")
    steps = int(state.steps[slot])
    expected = "failed" if reason == "nonfinite" else reason
    if expected != fin.reason or steps != fin.steps:
        raise RuntimeError(f"scheduler and device disagree on job {attempt.job.index} attempt "
                           f"{attempt.number}: {fin.reason}@{fin.steps} vs {reason}@{steps}")
    return dict(mem=state.best_mem[slot].detach().cpu().clone(), steps=steps,
                best_step=int(state.best_step[slot]), stop_reason=reason,
                restarts=int(state.restarts[slot]), attempt=attempt.number,
                best_correct=fin.best_correct)


# ---------------------------------------------------------------------------------------------
# after optimization: metrics and the greedy-decode check


@torch.inference_mode()
def evaluate(lm: LoadedModel, token_lists, mems: torch.Tensor | None, backend=None):
    """Summed CE (nats) and correct-count over positions 2..N, with ``mems`` [B, m, d] or none."""
    length = max(len(t) for t in token_lists)
    ids, targets = pad_batch(token_lists, length, lm.device)
    loss, argmax = predict(lm, ids, targets, None if mems is None else mems.to(lm.device), backend)
    correct = ((argmax == targets) & (targets != ops.IGNORE_INDEX)).sum(dim=1)
    return loss.double().sum(dim=1).cpu(), correct.cpu()


@torch.inference_mode()
def greedy_decode(lm: LoadedModel, mems: torch.Tensor, first_ids: list[int], n_new: int) -> list[list[int]]:
    """Greedy generation, KV-cached and batched, from [mem ; first token]: the first token is
    given by the protocol, every later one must come from the mem vectors."""
    mems = mems.to(lm.device, lm.dtype)
    first = torch.tensor(first_ids, device=lm.device)
    x = torch.cat([mems, lm.embedding[first][:, None]], dim=1)
    out = lm.model(inputs_embeds=x, use_cache=True)
    generated = []
    for i in range(n_new):
        token = out.logits[:, -1].argmax(dim=-1)
        generated.append(token)
        if i + 1 < n_new:
            out = lm.model(input_ids=token[:, None], cache=out.cache, use_cache=True)
    if not generated:
        return [[] for _ in first_ids]
    return torch.stack(generated, dim=1).tolist()


def _finish(lm, jobs: list[Job], n_mem, seed, backend) -> list[CompressionResult]:
    """Metrics with and without mem, and the greedy-decode check, for jobs finished together."""
    token_lists = [job.token_ids for job in jobs]
    mems = torch.stack([job.result["mem"] for job in jobs])
    ce_without, correct_without = evaluate(lm, token_lists, None, backend)
    ce_with, correct_with = evaluate(lm, token_lists, mems, backend)
    decoded = greedy_decode(lm, mems, [ids[0] for ids in token_lists],
                            max(len(ids) for ids in token_lists) - 1)
    return [make_result(
        token_ids=ids, n_mem=n_mem, model=lm.name, seed=seed, settings=job.settings.to_dict(),
        decoded_ids=out[:len(ids) - 1], ce_without_mem=float(ce_without[i]),
        ce_with_mem=float(ce_with[i]), correct_without_mem=int(correct_without[i]),
        correct_with_mem=int(correct_with[i]), text=lm.tokenizer.decode(ids), **job.result)
        for i, (job, ids, out) in enumerate(zip(jobs, token_lists, decoded))]
