"""The paper's cramming loop, one text at a time: the baseline cramfast is measured against.

A re-implementation of ``run_single_experiment`` + ``MemoryCell`` from the published code of
Kuratov et al. 2025 (arXiv:2502.13063, github.com/yurakuratov/hidden_capacity, train.py and
model.py), reduced to what costs time. What it reproduces, per text:

  * the model is loaded afresh with ``AutoModelForCausalLM.from_pretrained(path)`` for the text
    (``reload=True``; the original loads it twice per text: once for the no-mem loss/accuracy,
    once to train; ``loads_per_text`` reproduces that, default 2) — or loaded once and reused
    (``reload=False``), the cheapest thing a user of that code could do;
  * batch 1: one text, one [1, m, d] mem parameter, its own ``torch.optim.AdamW([mem], lr=1e-2,
    betas=(0.9, 0.9), weight_decay=0.01)``;
  * the forward of the whole HF model on ``inputs_embeds = cat([mem, embed(ids)])``, full
    vocabulary logits ``model(inputs_embeds=...).logits`` ([1, m+N, V], materialized),
    ``torch.nn.functional.cross_entropy`` averaged over the predicted positions;
  * a host sync every step: accuracy (and loss) read with ``.item()`` to drive the stop rule;
  * the stop rule: accuracy 1.0, or ``patience`` (2000) steps without a strictly better
    accuracy, or ``max_steps`` (5000; a parameter here for bounded runs);
  * fp32 on CPU (the original's ``torch.cuda.amp.autocast`` is a no-op there), bf16 autocast
    on CUDA.

Kept identical to cramfast, so that both solve the same problem and only speed differs:
  * the token ids (given, not re-tokenized) and the first-token-given convention: the logits
    at text positions 1..N-1 predict tokens 2..N; loss and accuracy over those N-1 positions
    (as the original's shift does);
  * the init: ``cramfast.engine.init_mem`` (randn * std(E), seeded per text) instead of the
    original's unseeded ``torch.randn``;
  * no ``output_hidden_states=True``, no tqdm, no pickling of results every text (costs of the
    original that are not cramming).

Original defects kept out, because they would change what is compared:
  * the original saves the "best" mem *after* ``opt.step()`` (the mem that follows the best
    one); here the mem that reached the best accuracy is kept, so its lossless rate can be
    checked (``PaperResult.accuracy`` is re-evaluated on the returned mem) like cramfast's;
  * the original applies one more update after reaching accuracy 1.0 before stopping; here the
    loop stops before that backward (one step fewer for the baseline, in its favour).

``steps`` counts updates applied, with cramfast's meaning: lossless at evaluation s (s updates
applied) reports s.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cramfast.engine import init_mem
from cramfast.models import LoadedModel


@dataclass
class PaperResult:
    token_ids: list[int]
    steps: int               # updates applied when it stopped
    best_step: int
    stop_reason: str         # lossless | stalled | max_steps
    best_accuracy: float     # the stop rule's best accuracy during optimization
    accuracy: float          # teacher-forced accuracy re-evaluated with the returned mem
    accuracy_without_mem: float
    seconds: float           # wall time for this text, loads included
    load_seconds: float      # of which model loads
    mem: torch.Tensor        # [m, d], the mem that reached best_accuracy

    @property
    def lossless(self) -> bool:
        return self.accuracy == 1.0


def load_fresh(path: str, device) -> torch.nn.Module:
    """What the original does per text: a fresh from_pretrained, frozen, moved to the device."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(path)
    for p in model.parameters():
        p.requires_grad = False
    return model.to(device)


def _autocast(device):
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _forward(model, ids: torch.Tensor, mem: torch.Tensor):
    """(loss, accuracy tensor) over positions 2..N, as MemoryCell.forward + calculate_accuracy."""
    m = mem.shape[1]
    embeds = model.get_input_embeddings()(ids)
    logits = model(inputs_embeds=torch.cat([mem.to(embeds.dtype), embeds], dim=1)).logits
    logits = logits[:, m:]                       # drop the mem positions
    shift_logits = logits[:, :-1].contiguous()   # position i predicts token i+1
    labels = ids[:, 1:].contiguous()
    loss = F.cross_entropy(shift_logits.view(-1, shift_logits.size(-1)).float(), labels.view(-1))
    accuracy = (shift_logits.argmax(dim=-1) == labels).float().mean()
    return loss, accuracy


def cram_one(lm: LoadedModel, token_ids: list[int], n_mem: int = 1, seed: int = 0, *,
             reload: bool = True, loads_per_text: int = 2, lr: float = 1e-2,
             betas=(0.9, 0.9), weight_decay: float = 0.01, max_steps: int = 5000,
             patience: int = 2000, init_scale: float = 1.0) -> PaperResult:
    """Cram one text the paper's way. ``lm`` gives the model path, the device and (when
    ``reload`` is False) the already-loaded model."""
    start = time.perf_counter()
    device = lm.device
    ids = torch.tensor([token_ids], device=device)
    load_seconds = 0.0

    # the no-mem reference (the original's orig_loss / orig_accuracy), on its own load
    if reload:
        t = time.perf_counter()
        model = load_fresh(lm.path, device)
        load_seconds += time.perf_counter() - t
    else:
        model = lm.model
    with torch.no_grad(), _autocast(device):
        logits = model(input_ids=ids).logits
        accuracy_without_mem = (logits[:, :-1].argmax(-1) == ids[:, 1:]).float().mean().item()
    if reload and loads_per_text >= 2:
        del model
        t = time.perf_counter()
        model = load_fresh(lm.path, device)
        load_seconds += time.perf_counter() - t

    mem = torch.nn.Parameter(init_mem(lm, token_ids, n_mem, seed, init_scale).to(device)[None])
    opt = torch.optim.AdamW([mem], lr=lr, betas=betas, weight_decay=weight_decay)
    best_accuracy, best_step, best_mem = -1.0, 0, mem.detach().clone()
    reason, step = "max_steps", 0
    while True:
        with _autocast(device):
            loss, accuracy = _forward(model, ids, mem)
        accuracy = accuracy.item()               # the per-step host sync
        loss.item()                              # (the original logs the loss every step)
        if accuracy > best_accuracy:
            best_accuracy, best_step, best_mem = accuracy, step, mem.detach().clone()
        if accuracy == 1.0:
            reason = "lossless"
            break
        if step - best_step >= patience:
            reason = "stalled"
            break
        if step >= max_steps:
            break
        loss.backward()
        opt.step()
        opt.zero_grad()
        step += 1

    with torch.no_grad(), _autocast(device):
        _, final_accuracy = _forward(model, ids, best_mem)
    return PaperResult(token_ids=list(token_ids), steps=step, best_step=best_step,
                       stop_reason=reason, best_accuracy=best_accuracy,
                       accuracy=final_accuracy.item(), accuracy_without_mem=accuracy_without_mem,
                       seconds=time.perf_counter() - start, load_seconds=load_seconds,
                       mem=best_mem[0].cpu())


def cram_all(lm: LoadedModel, token_lists, n_mem: int = 1, seed: int = 0,
             **kw) -> list[PaperResult]:
    """The original's outer loop: texts one after another."""
    return [cram_one(lm, ids, n_mem, seed, **kw) for ids in token_lists]
