"""Fused linear cross-entropy against a frozen LM head: loss, argmax and d loss / d hidden.

One program owns BLOCK_N rows and walks the vocabulary twice, BLOCK_V columns at a time; the
N x V logits never exist, only one [BLOCK_N, BLOCK_V] fp32 tile per program.

  pass 1  logits tile = h @ W_chunk^T (+ b). An online log-sum-exp keeps per row the running
          max m and sum s of exp(logit - m); when a chunk raises the max the old sum is rescaled
          by exp(m_old - m_new), so lse = m + log(s) is exact without a second look at the data.
          The same reduction gives the argmax (a chunk replaces it only on a strictly larger
          max, so ties go to the lowest index) and the target's logit: loss = lse - logit[t].
  pass 2  d loss / d logits = softmax - onehot(t) = exp(logit - lse) - onehot, recomputed per
          tile, then grad_h += P_tile @ W_chunk. The head is frozen, so the P^T @ h product
          (the weight gradient) is never formed.

The gradient of h contracts over V while the logits contract over d. d (2k-8k) is far too wide
to keep a [BLOCK_N, d] accumulator in registers, so it lives in an fp32 [N, d] buffer that each
program reads and writes back once per vocabulary chunk (rows are owned by one program, so no
atomics are needed). All programs walk V in the same order, so the W chunk they need at a
given moment is shared through L2.
"""
import os

import torch
import triton
import triton.language as tl

from cramfast.constants import IGNORE_INDEX as _IGNORE_INDEX

IGNORE_INDEX = tl.constexpr(_IGNORE_INDEX)  # jit code may only read constexpr globals
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _logits_tile(h_ptr, w_ptr, b_ptr, rows, row_mask, cols, V, D, stride_h, stride_w,
                 HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    """fp32 logits [BLOCK_N, BLOCK_V]; -inf in columns past V so they vanish from softmax."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dims = d0 + tl.arange(0, BLOCK_D)
        in_d = dims < D
        # Masked (ignored) rows are not loaded at all: their logits are junk, never used.
        h = tl.load(h_ptr + rows[:, None] * stride_h + dims[None, :],
                    mask=row_mask[:, None] & in_d[None, :], other=0.0)
        w = tl.load(w_ptr + cols[:, None] * stride_w + dims[None, :],
                    mask=(cols < V)[:, None] & in_d[None, :], other=0.0)
        if UPCAST:  # interpreter only: its numpy dot multiplies bf16 as raw uint16 bits
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        # bf16/fp16 operands hit the tensor cores with fp32 accumulation; fp32 operands use
        # "ieee" so they are not silently rounded to tf32.
        acc = tl.dot(h, tl.trans(w), acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=cols < V, other=0.0).to(tl.float32)[None, :]
    return tl.where((cols < V)[None, :], acc, float("-inf"))


# N (and its bucket) change with every batch shape: specializing on them (N == 1, N % 16) would
# compile each autotune config again for each, which for tiny shapes costs more than it saves.
@triton.jit(do_not_specialize=["N", "N_BUCKET"])
def _linear_cross_entropy_kernel(
        h_ptr, w_ptr, b_ptr, tgt_ptr, loss_ptr, argmax_ptr, margin_ptr, grad_ptr,
        N, V, D, stride_h, stride_w, stride_g, N_BUCKET,
        HAS_BIAS: tl.constexpr, WANT_GRAD: tl.constexpr, UPCAST: tl.constexpr,
        DOT_PRECISION: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    in_n = rows < N
    tgt = tl.load(tgt_ptr + rows, mask=in_n, other=IGNORE_INDEX)
    valid = tgt != IGNORE_INDEX
    # A block of masked rows (padding, memory positions) costs one load: the wrapper has
    # already written their loss 0, argmax -1 and zero gradient.
    if tl.max(valid.to(tl.int32), axis=0) > 0:
        m_i = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
        s_i = tl.zeros((BLOCK_N,), dtype=tl.float32)
        arg_i = tl.zeros((BLOCK_N,), dtype=tl.int64)
        tgt_logit = tl.zeros((BLOCK_N,), dtype=tl.float32)
        other_max = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            logits = _logits_tile(h_ptr, w_ptr, b_ptr, rows, valid, cols, V, D, stride_h,
                                  stride_w, HAS_BIAS, UPCAST, DOT_PRECISION,
                                  BLOCK_N, BLOCK_V, BLOCK_D)
            c_max, c_arg = tl.max(logits, axis=1, return_indices=True,
                                  return_indices_tie_break_left=True)
            arg_i = tl.where(c_max > m_i, v0 + c_arg.to(tl.int64), arg_i)
            m_new = tl.maximum(m_i, c_max)
            s_i = s_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(logits - m_new[:, None]), axis=1)
            m_i = m_new
            is_tgt = cols[None, :] == tgt[:, None]
            tgt_logit += tl.sum(tl.where(is_tgt, logits, 0.0), axis=1)
            other_max = tl.maximum(other_max, tl.max(tl.where(is_tgt, float("-inf"), logits), axis=1))
        lse = m_i + tl.log(s_i)
        tl.store(loss_ptr + rows, tl.where(valid, lse - tgt_logit, 0.0), mask=in_n)
        tl.store(argmax_ptr + rows, tl.where(valid, arg_i, -1), mask=in_n)
        tl.store(margin_ptr + rows, tl.where(valid, tgt_logit - other_max, 0.0), mask=in_n)

        if WANT_GRAD:
            w_ty = w_ptr.dtype.element_ty
            for v0 in range(0, V, BLOCK_V):
                cols = v0 + tl.arange(0, BLOCK_V)
                logits = _logits_tile(h_ptr, w_ptr, b_ptr, rows, valid, cols, V, D, stride_h,
                                      stride_w, HAS_BIAS, UPCAST, DOT_PRECISION,
                                      BLOCK_N, BLOCK_V, BLOCK_D)
                p = tl.exp(logits - lse[:, None])
                p = tl.where(cols[None, :] == tgt[:, None], p - 1.0, p)
                # The second product runs in W's dtype (tensor cores need equal operand types):
                # P is rounded to bf16/fp16 as the torch backend does (round-to-nearest on CUDA;
                # the interpreter truncates, which the tests' bf16 tolerance absorbs).
                p = p.to(w_ty)
                if UPCAST:
                    p = p.to(tl.float32)
                for d0 in range(0, D, BLOCK_D):
                    dims = d0 + tl.arange(0, BLOCK_D)
                    in_d = dims < D
                    w = tl.load(w_ptr + cols[:, None] * stride_w + dims[None, :],
                                mask=(cols < V)[:, None] & in_d[None, :], other=0.0)
                    if UPCAST:
                        w = w.to(tl.float32)
                    g_ptrs = grad_ptr + rows[:, None] * stride_g + dims[None, :]
                    g_mask = valid[:, None] & in_d[None, :]  # masked rows keep their zeros
                    g = tl.load(g_ptrs, mask=g_mask, other=0.0)
                    g = tl.dot(p, w, g, input_precision=DOT_PRECISION)
                    tl.store(g_ptrs, g, mask=g_mask)


# The interpreter runs programs one by one in numpy, paying per op and per element of the
# [BLOCK_V, BLOCK_D] pointer tiles: one fixed config of wide blocks, clipped to the problem.
INTERPRET_BLOCKS = dict(BLOCK_N=16, BLOCK_V=512, BLOCK_D=128)


def _interpret_config(v, d):
    return dict(BLOCK_N=INTERPRET_BLOCKS["BLOCK_N"],
                BLOCK_V=min(INTERPRET_BLOCKS["BLOCK_V"], triton.next_power_of_2(v)),
                BLOCK_D=min(INTERPRET_BLOCKS["BLOCK_D"], triton.next_power_of_2(d)))


# On CUDA a small autotune list: for bf16/fp16 (wgmma) ptxas reports 190-255 registers and no
# spills for the first four on sm_90; fp32 ("ieee", no tensor cores) spills with those and gets
# the last, small one. reset_to_zero: each trial run accumulates into the gradient buffer.
# N_BUCKET (N rounded up to a power of two, read by nothing but the tuner) re-tunes per size
# class of N: the best block for 60 rows (one text) is not the best for 16k (a full batch).
if INTERPRET:
    _launch = _linear_cross_entropy_kernel
else:
    _launch = triton.autotune(
        configs=[triton.Config(dict(BLOCK_N=n, BLOCK_V=v, BLOCK_D=k), num_warps=w, num_stages=s)
                 for n, v, k, w, s in [(64, 128, 64, 4, 3), (128, 128, 64, 8, 3),
                                       (64, 256, 64, 8, 3), (128, 128, 32, 8, 4),
                                       (64, 64, 32, 8, 2)]],
        key=["N_BUCKET", "V", "D", "HAS_BIAS", "WANT_GRAD"],
        reset_to_zero=["grad_ptr"],
    )(_linear_cross_entropy_kernel)

_DOT_PRECISION = {torch.float32: "ieee", torch.bfloat16: "tf32", torch.float16: "tf32"}


def linear_cross_entropy_forward(hidden, weight, targets, bias, want_grad):
    """(loss [N] fp32, argmax [N] int64, margin [N] fp32, grad [N, d] in hidden.dtype or None);
    shapes checked by cramfast.ops.linear_cross_entropy, the public entry."""
    if hidden.dtype != weight.dtype or hidden.dtype not in _DOT_PRECISION:
        raise TypeError(f"linear_cross_entropy (triton): hidden and weight must share one of "
                        f"fp32/bf16/fp16, got {hidden.dtype} and {weight.dtype}")
    if not INTERPRET and not hidden.is_cuda:
        raise RuntimeError("linear_cross_entropy (triton): tensors must be on CUDA, or set "
                           "TRITON_INTERPRET=1 before importing cramfast to run on CPU")
    (n, d), v = hidden.shape, weight.shape[0]
    hidden = hidden if hidden.stride(1) == 1 else hidden.contiguous()
    weight = weight if weight.stride(1) == 1 else weight.contiguous()
    targets = targets.contiguous()
    bias = bias.contiguous() if bias is not None else None
    loss = torch.zeros(n, dtype=torch.float32, device=hidden.device)
    argmax = torch.full((n,), -1, dtype=torch.int64, device=hidden.device)
    margin = torch.zeros(n, dtype=torch.float32, device=hidden.device)
    # fp32 accumulator (see module docstring); it is the result itself for fp32 inputs.
    grad = torch.zeros(n, d, dtype=torch.float32, device=hidden.device) if want_grad else None
    if n:
        _launch[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)](
            # Unused bias / gradient slots get any tensor of a fitting dtype (never read).
            hidden, weight, bias if bias is not None else hidden, targets, loss, argmax, margin,
            grad if want_grad else loss, n, v, d, hidden.stride(0), weight.stride(0),
            d if want_grad else 0, triton.next_power_of_2(n),
            HAS_BIAS=bias is not None, WANT_GRAD=want_grad, UPCAST=INTERPRET,
            DOT_PRECISION=_DOT_PRECISION[hidden.dtype],
            **(_interpret_config(v, d) if INTERPRET else {}))
    if want_grad:
        grad = grad.to(hidden.dtype)
    return loss, argmax, margin, grad
