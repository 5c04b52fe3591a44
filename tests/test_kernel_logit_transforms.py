"""The fused cross-entropy and the mem embedding with what models do around their head and
embedding (cramfast.models.LoadedModel): a logit scale (Cohere 0.0625, Granite 1/8), a final
tanh soft-cap (Gemma 2's 30), an input scale (Gemma's sqrt(d)). Each backend (the Triton
kernel, interpreted on CPU; the torch twin) against the full-logits reference on the same
rounded inputs, on odd shapes, masked rows, a vocabulary past 65536, ties, fp32/bf16/fp16.
The 16-bit bars are the plain kernel tests': the transforms run in the fp32 accumulator."""
import pytest
import torch

from cramfast import ops
from cramfast.kernels.interpreter import INTERPRET  # conftest set TRITON_INTERPRET
from cramfast.models import model_logits
from cramfast.ops import twins

from conftest import KERNEL_DEVICE, KERNEL_TOL, needs_kernels

DEVICE = KERNEL_DEVICE
pytestmark = needs_kernels
TOL = KERNEL_TOL
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# (logit_scale, softcap, how large the raw logits are): a cap bites only on logits near it
TRANSFORMS = {"cohere": (0.0625, None, 8.0), "granite": (0.125, None, 4.0),
              "gemma2": (1.0, 30.0, 40.0), "scaled_and_capped": (0.5, 2.0, 6.0)}
SHAPES = {"single_row_odd": dict(n=1, d=47, v=123),
          "multi_block_masked": dict(n=40, d=300, v=1100, masked=[0, 5, *range(16, 32)]),
          "vocab_past_65536": dict(n=3, d=4, v=65601)}


def make_case(n, d, v, spread, dtype, bias=True, masked=(), seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g)
    weight = torch.randn(v, d, generator=g) * spread / d ** 0.5
    targets = torch.randint(0, v, (n,), generator=g)
    targets[list(masked)] = ops.IGNORE_INDEX
    b = torch.randn(v, generator=g) if bias else None
    cast = lambda x: None if x is None else x.to(DEVICE, dtype)
    return cast(hidden), cast(weight), targets.to(DEVICE), cast(b)


def run(backend, hidden, weight, targets, bias, **transform):
    h = hidden.detach().clone().requires_grad_()
    loss, argmax, margin = ops.linear_cross_entropy(h, weight, targets, bias, backend=backend,
                                                    **transform)
    loss.backward(torch.linspace(0.5, 1.5, len(loss), device=loss.device))
    return loss.detach(), argmax, margin, h.grad


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("transform", TRANSFORMS.values(), ids=TRANSFORMS.keys())
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_transformed_logits_match_the_reference(backend, dtype, transform, shape):
    scale, cap, spread = transform
    case = make_case(**shape, spread=spread, dtype=dtype)
    up = [None if x is None else (x.double() if x.is_floating_point() else x) for x in case]
    ref_loss, ref_argmax, ref_margin, ref_grad = run("naive", *up, logit_scale=scale,
                                                     softcap=cap)
    loss, argmax, margin, grad = run(backend, *case, logit_scale=scale, softcap=cap)
    scored = case[2] != ops.IGNORE_INDEX
    # the bar: the tolerance, or twice the fp32 reference's own error where that is larger
    # (a gradient summed over 65k vocabulary entries of large logits)
    fp32 = [None if x is None else (x.float() if x.is_floating_point() else x) for x in case]
    own = [float((a.double() - b).abs().max()) for a, b in
           zip(run("naive", *fp32, logit_scale=scale, softcap=cap), (ref_loss, ref_argmax,
                                                                     ref_margin, ref_grad))]
    bar = lambda k: dict(TOL[dtype], atol=max(TOL[dtype]["atol"], 2 * own[k]))
    torch.testing.assert_close(loss.double(), ref_loss, **bar(0))
    torch.testing.assert_close(margin.double()[scored], ref_margin[scored], **bar(2))
    torch.testing.assert_close(grad.double(), ref_grad, **bar(3))
    assert (argmax[~scored] == -1).all() and (loss[~scored] == 0).all()
    # the argmax: exact in fp32 where the reference's top two logits are apart by more than
    # fp32 reorderings move them (of 65k logits, two can be within that); elsewhere, and in
    # 16-bit, a logit within the bar of the row's max
    hidden, weight, _, bias = up
    logits = model_logits(hidden @ weight.T + (0 if bias is None else bias), scale, cap)[scored]
    picked = logits.gather(1, argmax[scored][:, None]).squeeze(1)
    assert (picked >= logits.max(dim=1).values - bar(2)["atol"]).all()
    if dtype == torch.float32:
        top2 = logits.topk(2, dim=1).values
        apart = top2[:, 0] - top2[:, 1] > 1e-4
        assert torch.equal(argmax[scored][apart], ref_argmax[scored][apart])
    if cap is not None:     # the cap binds: every logit within it, the argmax of capped ones
        assert float(ref_margin[scored].abs().max()) < 2 * cap


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_ties_survive_the_cap(dtype):
    """Exact integer logits 0 and 40 (ties exact): capped at 30, the tied winners stay tied
    (argmax the lowest index, margin 0), as the reference has them."""
    d, v = 8, 700
    hidden = torch.zeros(2, d)
    hidden[0, 0] = hidden[1, 1] = 2.0
    weight = torch.zeros(v, d)
    weight[[130, 300, 600]] = 10 * hidden[0]
    weight[450] = 10 * hidden[1]
    targets = torch.tensor([300, 450])
    case = [x.to(DEVICE, dtype) for x in (hidden, weight)] + [targets.to(DEVICE), None]
    for backend in ("triton", "torch", "naive"):
        _, argmax, margin = ops.linear_cross_entropy(*case, backend=backend, softcap=30.0)
        assert argmax.tolist() == [130, 450] and float(margin[0]) == 0
        assert float(margin[1]) == pytest.approx(30 * torch.tanh(torch.tensor(40 / 30)).item(),
                                                 rel=TOL[dtype]["rtol"])


def test_bad_transforms_are_refused():
    h, w, t, b = make_case(n=2, d=4, v=10, spread=1, dtype=torch.float32)
    for bad in (dict(logit_scale=0.0), dict(logit_scale=float("inf")), dict(softcap=0.0),
                dict(softcap=-1.0)):
        with pytest.raises(ValueError):
            ops.linear_cross_entropy(h, w, t, b, **bad)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("scale", [8.0, 8.5, 25.25], ids=["sqrt64", "bf16_sqrt72", "bf16_sqrt640"])
def test_mem_embed_applies_the_input_scale(dtype, scale):
    """Token rows are embedding[ids] * scale rounded once to the dtype (as the model's own
    scaled lookup); mem rows are not scaled. Under the interpreter a float cast to 16 bits
    truncates where torch rounds to nearest: there the bar is one unit in the last place."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (2, 7), generator=g).to(DEVICE)
    emb = torch.randn(50, 40, generator=g).to(DEVICE, dtype)
    mem = torch.randn(2, 3, 40, generator=g).to(DEVICE, dtype)
    expected = twins.mem_embed_torch(ids, emb, mem, scale=scale)
    assert torch.equal(expected[:, 3:], emb[ids] * scale)
    out = ops.mem_embed(ids, emb, mem, backend="triton", scale=scale)
    assert torch.equal(out[:, :3], mem)
    if INTERPRET and dtype != torch.float32:
        ulp = torch.finfo(dtype).eps * expected[:, 3:].float().abs()
        assert ((out[:, 3:].float() - expected[:, 3:].float()).abs() <= ulp).all()
    else:
        assert torch.equal(out, expected)
