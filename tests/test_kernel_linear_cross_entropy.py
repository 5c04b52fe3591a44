"""Triton linear_cross_entropy (cramfast.kernels, reached through cramfast.ops) against the
full-logits reference and the chunked torch twin (cramfast.twins).

On CPU the kernel runs in the Triton interpreter (conftest.py sets TRITON_INTERPRET=1); with
TRITON_INTERPRET=0 on a CUDA machine the same tests run the compiled kernel
(benchmarks/gpu_check.py). The interpreter's config is BLOCK_N=16, BLOCK_V=512, BLOCK_D=128:
the shapes below are chosen to span several row, vocabulary and feature blocks with ragged tails.
"""
import os
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cramfast import kernels, ops, twins


def triton_lce(hidden, weight, targets, bias=None):
    return ops.linear_cross_entropy(hidden, weight, targets, bias, backend="triton")


def torch_lce(hidden, weight, targets, bias=None):
    return ops.linear_cross_entropy(hidden, weight, targets, bias, backend="torch")

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRET else "cuda"
pytestmark = pytest.mark.skipif(not INTERPRET and not torch.cuda.is_available(),
                                reason="Triton kernels need CUDA or TRITON_INTERPRET=1")

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5),
       torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
       torch.float16: dict(rtol=1e-2, atol=1e-2)}


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
    out = run(twins.linear_cross_entropy_naive, up(hidden), up(weight), targets, up(bias), grad_loss)
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
    hidden, weight, targets, bias, grad_loss = case
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
    loss, argmax, _ = check_against_reference((hidden, weight, targets, bias, grad_loss),
                                              torch.float32)
    assert argmax[0] == 65590


def test_all_rows_masked():
    case = make_case(n=5, d=16, v=40, masked=range(5))
    loss, argmax, grad = run(triton_lce, *case)
    assert (loss == 0).all() and (argmax == -1).all() and (grad == 0).all()


@settings(max_examples=8, deadline=None)
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
                        lambda *args: seen.append(args[-1]) or forward(*args))
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
                        lambda *args: calls.append(1) or kernel(*args))
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
