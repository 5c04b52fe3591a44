"""Triton linear_cross_entropy (cramfast.kernels, reached through cramfast.ops) against the
full-logits reference and the chunked torch twin (cramfast.twins).

On CPU the kernel runs in the Triton interpreter (conftest.py sets TRITON_INTERPRET=1); with
TRITON_INTERPRET=0 on a CUDA machine the same tests run the compiled kernel
(benchmarks/gpu_check.py). The interpreter's config is BLOCK_N=16, BLOCK_V=128 with all of d in
one feature group, and its nominal 8 SMs make the split plan cut V >= 1024 into several
vocabulary splits of 512 columns: the shapes below span several row blocks, vocabulary tiles
and splits with ragged tails; tests that need more splits or several feature groups ask for
them (vocab_splits=, config=).
"""
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cramfast import kernels, ops
from cramfast.kernels import linear_cross_entropy as lce_module
from cramfast.kernels.interpreter import INTERPRET  # conftest set TRITON_INTERPRET
from cramfast.kernels.linear_cross_entropy_partials import feature_groups
from cramfast.ops import twins

from conftest import KERNEL_DEVICE, KERNEL_TOL, needs_kernels


def triton_lce(hidden, weight, targets, bias=None):
    return ops.linear_cross_entropy(hidden, weight, targets, bias, backend="triton")


def torch_lce(hidden, weight, targets, bias=None):
    return ops.linear_cross_entropy(hidden, weight, targets, bias, backend="torch")

DEVICE = KERNEL_DEVICE
pytestmark = needs_kernels

TOL = KERNEL_TOL


def make_case(n, d, v, dtype=torch.float32, bias=False, masked=(), seed=0):
    """Random inputs with logits of unit scale (weight ~ N(0, 1/d)): no near-ties, no overflow."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g)
    weight = torch.randn(v, d, generator=g) / d ** 0.5
    targets = torch.randint(0, v, (n,), generator=g)
    targets[list(masked)] = ops.IGNORE_INDEX
    b = torch.randn(v, generator=g) if bias else None
    grad_loss = torch.rand(n, generator=g) + 0.5  # unequal row weights test backward's scaling
    cast = lambda x: None if x is None else x.to(DEVICE, dtype)
    return (cast(hidden), cast(weight), targets.to(DEVICE), cast(b),
            grad_loss.to(DEVICE))


def run(fn, hidden, weight, targets, bias, grad_loss):
    h = hidden.detach().clone().requires_grad_()
    loss, argmax, _margin = fn(h, weight, targets, bias)
    loss.backward(grad_loss)
    return loss.detach(), argmax, h.grad


def reference(hidden, weight, targets, bias, grad_loss):
    """Full-logits answer in fp32 from the (possibly bf16-rounded) inputs, plus the logits."""
    up = lambda x: None if x is None else x.float()
    out = run(twins.linear_cross_entropy_naive, up(hidden), up(weight), targets, up(bias),
              grad_loss)
    logits = hidden.float() @ weight.float().T + (0 if bias is None else bias.float())
    return out, logits


def assert_argmax_ok(argmax, logits, targets, atol):
    """argmax is -1 on masked rows and elsewhere points at a logit within atol of the row max
    (exact index equality is only asked for in fp32, where reorderings cannot flip it)."""
    mask = targets != ops.IGNORE_INDEX
    assert argmax.dtype == torch.int64
    assert (argmax[~mask] == -1).all()
    rows = logits[mask]
    picked = rows.gather(1, argmax[mask][:, None]).squeeze(1)
    assert (picked >= rows.max(dim=1).values - atol).all()


def check_against_reference(case, dtype):
    _hidden, _weight, targets, _bias, _grad_loss = case
    loss, argmax, grad = run(triton_lce, *case)
    (ref_loss, ref_argmax, ref_grad), logits = reference(*case)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(loss, ref_loss, **TOL[dtype])
    torch.testing.assert_close(grad.float(), ref_grad, **TOL[dtype])
    assert_argmax_ok(argmax, logits, targets, atol=TOL[dtype]["atol"])
    if dtype == torch.float32:
        assert torch.equal(argmax, ref_argmax)
    masked = targets == ops.IGNORE_INDEX
    assert (loss[masked] == 0).all() and (grad[masked] == 0).all()
    return loss, argmax, grad


SHAPES = {
    "single_row_odd": dict(n=1, d=47, v=123),
    # 3 row blocks (the middle one fully masked: the skipped path), 3 feature and vocabulary
    # blocks, each with a ragged tail.
    "multi_block_masked": dict(n=40, d=300, v=1100, masked=[0, 5] + list(range(16, 32))),
    "all_masked_but_one": dict(n=20, d=33, v=77, masked=[i for i in range(20) if i != 7]),
}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_matches_reference(shape, dtype, bias):
    check_against_reference(make_case(**shape, dtype=dtype, bias=bias), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_matches_torch_backend(dtype):
    case = make_case(n=40, d=300, v=1100, dtype=dtype, bias=True, masked=[3, 17, 18])
    loss, argmax, grad = run(triton_lce, *case)
    t_loss, t_argmax, t_grad = run(torch_lce, *case)
    torch.testing.assert_close(loss, t_loss, **TOL[dtype])
    torch.testing.assert_close(grad, t_grad, **TOL[dtype])
    if dtype == torch.float32:
        assert torch.equal(argmax, t_argmax)
    else:  # the torch backend rounds logits to bf16, which can reorder near-equal ones
        assert (argmax == t_argmax).float().mean() > 0.9


def test_vocab_beyond_int16_range():
    """V = 65601 > 65536: column indices, argmax and target above 2**16."""
    hidden, weight, targets, bias, grad_loss = make_case(n=3, d=4, v=65601)
    weight[65590] = 4 * hidden[0]  # a winning column past 65536 for row 0
    targets[1] = 65600
    _loss, argmax, _ = check_against_reference((hidden, weight, targets, bias, grad_loss),
                                              torch.float32)
    assert argmax[0] == 65590


def test_all_rows_masked():
    case = make_case(n=5, d=16, v=40, masked=range(5))
    loss, argmax, grad = run(triton_lce, *case)
    assert (loss == 0).all() and (argmax == -1).all() and (grad == 0).all()


@settings(max_examples=8, deadline=None, derandomize=True)
@given(n=st.integers(1, 40), d=st.integers(1, 140), v=st.integers(1, 1100),
       bias=st.booleans(), mask_bits=st.integers(0, 2 ** 40 - 1), seed=st.integers(0, 2 ** 16))
def test_property_random_shapes(n, d, v, bias, mask_bits, seed):
    masked = [i for i in range(n) if mask_bits >> i & 1]
    check_against_reference(make_case(n, d, v, bias=bias, masked=masked, seed=seed), torch.float32)


def test_gradcheck_finite_differences():
    """The contract accumulates in fp32 and returns an fp32 loss, so an fp64 gradcheck could
    only see fp32 rounding (the interpreter itself handles fp64: mem_embed is gradchecked in
    fp64). Instead: central differences in fp32 with a wide step and loose tolerances, over
    the full Jacobian, a masked row included."""
    hidden, weight, targets, bias, _ = make_case(n=4, d=6, v=9, bias=True, masked=[2])
    hidden.requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "not double precision"
        assert torch.autograd.gradcheck(
            lambda h: triton_lce(h, weight, targets, bias)[0], (hidden,),
            eps=1e-2, atol=2e-3, rtol=2e-2)


def test_gradient_only_when_needed(monkeypatch):
    """The gradient pass runs only when hidden requires grad and grad mode is on."""
    seen = []
    forward = kernels.linear_cross_entropy_forward
    monkeypatch.setattr(kernels, "linear_cross_entropy_forward",
                        lambda *args, **kw: seen.append(args[-1]) or forward(*args, **kw))
    hidden, weight, targets, _, _ = make_case(n=4, d=8, v=20)
    loss_plain, _, _ = triton_lce(hidden, weight, targets)
    h = hidden.clone().requires_grad_()
    with torch.no_grad():
        loss_nograd, _, _ = triton_lce(h, weight, targets)
    loss_grad, argmax, margin = triton_lce(h, weight, targets)
    assert seen == [False, False, True]
    assert not loss_plain.requires_grad and not loss_nograd.requires_grad
    assert loss_grad.requires_grad and not argmax.requires_grad and not margin.requires_grad
    torch.testing.assert_close(loss_plain, loss_grad.detach(), rtol=0, atol=0)


def test_rejects_mixed_dtypes():
    hidden, weight, targets, _, _ = make_case(n=2, d=8, v=10)
    with pytest.raises(TypeError):
        triton_lce(hidden, weight.to(torch.bfloat16), targets)


def test_ops_routes_triton_backend(monkeypatch):
    """cramfast.ops.linear_cross_entropy(backend='triton') reaches this kernel (no silent
    fallback) and agrees with backend='torch'."""
    calls = []
    kernel = kernels.linear_cross_entropy_forward
    monkeypatch.setattr(kernels, "linear_cross_entropy_forward",
                        lambda *args, **kw: calls.append(1) or kernel(*args, **kw))
    case = make_case(n=20, d=40, v=600, bias=True, masked=[1, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fallback to torch would warn
        tri = run(triton_lce, *case)
    ref = run(torch_lce, *case)
    assert calls == [1]
    torch.testing.assert_close(tri[0], ref[0], **TOL[torch.float32])
    assert torch.equal(tri[1], ref[1])
    torch.testing.assert_close(tri[2], ref[2], **TOL[torch.float32])


def test_auto_backend_is_triton_on_cuda_for_its_dtypes_only():
    """backend='auto' picks the kernels for CUDA tensors they compile for (fp32/bf16/fp16) and
    the torch twin for fp64 (the exactness tests' dtype) and for CPU tensors."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert ops.resolve_backend("auto", cuda, dtype) == "triton"
        assert ops.resolve_backend("auto", cpu, dtype) == "torch"
    assert ops.resolve_backend("auto", cuda, torch.float64) == "torch"


def reference_margin(logits, targets):
    """The target's logit minus the best other logit, 0 on masked rows, from full logits."""
    mask = targets != ops.IGNORE_INDEX
    safe = targets.clamp_min(0)
    others = logits.scatter(1, safe[:, None], float("-inf")).amax(dim=1)
    return torch.where(mask, logits.gather(1, safe[:, None]).squeeze(1) - others, 0.0)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("impl", [triton_lce, torch_lce], ids=["triton", "torch"])
def test_margin_matches_reference(shape, dtype, impl):
    hidden, weight, targets, bias, _ = make_case(**shape, dtype=dtype, bias=True)
    _, argmax, margin = impl(hidden, weight, targets, bias)
    logits = hidden.float() @ weight.float().T + bias.float()
    torch.testing.assert_close(margin, reference_margin(logits, targets), **TOL[dtype])
    scored = targets != ops.IGNORE_INDEX
    # a positive margin means the target is the argmax (and a negative one that it is not)
    clear = scored & (margin.abs() > TOL[dtype]["atol"])
    assert torch.equal((argmax == targets)[clear], (margin > 0)[clear])


def test_margin_of_a_one_word_vocabulary_is_infinite():
    hidden, weight, targets, _, _ = make_case(n=3, d=5, v=1, masked=[1])
    for impl in (triton_lce, torch_lce):
        _, _, margin = impl(hidden, weight, targets)
        assert margin[0] == float("inf") and margin[1] == 0 and margin[2] == float("inf")


# --- the vocabulary-parallel design: splits, feature groups, ties, determinism, precision ---

def forward(case, **options):
    """The kernel's forward directly (with its test keywords), gradient wanted."""
    hidden, weight, targets, bias, _ = case
    return kernels.linear_cross_entropy_forward(hidden, weight, targets, bias, True, **options)


def assert_forward_matches_reference(case, dtype, **options):
    hidden, weight, targets, bias, _ = case
    loss, argmax, margin, grad = forward(case, **options)
    ones = torch.ones_like(case[4])
    (ref_loss, _, ref_grad), logits = reference(hidden, weight, targets, bias, ones)
    torch.testing.assert_close(loss, ref_loss, **TOL[dtype])
    torch.testing.assert_close(grad.float(), ref_grad, **TOL[dtype])
    torch.testing.assert_close(margin, reference_margin(logits, targets), **TOL[dtype])
    assert_argmax_ok(argmax, logits, targets, atol=TOL[dtype]["atol"])
    masked = targets == ops.IGNORE_INDEX
    assert (loss[masked] == 0).all() and (grad[masked] == 0).all() and (margin[masked] == 0).all()
    return loss, argmax, margin, grad


# d = 300 in one group (the default config), in two groups of 160 = 128 + 32 (the hoisted path
# with the other group's columns), and in three groups of 112 = 64 + 64 (the K loop over d).
# Wide tiles for the interpreter's speed; on CUDA tiles whose shared memory fits an SM.
_TILES = dict(BLOCK_V=128, BLOCK_K=128) if INTERPRET else dict(BLOCK_V=32, BLOCK_K=32)
FEATURE_CONFIGS = {"one_group": None,
                   "two_groups": dict(BLOCK_N=16, MAX_ACC=160, num_warps=4, num_stages=1,
                                      **_TILES),
                   "k_loop": dict(BLOCK_N=16, MAX_ACC=128, num_warps=4, num_stages=1, **_TILES)}


@pytest.mark.parametrize("config", FEATURE_CONFIGS.values(), ids=FEATURE_CONFIGS.keys())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_splits_and_feature_groups_match_reference(config, dtype):
    """Three vocabulary splits of 512 columns over V = 1100 (the last ragged), ragged row and
    feature tails, a masked row block (rows 16-31), with a bias."""
    case = make_case(n=40, d=300, v=1100, dtype=dtype, bias=True,
                     masked=[0, 5] + list(range(16, 32)))
    assert lce_module.plan_vocab_splits(40, 1100, 300, lce_module.INTERPRET_SMS)[0] == 3
    options = {} if config is None else dict(config=config)
    if config is not None:
        assert feature_groups(300, config["MAX_ACC"])[0] == (2 if config["MAX_ACC"] == 160 else 3)
    loss, argmax, margin, _ = assert_forward_matches_reference(case, dtype, **options)
    # without the gradient (one program per row block and split, a separately compiled
    # kernel, maybe another tile): the same statistics up to fp32 rounding
    hidden, weight, targets, bias, _ = case
    plain = kernels.linear_cross_entropy_forward(hidden, weight, targets, bias, False, **options)
    assert plain[3] is None and torch.equal(plain[1], argmax)
    torch.testing.assert_close(plain[0], loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain[2], margin, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("splits", [1, 2, 5])
def test_split_count_does_not_change_results(splits):
    """V = 1300 as one, two or five splits (the last ragged): same answer within fp32 rounding."""
    case = make_case(n=20, d=40, v=1300, masked=[3])
    loss, argmax, _margin, grad = assert_forward_matches_reference(case, torch.float32,
                                                                  vocab_splits=splits)
    ref = forward(case, vocab_splits=1)
    torch.testing.assert_close(loss, ref[0], rtol=1e-6, atol=1e-6)
    assert torch.equal(argmax, ref[1])
    torch.testing.assert_close(grad, ref[3], rtol=1e-6, atol=1e-6)


def tie_case(dtype):
    """Exact small-integer logits (so ties are exact whatever the summation order): rows 0-2 have
    h = 2 e_i, W rows are random in {-1, 0, 1} (logits in [-2, 2]) except winners W = 10 h_i
    (logit 40 for row i, 0 for the others). V = 700 in three splits of 256 and tiles of 128.
      row 0: winners at 130 (split 0), 300 (split 1), 600 (split 2); target 300, tied -> argmax
             130, margin 0
      row 1: winners at 140 and 135 (one tile); target 5 -> argmax 135, margin 2 - 40 or less
      row 2: winner at 450 only, the target -> argmax 450, margin 40 - (best other <= 2)
      row 3: masked."""
    g = torch.Generator().manual_seed(3)
    d, v = 8, 700
    hidden = torch.zeros(4, d)
    hidden[0, 0], hidden[1, 1], hidden[2, 2], hidden[3, 3] = 2.0, 2.0, 2.0, 2.0
    weight = torch.randint(-1, 2, (v, d), generator=g).float()
    for row, cols in ((0, (130, 300, 600)), (1, (140, 135)), (2, (450,))):
        weight[list(cols)] = 10 * hidden[row]
    targets = torch.tensor([300, 5, 450, ops.IGNORE_INDEX])
    cast = lambda x: x.to(DEVICE, dtype)
    return cast(hidden), cast(weight), targets.to(DEVICE), None, torch.ones(4, device=DEVICE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["fp32", "bf16", "fp16"])
def test_argmax_ties_go_to_the_lowest_index(dtype):
    case = tie_case(dtype)
    loss, argmax, margin, _grad = forward(case, vocab_splits=3)
    assert argmax.tolist() == [130, 135, 450, -1]
    assert margin[0] == 0 and margin[1] < -30 and margin[2] >= 38 and margin[3] == 0
    hidden, weight, targets, _, _ = case
    n_loss, n_argmax, n_margin = twins.linear_cross_entropy_naive(hidden.float(), weight.float(),
                                                                  targets)
    assert torch.equal(argmax, n_argmax)
    torch.testing.assert_close(margin, n_margin, rtol=0, atol=0)
    torch.testing.assert_close(loss, n_loss, **TOL[dtype])
    _, t_argmax, t_margin, _ = twins.linear_cross_entropy_torch(*case[:4], want_grad=False)
    assert torch.equal(argmax, t_argmax) and torch.equal(margin, t_margin.float())


def test_two_runs_are_bit_identical():
    """No atomics, no order left to scheduling: loss, argmax, margin and gradient repeat
    exactly, with several splits and several feature groups."""
    case = make_case(n=20, d=200, v=1100, dtype=torch.bfloat16, bias=True, masked=[2, 17])
    for options in (dict(vocab_splits=3),
                    dict(vocab_splits=2, config=FEATURE_CONFIGS["two_groups"])):
        first, second = forward(case, **options), forward(case, **options)
        for a, b in zip(first, second):
            assert torch.equal(a, b)


def test_gradient_accurate_when_the_target_is_nearly_certain():
    """p(target) ~ 1 - 1e-5: the gradient, ~1e-5 of |W_target|, keeps a few percent relative
    accuracy in bf16 (the target's term is added in fp32, not as a difference of rounded
    vectors), against an fp64 reference on the same bf16 inputs."""
    g = torch.Generator().manual_seed(5)
    n, d, v = 6, 64, 900
    weight = (torch.randn(v, d, generator=g) / d ** 0.5).to(torch.bfloat16)
    targets = torch.randint(0, v, (n,), generator=g)
    hidden = (20 * weight[targets].float() / weight[targets].float().norm(dim=1, keepdim=True)
              ** 2).to(torch.bfloat16)
    _, _, _, grad = kernels.linear_cross_entropy_forward(
        hidden.to(DEVICE), weight.to(DEVICE), targets.to(DEVICE), None, True, vocab_splits=2)
    probs = torch.softmax(hidden.double() @ weight.double().T, dim=1)
    p_target = probs.gather(1, targets[:, None])
    assert (p_target > 0.99).all() and (p_target < 1 - 1e-7).all()
    ref = probs @ weight.double() - weight.double()[targets]
    error = (grad.double().cpu() - ref).norm(dim=1) / ref.norm(dim=1)
    assert (error < 0.05).all(), error


def test_fp32_precision_matches_ieee():
    """The fp32 dot precision (FP32_DOT_PRECISION, tensor cores on CUDA) gives the losses,
    margins and gradients of an "ieee" run within the fp32 tolerance and the same argmaxes
    (the interpreter's numpy dot ignores the precision: this bites on CUDA)."""
    assert lce_module.FP32_DOT_PRECISION in ("tf32x3", "ieee")
    case = make_case(n=40, d=300, v=1100, bias=True, masked=[7])
    fast = forward(case)
    exact = forward(case, fp32_precision="ieee")
    for a, b in zip(fast, exact):
        if a.dtype == torch.int64:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, **TOL[torch.float32])
    with pytest.raises(ValueError):
        forward(case, fp32_precision="bf16")


def test_split_plan_fills_the_device_within_its_memory_bound():
    plan = lce_module.plan_vocab_splits
    for n, v, d, sms in [(960, 49152, 576, 132), (16384, 49152, 576, 132), (1, 49152, 576, 132),
                         (60, 128256, 2048, 132), (4096, 128256, 2048, 132), (40, 1100, 300, 8),
                         (3, 1, 4, 132)]:
        splits, cols = plan(n, v, d, sms)
        assert cols % lce_module.SPLIT_ALIGN == 0
        assert (splits - 1) * cols < v <= splits * cols  # no empty split, all of V covered
        assert splits == 1 or splits * n * d * 4 <= lce_module.PARTIAL_BYTES_MAX
    row_blocks = 960 // lce_module.PLAN_BLOCK_N  # 15: eight splits make 120 programs, one wave
    assert plan(960, 49152, 576, 132)[0] * row_blocks in range(100, 133)
    assert plan(16384, 49152, 576, 132)[0] == 1  # 256 row blocks fill 132 SMs on their own


def test_feature_groups_cover_d_in_power_of_two_pieces():
    assert feature_groups(576, 640) == (1, 576, 512, 64)
    assert feature_groups(576, 288) == (2, 288, 256, 32)
    assert feature_groups(47, 288) == (1, 48, 32, 16)
    for d in (1, 16, 47, 300, 576, 960, 2048, 4096):
        for max_acc in (64, 96, 160, 288, 640):
            groups, group, a, b = feature_groups(d, max_acc)
            assert groups * group >= d and (groups - 1) * group < d and group % 16 == 0
            assert a & (a - 1) == 0 and (b == 0 or b & (b - 1) == 0) and a + b >= group
            assert group <= -(-max_acc // 16) * 16  # at most MAX_ACC, rounded up to 16

def test_config_pruning_fits_shared_memory():
    """The autotuner times only configs whose hoisted h and W fit in an SM's shared memory,
    the fp32 ones for fp32, and a single one for small problems."""
    class Tensor:
        def __init__(self, elem):
            self.elem = elem

        def element_size(self):
            return self.elem

    prune = lce_module._prune_configs
    big_bf16 = prune(None, dict(D=576, N=16384, V=49152, h_ptr=Tensor(2)))
    assert len(big_bf16) > 1 and all(c in lce_module.CONFIGS_16BIT for c in big_bf16)
    for config in big_bf16:
        smem, groups = lce_module._hoisted_smem_bytes(config, 576, 2)
        assert groups > 2 or smem <= lce_module.SMEM_BYTES
    fp32 = prune(None, dict(D=576, N=16384, V=49152, h_ptr=Tensor(4)))
    assert fp32 and all(c in lce_module.CONFIGS_FP32 for c in fp32)
    assert len(prune(None, dict(D=47, N=1, V=123, h_ptr=Tensor(2)))) == 1


@pytest.mark.skipif(INTERPRET, reason="CUDA graphs and CUDA's sync checks need a GPU")
def test_forward_never_syncs_and_replays_in_a_cuda_graph():
    case = make_case(n=300, d=576, v=5000, dtype=torch.bfloat16, masked=range(0, 300, 7))
    call = lambda: forward(case)
    expected = call()  # compiles and tunes outside the checks
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync (.item(), nonzero()) raises
    try:
        again = call()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = call()
    graph.replay()
    torch.cuda.synchronize()
    for a, b, c in zip(expected, again, captured):
        assert torch.equal(a, b) and torch.equal(a, c)
