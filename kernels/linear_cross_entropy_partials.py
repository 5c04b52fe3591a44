"""Partial pass of the fused linear cross-entropy: one program per (row block, vocabulary split,
feature group), the logits of its tile computed and consumed in registers, never stored.

For its BLOCK_N rows and its split of the vocabulary [v_begin, v_end) a program walks the split
BLOCK_V columns at a time, logits tile = LOGIT_SCALE * (h @ W_tile^T (+ b)), soft-capped to
SOFTCAP * tanh(logits / SOFTCAP) with HAS_SOFTCAP (the model's own logits: Cohere and Granite
scale them, Gemma 2 caps them), and keeps per row:

  max       m, the running maximum of the split's logits;
  sumexp    s = sum exp(logit - m), rescaled by exp(m_old - m_new) whenever m rises (online
            log-sum-exp: exact without a second look at the logits);
  argmax    the column of m (within a tile the lowest index of the maximum; a later tile
            replaces it only with a strictly larger maximum, so ties go to the lowest index);
  target    the target's logit, written only by the split that holds the target;
  other     the largest logit other than the target's (for the margin);
  gradient  G = sum over the split's columns v != target of exp(logit_v - m) * cap'_v * W_v
            (cap' = 1 - tanh^2, the cap's slope; 1 without a cap), an
            [BLOCK_N, d] fp32 accumulator rescaled with s (flash attention's output with
            K = V = W): d loss / d h = softmax @ W - W_target needs no second walk of the
            vocabulary, because the normalisation exp(m - lse) is applied per split afterwards
            (linear_cross_entropy_combine.py). Leaving the target out of G keeps the gradient
            accurate when the target's probability nears 1 (a cramming run's end): its term,
            (p_target - 1) * W_target, is added in fp32 by the reduction, not formed as the
            difference of two nearly equal rounded vectors.

The accumulator lives in registers, and registers bound its width: a program holds at most
MAX_ACC columns of it, a feature group of d, as two power-of-two pieces PIECE_A + PIECE_B
(Triton tiles are powers of two; 576 = 512 + 64, or 2 x (256 + 32)). d wider than MAX_ACC is
cut into D_GROUPS groups, a third grid axis; every group computes the whole logits tile (the
softmax needs all of d) and accumulates its own columns of the gradient, so the logits cost
D_GROUPS times over. On an H100/H200 (sm_90) a warpgroup's wgmma covers 64 rows: 8 warps give
128 rows per program, and then 576 accumulator columns need 288 registers a thread, more than
exist, while 288 columns (two groups) fit without spilling in the loop. With one or two groups
the program loads its rows' h once (it stays in shared memory) and each W tile once, and uses
the tile for both products (the logits contract over d, the gradient over the tile's columns);
with more groups the logits take a K loop over d instead (h re-read per tile: wide models only).
A group sums its own pieces of the logits first, so its logits may differ from group 0's in the
last bit (only group 0 writes the statistics): the gradient sees fp32 rounding, nothing more.

Rows whose target is IGNORE_INDEX are not loaded (their logits are junk, never stored); a row
block with no scored row returns at once and writes nothing: the reduction never reads it.
"""
import triton
import triton.language as tl

from cramfast.constants import IGNORE_INDEX as _IGNORE_INDEX

IGNORE_INDEX = tl.constexpr(_IGNORE_INDEX)  # jit code may only read constexpr globals


def _prev_power_of_2(x):
    return 1 << (x.bit_length() - 1)


def feature_groups(d, max_acc):
    """(D_GROUPS, GROUP_D, PIECE_A, PIECE_B): d split into the fewest groups of at most
    ``max_acc`` columns, each a multiple of 16 held as a power-of-two piece A plus a smaller
    power-of-two piece B (0 when A covers it). 576 -> (1, 576, 512, 64); 2048 at 640 ->
    (4, 512, 512, 0); 47 -> (1, 48, 32, 16)."""
    groups = triton.cdiv(d, max_acc)
    group = max(16, triton.cdiv(triton.cdiv(d, groups), 16) * 16)
    piece_a = _prev_power_of_2(group)
    rest = group - piece_a
    return groups, group, piece_a, triton.next_power_of_2(max(rest, 16)) if rest else 0


# triton.heuristics: the feature-group meta-parameters of a launch, from D and the config's
# MAX_ACC (a kernel parameter only so that they can be derived from it).
FEATURE_GROUP_META = {name: (lambda args, i=i: feature_groups(args["D"], args["MAX_ACC"])[i])
                      for i, name in enumerate(("D_GROUPS", "GROUP_D", "PIECE_A", "PIECE_B"))}


@triton.jit
def _load_tile(ptr, rows, row_ok, cols, col_ok, stride, UPCAST: tl.constexpr):
    """ptr[rows, cols] with masked entries 0; fp32 under the interpreter (UPCAST), whose numpy
    dot multiplies bf16 as raw integers."""
    x = tl.load(ptr + rows[:, None] * stride + cols[None, :],
                mask=row_ok[:, None] & col_ok[None, :], other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _group_dims(group, D, GROUP_D: tl.constexpr, PIECE_A: tl.constexpr, PIECE_B: tl.constexpr):
    """Columns of d in feature group ``group``, as piece A and piece B, with their masks (piece
    B is a dummy of 16 masked-off columns when PIECE_B is 0)."""
    begin = group * GROUP_D
    end = tl.minimum(begin + GROUP_D, D)
    dims_a = begin + tl.arange(0, PIECE_A)
    dims_b = begin + PIECE_A + tl.arange(0, PIECE_B if PIECE_B > 0 else 16)
    return dims_a, dims_a < end, dims_b, (dims_b < end) & (PIECE_B > 0)


@triton.jit
def _load_pieces(ptr, rows, row_ok, dims_a, ok_a, dims_b, ok_b, stride,
                 PIECE_B: tl.constexpr, UPCAST: tl.constexpr):
    a = _load_tile(ptr, rows, row_ok, dims_a, ok_a, stride, UPCAST)
    b = a  # unused without piece B
    if PIECE_B > 0:
        b = _load_tile(ptr, rows, row_ok, dims_b, ok_b, stride, UPCAST)
    return a, b


@triton.jit
def _dot_pieces(h_a, w_a, h_b, w_b, acc, PIECE_B: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """acc + h @ W^T over one feature group's pieces."""
    acc = tl.dot(h_a, tl.trans(w_a), acc, input_precision=DOT_PRECISION)
    if PIECE_B > 0:
        acc = tl.dot(h_b, tl.trans(w_b), acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def _logits_k_loop(h_ptr, w_ptr, rows, valid, cols, col_ok, D, stride_h, stride_w,
                   UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
    """h @ W_tile^T contracted over all of d, BLOCK_K columns at a time (several groups)."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        dims = k0 + tl.arange(0, BLOCK_K)
        dim_ok = dims < D
        h = _load_tile(h_ptr, rows, valid, dims, dim_ok, stride_h, UPCAST)
        w = _load_tile(w_ptr, cols, col_ok, dims, dim_ok, stride_w, UPCAST)
        acc = tl.dot(h, tl.trans(w), acc, input_precision=DOT_PRECISION)
    return acc


# N and SPLIT_COLS change with the batch: specializing on them (== 1, % 16) would compile each
# autotune config again per batch shape. N_BUCKET is read only by the autotuner's key.
@triton.jit(do_not_specialize=["N", "SPLIT_COLS", "N_BUCKET"])
def vocab_split_partials(
        h_ptr, w_ptr, b_ptr, tgt_ptr,
        max_ptr, sumexp_ptr, other_ptr, arg_ptr, tgt_logit_ptr, grad_part_ptr,
        N, V, D, stride_h, stride_w, SPLIT_COLS, N_BUCKET, LOGIT_SCALE, SOFTCAP,
        HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
        WANT_GRAD: tl.constexpr, UPCAST: tl.constexpr,
        DOT_PRECISION: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
        MAX_ACC: tl.constexpr, D_GROUPS: tl.constexpr, GROUP_D: tl.constexpr,
        PIECE_A: tl.constexpr, PIECE_B: tl.constexpr):
    """Writes, for scored rows, max/sumexp/other/arg [splits, N] at [split, row], the target's
    logit [N] (by the target's split) and, with WANT_GRAD, G [splits, N, D] at [split, row, :]
    (group g its own columns); the stats only from group 0."""
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    group = tl.program_id(2)
    rows = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    in_n = rows < N
    # int32 from here on (V < 2**31): an int64 [BLOCK_N, BLOCK_V] comparison costs registers
    tgt = tl.load(tgt_ptr + rows, mask=in_n, other=IGNORE_INDEX).to(tl.int32)
    valid = tgt != IGNORE_INDEX
    if tl.max(valid.to(tl.int32), axis=0) > 0:
        v_begin = split * SPLIT_COLS
        v_end = tl.minimum(v_begin + SPLIT_COLS, V)
        dims_a, ok_a, dims_b, ok_b = _group_dims(group, D, GROUP_D, PIECE_A, PIECE_B)
        if D_GROUPS <= 2:  # the rows' h, loaded once for the whole walk
            h_a, h_b = _load_pieces(h_ptr, rows, valid, dims_a, ok_a, dims_b, ok_b, stride_h,
                                    PIECE_B, UPCAST)
            if D_GROUPS == 2:  # the other group's columns, for the logits only
                o_a, ok_oa, o_b, ok_ob = _group_dims(1 - group, D, GROUP_D, PIECE_A, PIECE_B)
                h_oa, h_ob = _load_pieces(h_ptr, rows, valid, o_a, ok_oa, o_b, ok_ob, stride_h,
                                          PIECE_B, UPCAST)
        m_i = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
        s_i = tl.zeros((BLOCK_N,), dtype=tl.float32)
        arg_i = tl.zeros((BLOCK_N,), dtype=tl.int32)
        tgt_logit = tl.zeros((BLOCK_N,), dtype=tl.float32)
        other_max = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
        acc_a = tl.zeros((BLOCK_N, PIECE_A), dtype=tl.float32)
        acc_b = tl.zeros((BLOCK_N, PIECE_B if PIECE_B > 0 else 16), dtype=tl.float32)
        for v0 in range(v_begin, v_end, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            col_ok = cols < v_end
            # the tile's own-group columns of W, kept for the gradient product
            w_a, w_b = _load_pieces(w_ptr, cols, col_ok, dims_a, ok_a, dims_b, ok_b, stride_w,
                                    PIECE_B, UPCAST)
            if D_GROUPS <= 2:
                logits = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
                logits = _dot_pieces(h_a, w_a, h_b, w_b, logits, PIECE_B, DOT_PRECISION)
                if D_GROUPS == 2:
                    w_oa, w_ob = _load_pieces(w_ptr, cols, col_ok, o_a, ok_oa, o_b, ok_ob,
                                              stride_w, PIECE_B, UPCAST)
                    logits = _dot_pieces(h_oa, w_oa, h_ob, w_ob, logits, PIECE_B, DOT_PRECISION)
            else:
                logits = _logits_k_loop(h_ptr, w_ptr, rows, valid, cols, col_ok, D, stride_h,
                                        stride_w, UPCAST, DOT_PRECISION, BLOCK_N, BLOCK_V,
                                        BLOCK_K)
            if HAS_BIAS:
                logits += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
            if HAS_SCALE:
                logits = logits * LOGIT_SCALE
            if HAS_SOFTCAP:
                # tanh(x) = 1 - 2 / (exp(2x) + 1): exact at both ends (exp overflows to inf,
                # or underflows to 0), no libdevice call
                capped = 1.0 - 2.0 / (tl.exp(2.0 * logits / SOFTCAP) + 1.0)
                slope = 1.0 - capped * capped
                logits = SOFTCAP * capped
            logits = tl.where(col_ok[None, :], logits, float("-inf"))

            c_max, c_arg = tl.max(logits, axis=1, return_indices=True,
                                  return_indices_tie_break_left=True)
            arg_i = tl.where(c_max > m_i, v0 + c_arg.to(tl.int32), arg_i)
            m_new = tl.maximum(m_i, c_max)
            alpha = tl.exp(m_i - m_new)  # 0 on the first tile (m_i = -inf, m_new finite)
            p = tl.exp(logits - m_new[:, None])
            s_i = s_i * alpha + tl.sum(p, axis=1)
            m_i = m_new
            is_tgt = cols[None, :] == tgt[:, None]
            tgt_logit += tl.sum(tl.where(is_tgt, logits, 0.0), axis=1)
            other_max = tl.maximum(other_max,
                                   tl.max(tl.where(is_tgt, float("-inf"), logits), axis=1))
            if WANT_GRAD:
                # P in W's dtype: tensor cores need equal operand types (bf16 P as the torch
                # twin rounds it; its entries are <= 1 relative to the split's running max).
                if HAS_SOFTCAP:
                    p = p * slope
                p = tl.where(is_tgt, 0.0, p).to(w_ptr.dtype.element_ty)
                if UPCAST:
                    p = p.to(tl.float32)
                acc_a = tl.dot(p, w_a, acc_a * alpha[:, None], input_precision=DOT_PRECISION)
                if PIECE_B > 0:
                    acc_b = tl.dot(p, w_b, acc_b * alpha[:, None],
                                   input_precision=DOT_PRECISION)

        at = split * N + rows  # [split, row] in the [splits, N] statistics
        if group == 0:
            tl.store(max_ptr + at, m_i, mask=valid)
            tl.store(sumexp_ptr + at, s_i, mask=valid)
            tl.store(other_ptr + at, other_max, mask=valid)
            tl.store(arg_ptr + at, arg_i, mask=valid)
            tl.store(tgt_logit_ptr + rows, tgt_logit,
                     mask=valid & (tgt >= v_begin) & (tgt < v_end))
        if WANT_GRAD:
            g_rows = grad_part_ptr + at[:, None] * D
            tl.store(g_rows + dims_a[None, :], acc_a, mask=valid[:, None] & ok_a[None, :])
            if PIECE_B > 0:
                tl.store(g_rows + dims_b[None, :], acc_b, mask=valid[:, None] & ok_b[None, :])
