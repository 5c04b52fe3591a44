"""Reduction of the fused linear cross-entropy's vocabulary splits into the per-row results.

One program per (BLOCK_R rows, BLOCK_D features). It reads each row's split statistics in split
order (linear_cross_entropy_partials.py) and merges them as the partial pass merged its tiles:

  lse     = M + log(sum_j s_j * exp(m_j - M)), M the running max, rescaled as it rises;
  argmax  = the arg of the first split whose max is strictly larger than all before it (splits
            are in vocabulary order, so ties go to the lowest index, as within a split);
  loss    = lse - target logit;   margin = target logit - max_j other_j;
  grad    = LOGIT_SCALE * (sum_j exp(m_j - lse) * G_j
                           + (exp(target logit - lse) - 1) * cap'_target * W_target),
            i.e. the chain rule through the model's logits (softmax - onehot) * cap' @ W,
            scaled: each split's accumulator, taken relative to its own max m_j, is
            normalised here; the target's term, left out of G, is added in fp32; cap' is
            1 - (target logit / SOFTCAP)^2 with a soft cap (the logit is the capped one).

The order of every sum is fixed by the loop over splits, so two runs are bit-identical (no
atomics, no order decided by scheduling). Every output element is written here, masked rows
included (loss 0, argmax -1, margin 0, zero gradient), so the outputs need no zero fill and
the statistics of masked rows, never written by the partial pass, are never read.
"""
import triton
import triton.language as tl

from cramfast.constants import IGNORE_INDEX as _IGNORE_INDEX

IGNORE_INDEX = tl.constexpr(_IGNORE_INDEX)


@triton.jit
def _split_row_stats(max_ptr, sumexp_ptr, other_ptr, arg_ptr, rows, valid, N, SPLITS,
                     BLOCK_R: tl.constexpr):
    """(lse, argmax, best other logit) per row over all splits, merged in split order."""
    # Masked rows read max 0 and sumexp 1 (never -inf - -inf = nan); their results are dropped.
    big = tl.full((BLOCK_R,), float("-inf"), dtype=tl.float32)
    total = tl.zeros((BLOCK_R,), dtype=tl.float32)
    arg = tl.zeros((BLOCK_R,), dtype=tl.int32)
    other = tl.full((BLOCK_R,), float("-inf"), dtype=tl.float32)
    for split in range(0, SPLITS):
        at = split * N + rows
        m_j = tl.load(max_ptr + at, mask=valid, other=0.0)
        s_j = tl.load(sumexp_ptr + at, mask=valid, other=1.0)
        arg = tl.where(m_j > big, tl.load(arg_ptr + at, mask=valid, other=0), arg)
        new = tl.maximum(big, m_j)
        total = total * tl.exp(big - new) + s_j * tl.exp(m_j - new)
        big = new
        other = tl.maximum(other, tl.load(other_ptr + at, mask=valid, other=float("-inf")))
    return big + tl.log(total), arg, other


@triton.jit(do_not_specialize=["N", "SPLITS"])
def combine_vocab_splits(
        max_ptr, sumexp_ptr, other_ptr, arg_ptr, tgt_logit_ptr, grad_part_ptr,
        w_ptr, tgt_ptr, loss_ptr, argmax_ptr, margin_ptr, grad_ptr,
        N, V, D, SPLITS, stride_w, LOGIT_SCALE, SOFTCAP,
        HAS_SCALE: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
        WANT_GRAD: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_r = tl.program_id(0)
    pid_d = tl.program_id(1)
    rows = (pid_r * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    in_n = rows < N
    tgt = tl.load(tgt_ptr + rows, mask=in_n, other=IGNORE_INDEX)
    valid = tgt != IGNORE_INDEX
    lse, arg, other = _split_row_stats(max_ptr, sumexp_ptr, other_ptr, arg_ptr, rows, valid,
                                       N, SPLITS, BLOCK_R)
    tgt_logit = tl.load(tgt_logit_ptr + rows, mask=valid, other=0.0)
    if pid_d == 0:
        tl.store(loss_ptr + rows, tl.where(valid, lse - tgt_logit, 0.0), mask=in_n)
        tl.store(argmax_ptr + rows, tl.where(valid, arg.to(tl.int64), -1), mask=in_n)
        tl.store(margin_ptr + rows, tl.where(valid, tgt_logit - other, 0.0), mask=in_n)
    if WANT_GRAD:
        dims = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        ok = valid[:, None] & (dims < D)[None, :]
        acc = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
        for split in range(0, SPLITS):
            at = split * N + rows
            scale = tl.exp(tl.load(max_ptr + at, mask=valid, other=0.0) - lse)
            part = tl.load(grad_part_ptr + at[:, None] * D + dims[None, :], mask=ok, other=0.0)
            acc += scale[:, None] * part
        # A target outside [0, V) is bad input (its results are undefined) but is never read.
        in_v = (tgt >= 0) & (tgt < V)
        w_tgt = tl.load(w_ptr + tgt[:, None] * stride_w + dims[None, :],
                        mask=ok & in_v[:, None], other=0.0)
        tgt_term = tl.exp(tgt_logit - lse) - 1.0
        if HAS_SOFTCAP:
            tgt_term = tgt_term * (1.0 - (tgt_logit / SOFTCAP) * (tgt_logit / SOFTCAP))
        acc += tgt_term[:, None] * w_tgt.to(tl.float32)
        if HAS_SCALE:
            acc = acc * LOGIT_SCALE
        tl.store(grad_ptr + rows[:, None] * D + dims[None, :],
                 tl.where(ok, acc, 0.0).to(grad_ptr.dtype.element_ty),
                 mask=in_n[:, None] & (dims < D)[None, :])
