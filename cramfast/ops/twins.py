"""Plain torch twins of the two fused ops: the same contracts as the Triton kernels, used on
CPU, for fp64, and as the references the kernels are tested against.

    mem_embed_torch(input_ids, embedding, mem, scale=1.0)     -> [B, m+T, d]
    linear_cross_entropy_torch(hidden, weight, targets, bias, want_grad, logit_scale=1.0,
                               softcap=None)          -> (loss, argmax, margin, grad or None)
    linear_cross_entropy_naive(hidden, weight, targets, bias, logit_scale=1.0, softcap=None)
                                                      -> (loss, argmax, margin), full logits

The logits are the model's own: z = logit_scale * (hidden @ W.T + b), then, with a softcap c,
c * tanh(z / c) (Gemma 2's final soft-capping); the token rows of mem_embed are the embedding's
rows times ``scale`` (Gemma's sqrt(d) input scale). margin: the target's logit minus the largest
other logit (> 0: the argmax is the target with that much to spare; +inf where the vocabulary
has one entry), 0 on masked rows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cramfast.constants import CHUNK_ELEMENTS, IGNORE_INDEX
from cramfast.models import model_logits


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp32/bf16/fp16 inputs; fp64 stays fp64 (exactness tests run in fp64)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def mem_embed_torch(input_ids, embedding, mem, scale: float = 1.0):
    """[mem ; embedding[input_ids] * scale] in the embedding's dtype (forward only; see
    autograd.py). The product rounds once to the embedding's dtype, as the model's own scaled
    lookup does."""
    tokens = F.embedding(input_ids, embedding.detach())
    if scale != 1.0:
        tokens = tokens * scale
    return torch.cat([mem.to(embedding.dtype), tokens], dim=1)



def linear_cross_entropy_torch(hidden, weight, targets, bias, want_grad: bool,
                               logit_scale: float = 1.0, softcap: float | None = None):
    """Chunked fused CE: per-row loss, argmax and margin and, if ``want_grad``, the gradient of
    each row's loss w.r.t. its hidden state, logit_scale * ((softmax - onehot) * cap') @ W
    (cap' = 1 - tanh^2(z / c) with a softcap, else 1). Never holds more than CHUNK_ELEMENTS
    logits (two with a softcap: cap' is kept for the gradient)."""
    n = hidden.shape[0]
    acc = accumulation_dtype(hidden.dtype)
    loss = torch.zeros(n, dtype=acc, device=hidden.device)
    margin = torch.zeros(n, dtype=acc, device=hidden.device)
    argmax = torch.full((n,), -1, dtype=torch.long, device=hidden.device)
    grad = torch.zeros_like(hidden) if want_grad else None
    valid_rows = (targets != IGNORE_INDEX).nonzero().squeeze(1)
    step = max(1, min(valid_rows.numel(), CHUNK_ELEMENTS // max(weight.shape[0], 1)))
    for start in range(0, valid_rows.numel(), step):
        rows = valid_rows[start:start + step]
        tgt = targets[rows]
        # One [rows, V] buffer per chunk, transformed in place: logits -> exp(l - max) -> softmax
        # -> softmax - onehot. No second chunk-sized temporary, so peak memory is one chunk.
        logits = (hidden[rows] @ weight.T).to(acc)
        if bias is not None:
            logits += bias.to(acc)
        logits = model_logits(logits, logit_scale, softcap)
        # d capped / d z = 1 - tanh^2 = 1 - (capped / c)^2, from the capped logits themselves
        slope = 1 - (logits / softcap) ** 2 if softcap is not None and want_grad else None
        target_logit = logits.gather(1, tgt[:, None]).squeeze(1)
        argmax[rows] = logits.argmax(dim=1)
        row_max = logits.amax(dim=1, keepdim=True)
        # the best other logit: the target's own masked out in place, then put back exactly
        chunk_rows = torch.arange(rows.numel(), device=rows.device)
        logits[chunk_rows, tgt] = float("-inf")
        margin[rows] = target_logit - logits.amax(dim=1)
        logits[chunk_rows, tgt] = target_logit
        sum_exp = logits.sub_(row_max).exp_().sum(dim=1)
        loss[rows] = row_max.squeeze(1) + sum_exp.log() - target_logit
        if want_grad:
            probs = logits.div_(sum_exp[:, None])
            probs[chunk_rows, tgt] -= 1.0
            if slope is not None:
                probs.mul_(slope)
            if logit_scale != 1.0:
                probs.mul_(logit_scale)
            grad[rows] = (probs.to(weight.dtype) @ weight).to(hidden.dtype)
        del logits, slope
    return loss, argmax, margin, grad


def linear_cross_entropy_naive(hidden, weight, targets, bias=None, logit_scale: float = 1.0,
                               softcap: float | None = None):
    """Full-logits reference (holds N x V; differentiable through torch): for tests and
    benchmarks only."""
    acc = accumulation_dtype(hidden.dtype)
    logits = (hidden @ weight.T).to(acc)
    if bias is not None:
        logits = logits + bias.to(acc)
    logits = model_logits(logits, logit_scale, softcap)
    mask = targets != IGNORE_INDEX
    safe = targets.clamp_min(0)
    loss = F.cross_entropy(logits, safe, reduction="none") * mask
    argmax = torch.where(mask, logits.argmax(dim=1), torch.full_like(targets, -1))
    target_logit = logits.gather(1, safe[:, None]).squeeze(1)
    others = logits.detach().scatter(1, safe[:, None], float("-inf")).amax(dim=1)
    margin = torch.where(mask, target_logit.detach() - others, torch.zeros_like(others))
    return loss, argmax, margin
