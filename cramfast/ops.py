"""The two fused operations of a cramming step, and the choice of backend.

    mem_embed(input_ids, embedding, mem)            -> inputs_embeds [B, m+T, d]
    linear_cross_entropy(hidden, weight, targets)   -> (loss per row, argmax per row)

Backends: ``triton`` (kernels/, compiled on CUDA, interpreted on CPU under TRITON_INTERPRET=1)
and ``torch`` (a chunked pure-torch twin of the same contract: no N x V logits are ever held).
``auto`` picks triton on CUDA tensors of fp32/bf16/fp16 and torch elsewhere (fp64, the exactness
tests' dtype, has no tensor-core path and no Triton kernel here). Choose with the ``backend=``
argument or the CRAMFAST_BACKEND environment variable.

Both ops differentiate only what cramming needs: the gradient reaches ``mem`` and ``hidden``;
the frozen embedding matrix and LM head get none (nothing is allocated for them).
"""
from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
BACKENDS = ("auto", "triton", "torch")
# Rows of logits materialized at once by the torch backend: bounds its peak memory to about
# CHUNK_ELEMENTS fp32 values (64 MiB) whatever N is; chunks of ~1k rows x 49k columns are still
# large enough for the matmuls to run at full speed.
CHUNK_ELEMENTS = 1 << 24

_warned_fallback = False


TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def resolve_backend(backend: str | None, device: torch.device,
                    dtype: torch.dtype = torch.float32) -> str:
    """'triton' or 'torch' for tensors of ``dtype`` on ``device``; falls back to torch (warning
    once) if Triton was asked for, or would be chosen, but cannot be imported."""
    global _warned_fallback
    backend = backend or os.environ.get("CRAMFAST_BACKEND", "auto")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = "triton" if device.type == "cuda" and dtype in TRITON_DTYPES else "torch"
    if backend == "triton" and _triton_kernels() is None:
        if not _warned_fallback:
            warnings.warn("cramfast: Triton kernels unavailable "
                          f"({_triton_import_error}); using the torch backend", stacklevel=3)
            _warned_fallback = True
        backend = "torch"
    return backend


_triton_module = None
_triton_import_error = None


def _triton_kernels():
    global _triton_module, _triton_import_error
    if _triton_module is None and _triton_import_error is None:
        try:
            from cramfast import kernels
            _triton_module = kernels
        except Exception as exc:  # ImportError, or a Triton that fails at import
            _triton_import_error = f"{type(exc).__name__}: {exc}"
    return _triton_module


# ---------------------------------------------------------------------------------------------
# mem_embed


def mem_embed(input_ids: torch.Tensor, embedding: torch.Tensor, mem: torch.Tensor,
              backend: str | None = None) -> torch.Tensor:
    """[mem ; embedding[input_ids]] along the sequence: [B, m+T, d] in the embedding's dtype.

    input_ids [B, T] (right padding with any valid id; padded positions are masked downstream),
    embedding [V, d] frozen, mem [B, m, d] (any float dtype; the gradient flows back to it).
    """
    if backend_for(embedding, backend) == "triton":
        return _triton_kernels().mem_embed(input_ids, embedding, mem)
    return mem_embed_torch(input_ids, embedding, mem)


def mem_embed_torch(input_ids, embedding, mem):
    tokens = F.embedding(input_ids, embedding.detach())
    return torch.cat([mem.to(embedding.dtype), tokens], dim=1)


# ---------------------------------------------------------------------------------------------
# linear_cross_entropy


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         bias: torch.Tensor | None = None, backend: str | None = None):
    """Cross-entropy of ``hidden @ weight.T (+ bias)`` against ``targets``, row by row.

    hidden [N, d], weight [V, d] (frozen LM head), targets [N] (IGNORE_INDEX masks a row),
    bias [V] or None. Returns (loss [N] fp32, 0 on masked rows; argmax [N] int64, -1 on masked
    rows). Differentiable w.r.t. ``hidden`` only; the gradient is computed in the forward pass
    (fused), so backward is a row-wise scale.
    """
    if backend_for(hidden, backend) == "triton":
        return _triton_kernels().linear_cross_entropy(hidden, weight, targets, bias)
    return LinearCrossEntropyTorch.apply(hidden, weight, targets, bias)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp32/bf16/fp16 inputs; fp64 stays fp64 (exactness tests run in fp64)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def backend_for(tensor: torch.Tensor, backend: str | None) -> str:
    return resolve_backend(backend, tensor.device, tensor.dtype)


def _row_chunk(n_rows: int, vocab: int) -> int:
    return max(1, min(n_rows, CHUNK_ELEMENTS // max(vocab, 1)))


def linear_cross_entropy_chunks(hidden, weight, targets, bias, want_grad: bool):
    """Chunked forward of the fused CE: per-row loss and argmax, and (if ``want_grad``) the
    gradient of each row's loss w.r.t. its hidden state, (softmax - onehot) @ W."""
    n = hidden.shape[0]
    acc = accumulation_dtype(hidden.dtype)
    loss = torch.zeros(n, dtype=acc, device=hidden.device)
    argmax = torch.full((n,), -1, dtype=torch.long, device=hidden.device)
    grad = torch.zeros_like(hidden) if want_grad else None
    valid_rows = (targets != IGNORE_INDEX).nonzero().squeeze(1)
    step = _row_chunk(valid_rows.numel(), weight.shape[0])
    for start in range(0, valid_rows.numel(), step):
        rows = valid_rows[start:start + step]
        tgt = targets[rows]
        # One [rows, V] buffer per chunk, transformed in place: logits -> exp(l - max) -> softmax
        # -> softmax - onehot. No second chunk-sized temporary, so peak memory is one chunk.
        logits = (hidden[rows] @ weight.T).to(acc)
        if bias is not None:
            logits += bias.to(acc)
        target_logit = logits.gather(1, tgt[:, None]).squeeze(1)
        argmax[rows] = logits.argmax(dim=1)
        row_max = logits.amax(dim=1, keepdim=True)
        sum_exp = logits.sub_(row_max).exp_().sum(dim=1)
        loss[rows] = row_max.squeeze(1) + sum_exp.log() - target_logit
        if want_grad:
            probs = logits.div_(sum_exp[:, None])
            probs[torch.arange(rows.numel(), device=rows.device), tgt] -= 1.0
            grad[rows] = (probs.to(weight.dtype) @ weight).to(hidden.dtype)
        del logits
    return loss, argmax, grad


class LinearCrossEntropyTorch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, bias):
        want_grad = hidden.requires_grad and torch.is_grad_enabled() or ctx.needs_input_grad[0]
        with torch.no_grad():
            loss, argmax, grad = linear_cross_entropy_chunks(hidden, weight, targets, bias, want_grad)
        ctx.save_for_backward(grad if grad is not None else hidden.new_empty(0))
        ctx.mark_non_differentiable(argmax)
        return loss, argmax

    @staticmethod
    def backward(ctx, grad_loss, _grad_argmax):
        (grad,) = ctx.saved_tensors
        return (grad * grad_loss[:, None].to(grad.dtype)), None, None, None


def linear_cross_entropy_naive(hidden, weight, targets, bias=None):
    """Full-logits reference (holds N x V): for tests and benchmarks only."""
    acc = accumulation_dtype(hidden.dtype)
    logits = (hidden @ weight.T).to(acc)
    if bias is not None:
        logits = logits + bias.to(acc)
    mask = targets != IGNORE_INDEX
    loss = F.cross_entropy(logits, targets.clamp_min(0), reduction="none") * mask
    argmax = torch.where(mask, logits.argmax(dim=1), torch.full_like(targets, -1))
    return loss, argmax
