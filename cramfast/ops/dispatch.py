"""The two fused operations of a cramming step: check the inputs, pick the backend, dispatch.

    mem_embed(input_ids, embedding, mem, scale)     -> inputs_embeds [B, m+T, d]
    linear_cross_entropy(hidden, weight, targets, bias, logit_scale=, softcap=)
                                                    -> (loss, argmax, margin) per row

Backends: ``triton`` (kernels/, compiled on CUDA, interpreted on CPU under TRITON_INTERPRET=1),
``torch`` (twins.py: the same contracts in chunked torch; no N x V logits are ever held) and
``naive`` (full logits and F.cross_entropy: a reference for tests and benchmarks). ``auto``
picks triton on CUDA tensors of fp32/bf16/fp16 and torch elsewhere (fp64, the exactness tests'
dtype, has no kernel). Choose with ``backend=`` or the CRAMFAST_BACKEND environment variable.
The autograd Functions (autograd.py) are the same whichever backend computes the forward.
"""
from __future__ import annotations

import functools
import math
import os
import warnings

import torch

from cramfast.constants import IGNORE_INDEX  # noqa: F401  (re-exported: callers mask with it)
from cramfast.errors import CramfastError
from cramfast.ops import twins
from cramfast.ops.autograd import LinearCrossEntropy, MemEmbed

BACKENDS = ("auto", "triton", "torch", "naive")
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

_warned_fallback = False
_triton_module = None
_triton_import_error = None


def resolve_backend(backend: str | None, device: torch.device,
                    dtype: torch.dtype = torch.float32) -> str:
    """'triton', 'torch' or 'naive' for tensors of ``dtype`` on ``device``; falls back to torch
    (warning once) if Triton was asked for, or would be chosen, but cannot be imported."""
    global _warned_fallback
    backend = backend or os.environ.get("CRAMFAST_BACKEND", "auto")
    if backend not in BACKENDS:
        raise CramfastError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = "triton" if device.type == "cuda" and dtype in TRITON_DTYPES else "torch"
    if backend == "triton" and _triton_kernels() is None:
        if not _warned_fallback:
            warnings.warn("cramfast: Triton kernels unavailable "
                          f"({_triton_import_error}); using the torch backend", stacklevel=3)
            _warned_fallback = True
        backend = "torch"
    return backend


def backend_for(tensor: torch.Tensor, backend: str | None) -> str:
    return resolve_backend(backend, tensor.device, tensor.dtype)


def _triton_kernels():
    """cramfast.kernels, imported on first use (Triton is optional on a CPU machine)."""
    global _triton_module, _triton_import_error
    if _triton_module is None and _triton_import_error is None:
        try:
            from cramfast import kernels
            _triton_module = kernels
        except Exception as exc:  # ImportError, or a Triton that fails at import
            _triton_import_error = f"{type(exc).__name__}: {exc}"
    return _triton_module


def mem_embed(input_ids: torch.Tensor, embedding: torch.Tensor, mem: torch.Tensor,
              backend: str | None = None, scale: float = 1.0) -> torch.Tensor:
    """[mem ; embedding[input_ids] * scale] along the sequence: [B, m+T, d] in the embedding's
    dtype.

    input_ids [B, T] (right padding with any valid id; padded positions are masked downstream),
    embedding [V, d] frozen, mem [B, m, d] (any float dtype; the gradient flows back to it),
    scale: the model's input scale (Gemma's sqrt(d); the mem is not scaled: it lives where the
    backbone reads).
    """
    if input_ids.dim() != 2 or mem.dim() != 3 or embedding.dim() != 2:
        raise ValueError(f"mem_embed: expected input_ids [B,T], embedding [V,d], mem [B,m,d]; got "
                         f"{tuple(input_ids.shape)}, {tuple(embedding.shape)}, {tuple(mem.shape)}")
    if mem.shape[0] != input_ids.shape[0] or mem.shape[2] != embedding.shape[1]:
        raise ValueError(f"mem_embed: mem {tuple(mem.shape)} does not match batch "
                         f"{input_ids.shape[0]} and d {embedding.shape[1]}")
    if not math.isfinite(scale) or scale == 0:
        raise ValueError(f"mem_embed: scale must be finite and non-zero, got {scale}")
    if backend_for(embedding, backend) == "triton":
        forward = _triton_kernels().mem_embed_forward
    else:
        forward = twins.mem_embed_torch
    return MemEmbed.apply(functools.partial(forward, scale=float(scale)), input_ids, embedding,
                          mem)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         bias: torch.Tensor | None = None, backend: str | None = None,
                         logit_scale: float = 1.0, softcap: float | None = None):
    """Cross-entropy of the logits z = logit_scale * (hidden @ weight.T (+ bias)), soft-capped
    to softcap * tanh(z / softcap) when ``softcap`` is given, against ``targets``, row by row.

    hidden [N, d], weight [V, d] (frozen LM head), targets [N] (IGNORE_INDEX masks a row),
    bias [V] or None; logit_scale and softcap: what the model does to its head's output (Cohere,
    Granite, Gemma 2: models.LoadedModel). Argmax and margin are of those logits.
    Returns (loss [N], 0 on masked rows, fp32 (fp64 for fp64 inputs);
    argmax [N] int64, -1 on masked rows, ties to the lowest index; margin [N], the target's
    logit minus the largest other logit, 0 on masked rows, +inf where V is 1, in loss's dtype).
    Differentiable w.r.t. ``hidden`` only (through loss); the gradient is computed in the
    forward pass (fused), so backward is a row-wise scale.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"linear_cross_entropy: hidden {tuple(hidden.shape)} and weight "
                         f"{tuple(weight.shape)} must be [N, d] and [V, d]")
    if targets.shape != hidden.shape[:1] or (bias is not None and bias.shape != weight.shape[:1]):
        raise ValueError("linear_cross_entropy: targets must be [N] and bias [V]")
    if not math.isfinite(logit_scale) or logit_scale == 0:
        raise ValueError(f"linear_cross_entropy: logit_scale must be finite and non-zero, got "
                         f"{logit_scale}")
    if softcap is not None and not (math.isfinite(softcap) and softcap > 0):
        raise ValueError(f"linear_cross_entropy: softcap must be None or > 0, got {softcap}")
    transform = dict(logit_scale=float(logit_scale),
                     softcap=None if softcap is None else float(softcap))
    chosen = backend_for(hidden, backend)
    if chosen == "naive":
        return twins.linear_cross_entropy_naive(hidden, weight, targets, bias, **transform)
    forward = functools.partial(_triton_kernels().linear_cross_entropy_forward if chosen ==
                                "triton" else twins.linear_cross_entropy_torch, **transform)
    # Decided here, not in forward: forward runs with grad mode off, and ctx.needs_input_grad
    # stays True under torch.no_grad(), which would waste the gradient pass.
    want_grad = hidden.requires_grad and torch.is_grad_enabled()
    return LinearCrossEntropy.apply(forward, want_grad, hidden, weight, targets, bias)
