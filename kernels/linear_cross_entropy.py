"""Fused linear cross-entropy against a frozen LM head: loss, argmax, margin and d loss / d hidden,
the N x V logits never stored. Entry point and launch logic; the two kernels are

  linear_cross_entropy_partials.py  grid (row blocks x vocabulary splits x feature groups): per
      row and split the max, sum of exp, argmax, target logit, best other logit and the
      unnormalised gradient sum_v exp(logit_v - max) * W_v, in one walk of the split;
  linear_cross_entropy_combine.py   the splits merged in a fixed order into loss = lse - target
      logit, argmax, margin and grad = softmax @ W - W_target, in hidden's dtype.

Why split the vocabulary: a cramming step scores ~1k rows, which make only ~15 blocks of 64
rows; one program per row block walking all of V would leave most of an H200's 132 SMs idle.
Splitting V gives row blocks x splits programs. The number of splits is chosen from N, V and the
SM count alone (plan_vocab_splits), so every allocation depends on shapes only and no value is
read back to the host: a step stays capturable as a CUDA graph. The splits cost one fp32
[splits, N, d] buffer of partial gradients; the plan caps it (PARTIAL_BYTES_MAX), and it is small
by construction where it matters: splits > 1 only when row blocks alone cannot fill the device,
so splits x N stays about SMs x 64 rows.

Why one walk: the gradient's normalisation, exp(max - lse), is a per-row scalar, so each split
accumulates its gradient relative to its own running max (rescaled when the max rises, as the
sum of exp is) and the reduction applies the scalar afterwards. Logits and gradient are one
product each per tile, 4 N V d flops in all when the [rows, d] accumulator fits in registers;
where it does not, d is cut into feature groups that each recompute the logits (on sm_90 at
d = 576: two groups of 288 columns, 6 N V d flops, the W tile still loaded once per program for
both products). The configs, by GPU, are listed at CONFIGS_16BIT; tests/test_kernel_aot.py
compiles each for its GPU and checks its shared memory and spills.

Precision: bf16/fp16 products run on the tensor cores with fp32 accumulation, P rounded to W's
dtype for the second product, as the torch twin rounds it. fp32 inputs use FP32_DOT_PRECISION.
"""
import functools

import torch
import triton

from .interpreter import INTERPRET
from .linear_cross_entropy_combine import combine_vocab_splits
from .linear_cross_entropy_partials import FEATURE_GROUP_META, feature_groups, vocab_split_partials
from .targets import device_target, target_of_capability

# fp32 inputs: "tf32x3" splits each operand into a tf32 high part and a tf32 remainder and sums
# three tensor-core products, near fp32's accuracy (losses and argmaxes equal an "ieee" run's
# within the fp32 tests' 1e-5) at tensor-core speed; "ieee" (no tensor cores, FMA loops) is ~10x
# slower, plain "tf32" (10-bit mantissa) moves logits by ~1e-3 and can flip near-tied argmaxes.
# "ieee" stays selectable (fp32_precision=) for the tests that compare against it.
FP32_DOT_PRECISION = "tf32x3"
FP32_PRECISIONS = ("tf32x3", "tf32", "ieee")

# Splits are whole multiples of this many columns (every config's BLOCK_V divides it, so no
# tile straddles two splits) and at least MIN_SPLIT_COLS wide, so each program's fixed costs
# (loading its rows, writing its partials) stay small against its walk.
SPLIT_ALIGN = 256
MIN_SPLIT_COLS = 512
# Cap on the partial-gradient buffer, fp32 [splits, N, d]; one split always fits (it is the
# fp32 gradient accumulator that any fused kernel needs).
PARTIAL_BYTES_MAX = 128 << 20
# One split costs the reduction a write and a read of its [N, d] fp32 partials; in the plan's
# units (columns of one row block's walk on one SM) that is a few columns per row block.
SPLIT_COST_COLS = 4
# The plan counts programs as if each held 64 rows and all of d, which is what the main 16-bit
# config (128 rows, two feature groups) amounts to; without the gradient a program does all of
# d, so 128 rows.
PLAN_BLOCK_N = 64
# Under the interpreter there is no device to fill: a nominal SM count that still splits.
INTERPRET_SMS = 8


@functools.lru_cache(maxsize=4096)  # shapes repeat step after step: plan each once
def plan_vocab_splits(n, v, d, sms, rows_per_program=PLAN_BLOCK_N):
    """(splits, split_cols): the vocabulary cut into ``splits`` ranges of ``split_cols`` columns
    (the last may be shorter) so that row blocks (of ``rows_per_program`` rows) x splits
    programs fill ``sms`` SMs.

    Estimated time of a plan, in columns walked per SM: waves x split_cols, waves =
    ceil(row blocks x splits / sms) (one resident program per SM: the accumulator takes most
    of the registers), plus SPLIT_COST_COLS per row block and split for the reduction. The
    cheapest plan wins, ties to fewer splits."""
    row_blocks = triton.cdiv(max(n, 1), rows_per_program)
    most = max(1, min(triton.cdiv(v, MIN_SPLIT_COLS), PARTIAL_BYTES_MAX // max(n * d * 4, 1)))
    best = None
    for splits in range(1, most + 1):
        cols = triton.cdiv(triton.cdiv(v, splits), SPLIT_ALIGN) * SPLIT_ALIGN
        splits = triton.cdiv(v, cols)  # rounding up the width may leave fewer splits
        cost = triton.cdiv(row_blocks * splits, sms) * cols + SPLIT_COST_COLS * row_blocks * splits
        if best is None or cost < best[0]:
            best = (cost, splits, cols)
    return best[1], best[2]


@functools.cache
def _sm_count(device):
    if INTERPRET:
        return INTERPRET_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


# The interpreter runs programs one by one in numpy, paying per op: one fixed config of wide
# tiles. MAX_ACC 1024 keeps every test's d in one feature group; tests pass config= with a
# small MAX_ACC to cover the grouped path.
INTERPRET_CONFIG = dict(BLOCK_N=16, BLOCK_V=128, BLOCK_K=64, MAX_ACC=1024)


# On CUDA the autotuner times the configs of the launch's GPU (Target.config_arch) that fit its
# shared memory; each leaves registers for the [BLOCK_N, MAX_ACC] fp32 accumulator, the logits
# tile and the operands, so that ptxas compiles its vocabulary loop without spills
# (tests/test_kernel_aot.py checks that for realistic d and V, and records the one exception).
# The first that fits runs untimed on small problems.
# Rows: (BLOCK_N, BLOCK_V, MAX_ACC, num_warps, num_stages, config_arch).
#   16-bit, sm_90: BLOCK_N 128 on 8 warps (a 64-row wgmma per warpgroup; BLOCK_N 64 on 8 warps
#   would compute every logit twice) with two feature groups of 288 accumulator columns (MAX_ACC
#   288): h and two stages of W in shared memory at d = 576; BLOCK_V 64, or BLOCK_N 64 on 4
#   warps, spill in the loop. MAX_ACC 160 (a K loop over d) is the fallback for wide d.
#   16-bit, sm_80 (mma.sync takes its operands from registers too; 163 KiB of shared memory):
#   the sm_90 tiles spill or do not fit. BLOCK_V 32 at MAX_ACC 160 (a K loop) spills at no d and
#   comes first; BLOCK_N 64 on 4 warps keeps h in shared memory at d = 576 (at d = 4096 it
#   spills in the vocabulary loop, outside the K loop, and is timed against the first).
#   fp32 (tf32x3 splits each operand in two, in registers and shared memory): hoisting h does not
#   fit; on sm_90 groups of 96 columns (six for d = 576) run without spills, on sm_80 only
#   BLOCK_V 16 with groups of 64.
def _configs(rows):
    """{config: the config_arch it is for} of the rows."""
    return {triton.Config(dict(BLOCK_N=n, BLOCK_V=v, BLOCK_K=64, MAX_ACC=acc),
                          num_warps=w, num_stages=s): arch for n, v, acc, w, s, arch in rows}


CONFIGS_16BIT = _configs([(128, 32, 288, 8, 2, 90), (128, 64, 160, 8, 2, 90),
                          (128, 32, 160, 8, 2, 80), (64, 32, 288, 4, 2, 80)])
CONFIGS_FP32 = _configs([(128, 32, 96, 8, 2, 90), (128, 16, 64, 8, 2, 80)])
# What Triton may add to the hoisted h and W tiles in shared memory (reductions, layout
# conversions): the pruning keeps this much of a GPU's shared memory free.
SMEM_HEADROOM = 6 << 10
# The GPU assumed where a launch's tensors are on none (unit tests of the pruning): the one of
# least shared memory among those the configs are compiled for (tests/test_kernel_aot.py).
NO_DEVICE_TARGET = target_of_capability((8, 0))
SMEM_BYTES = NO_DEVICE_TARGET.smem_bytes
# Problems below this many multiply-adds (N V d) run the first fitting config untimed: tuning
# costs more than it could save, and each config is a compile (the compiled tests' shapes).
TUNE_MIN_MACS = 1 << 28


def _hoisted_smem_bytes(config, d, elem_bytes):
    """Shared memory of the hoisted path (one or two groups): the rows' h plus num_stages W
    tiles, all of d; fp32 counts twice (tf32x3 keeps each operand's high and low parts)."""
    groups, _, piece_a, piece_b = feature_groups(d, config.kwargs["MAX_ACC"])
    cols = groups * (piece_a + piece_b)
    rows = config.kwargs["BLOCK_N"] + config.num_stages * config.kwargs["BLOCK_V"]
    return rows * cols * elem_bytes * (2 if elem_bytes == 4 else 1), groups


def _launch_target(tensor):
    """The Target of the GPU ``tensor`` is on (NO_DEVICE_TARGET for none, or for the unit tests'
    stand-ins, which have no device)."""
    device = getattr(tensor, "device", None)
    return device_target(device) if device is not None and device.type == "cuda" \
        else NO_DEVICE_TARGET


def _prune_configs(configs, named_args, target=None, **kwargs):
    """The configs worth timing for this launch: those of its dtype for ``target`` (a
    kernels.targets.Target; by default the GPU that h is on) whose hoisted h and W fit in its
    shared memory, one per distinct set of derived tiles (small d makes MAX_ACC irrelevant), and
    only the first for small problems. ``kwargs``: the launch's other arguments, which the
    autotuner passes."""
    d, n, v = named_args["D"], named_args["N"], named_args["V"]
    elem = named_args["h_ptr"].element_size()
    target = target or _launch_target(named_args["h_ptr"])
    table = CONFIGS_FP32 if elem == 4 else CONFIGS_16BIT
    ours = [config for config, arch in table.items() if arch == target.config_arch]
    kept, seen = [], set()
    for config in ours:
        smem, groups = _hoisted_smem_bytes(config, d, elem)
        derived = (config.kwargs["BLOCK_N"], config.kwargs["BLOCK_V"], config.num_warps,
                   config.num_stages, feature_groups(d, config.kwargs["MAX_ACC"]))
        if (groups <= 2 and smem + SMEM_HEADROOM > target.smem_bytes) or derived in seen:
            continue
        seen.add(derived)
        kept.append(config)
    kept = kept or ours[-1:]
    return kept[:1] if n * v * d < TUNE_MIN_MACS else kept


_partials = triton.heuristics(FEATURE_GROUP_META)(vocab_split_partials)
if not INTERPRET:
    # N_BUCKET (N rounded up to a power of two) re-tunes per size class of N: the best tile
    # for 60 rows (one text) is not the best for 16k (a full batch). Tensor dtypes join the
    # key on their own. Every output is overwritten, so trials need no reset.
    _tuned_partials = triton.autotune(
        configs=[*CONFIGS_16BIT, *CONFIGS_FP32],
        key=["N_BUCKET", "V", "D", "HAS_BIAS", "HAS_SOFTCAP", "WANT_GRAD", "DOT_PRECISION"],
        prune_configs_by=dict(early_config_prune=_prune_configs))(_partials)

# The reduction streams [splits, N, d] fp32 partials: small tiles, many programs.
COMBINE_BLOCKS = dict(BLOCK_R=16, BLOCK_D=128)
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def linear_cross_entropy_forward(hidden, weight, targets, bias, want_grad, *,
                                 logit_scale=1.0, softcap=None,
                                 fp32_precision=FP32_DOT_PRECISION, vocab_splits=None,
                                 config=None):
    """(loss [N] fp32, argmax [N] int64, margin [N] fp32, grad [N, d] in hidden.dtype or None);
    shapes checked by cramfast.ops.linear_cross_entropy, the public entry.

    Keywords for tests and benchmarks: ``fp32_precision`` the dot precision of fp32 inputs,
    ``vocab_splits`` a split count instead of the plan's, ``config`` the partial kernel's
    meta-parameters (BLOCK_N, BLOCK_V, BLOCK_K, MAX_ACC, and on CUDA num_warps, num_stages)
    instead of the autotuner's choice. ``logit_scale`` and ``softcap``: the model's logits
    (cramfast.ops.linear_cross_entropy)."""
    if hidden.dtype != weight.dtype or hidden.dtype not in _DTYPES:
        raise TypeError(f"linear_cross_entropy (triton): hidden and weight must share one of "
                        f"fp32/bf16/fp16, got {hidden.dtype} and {weight.dtype}")
    if fp32_precision not in FP32_PRECISIONS:
        raise ValueError(f"linear_cross_entropy (triton): fp32_precision must be one of "
                         f"{FP32_PRECISIONS}, got {fp32_precision!r}")
    if not INTERPRET and not hidden.is_cuda:
        raise RuntimeError("linear_cross_entropy (triton): tensors must be on CUDA, or set "
                           "TRITON_INTERPRET=1 before importing cramfast to run on CPU")
    outputs, launches = linear_cross_entropy_launches(
        hidden, weight, targets, bias, want_grad, _sm_count(hidden.device),
        logit_scale=logit_scale, softcap=softcap, fp32_precision=fp32_precision,
        vocab_splits=vocab_splits, config=config)
    for kernel, grid, args, kwargs in launches:
        kernel[grid](*args, **kwargs)
    return outputs


def linear_cross_entropy_launches(hidden, weight, targets, bias, want_grad, sms, *,
                                  logit_scale=1.0, softcap=None,
                                  fp32_precision=FP32_DOT_PRECISION, vocab_splits=None,
                                  config=None):
    """(outputs, launches): the forward's outputs, allocated, and the kernel launches that fill
    them, in order, as (kernel, grid, args, kwargs); ``sms`` the SM count the split plan fills.
    Allocates only (no kernel runs), so on tensors of the meta device it lists the launches of
    any shape for free: what kernels/aot.py compiles."""
    (n, d), v, dev = hidden.shape, weight.shape[0], hidden.device
    hidden = hidden if hidden.stride(1) == 1 else hidden.contiguous()
    weight = weight if weight.stride(1) == 1 else weight.contiguous()
    targets = targets.contiguous()
    bias = bias.contiguous() if bias is not None else None

    splits, split_cols = plan_vocab_splits(n, v, d, sms,
                                           PLAN_BLOCK_N if want_grad else 2 * PLAN_BLOCK_N)
    if vocab_splits is not None:
        split_cols = triton.cdiv(triton.cdiv(v, vocab_splits), SPLIT_ALIGN) * SPLIT_ALIGN
        splits = triton.cdiv(v, split_cols)
    # Every element of the outputs is written by the reduction: no fill needed.
    loss = torch.empty(n, dtype=torch.float32, device=dev)
    argmax = torch.empty(n, dtype=torch.int64, device=dev)
    margin = torch.empty(n, dtype=torch.float32, device=dev)
    grad = torch.empty(n, d, dtype=hidden.dtype, device=dev) if want_grad else None
    outputs = (loss, argmax, margin, grad)
    if n == 0:
        return outputs, []
    stats = torch.empty(3, splits, n, dtype=torch.float32, device=dev)  # max, sumexp, other
    arg = torch.empty(splits, n, dtype=torch.int32, device=dev)
    tgt_logit = torch.empty(n, dtype=torch.float32, device=dev)
    # Unused slots get any tensor of a fitting dtype (never read).
    grad_part = torch.empty(splits, n, d, dtype=torch.float32, device=dev) if want_grad \
        else stats

    transform = (float(logit_scale), float(softcap or 1.0))     # LOGIT_SCALE, SOFTCAP
    flags = dict(HAS_SCALE=logit_scale != 1.0, HAS_SOFTCAP=softcap is not None)
    precision = fp32_precision if hidden.dtype == torch.float32 else "tf32"  # ignored for 16-bit
    if config is None and not INTERPRET:
        kernel, meta = _tuned_partials, {}
    else:
        kernel, meta = _partials, dict(INTERPRET_CONFIG if config is None else config)
    # Without the gradient one program per row block and split does it all: group 0 computes
    # the whole logits tile whatever D_GROUPS is, and the other groups would only add gradient.
    partials = (
        kernel,
        lambda m: (triton.cdiv(n, m["BLOCK_N"]), splits, m["D_GROUPS"] if want_grad else 1),
        (hidden, weight, bias if bias is not None else hidden, targets,
         stats[0], stats[1], stats[2], arg, tgt_logit, grad_part,
         n, v, d, hidden.stride(0), weight.stride(0), split_cols, triton.next_power_of_2(n),
         *transform),
        dict(HAS_BIAS=bias is not None, **flags, WANT_GRAD=want_grad, UPCAST=INTERPRET,
             DOT_PRECISION=precision, **meta))
    combine = (
        combine_vocab_splits,
        (triton.cdiv(n, COMBINE_BLOCKS["BLOCK_R"]),
         triton.cdiv(d, COMBINE_BLOCKS["BLOCK_D"]) if want_grad else 1),
        (stats[0], stats[1], stats[2], arg, tgt_logit, grad_part,
         weight, targets, loss, argmax, margin, grad if want_grad else loss,
         n, v, d, splits, weight.stride(0), *transform),
        dict(**flags, WANT_GRAD=want_grad, **COMBINE_BLOCKS))
    return outputs, [partials, combine]
