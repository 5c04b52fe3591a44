"""Triton mem_embed (cramfast.kernels, reached through cramfast.ops) against its torch twin
(cramfast.twins.mem_embed_torch).

On CPU the kernel runs in the Triton interpreter (conftest.py sets TRITON_INTERPRET=1); with
TRITON_INTERPRET=0 on a CUDA machine the same tests run the compiled kernel. The op is a copy,
so results must be bit-identical.
"""
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cramfast import kernels, ops
from cramfast.ops import twins

from conftest import KERNEL_DEVICE, needs_kernels


def triton_mem_embed(ids, emb, mem):
    return ops.mem_embed(ids, emb, mem, backend="triton")


def torch_mem_embed(ids, emb, mem):
    return ops.mem_embed(ids, emb, mem, backend="torch")

DEVICE = KERNEL_DEVICE
pytestmark = needs_kernels
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def make_case(b, m, t, d, v=50, emb_dtype=torch.float32, mem_dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, v, (b, t), generator=g).to(DEVICE)
    embedding = torch.randn(v, d, generator=g).to(DEVICE, emb_dtype)
    mem = torch.randn(b, m, d, generator=g).to(DEVICE, mem_dtype).requires_grad_()
    return input_ids, embedding, mem


@pytest.mark.parametrize("emb_dtype", DTYPES, ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("mem_dtype", DTYPES + [torch.float64], ids=["fp32", "bf16", "fp16",
                                                                     "fp64"])
def test_matches_torch_and_grad(emb_dtype, mem_dtype):
    ids, emb, mem = make_case(3, 4, 7, 47, emb_dtype=emb_dtype, mem_dtype=mem_dtype)
    out = triton_mem_embed(ids, emb, mem)
    assert out.dtype == emb_dtype and out.shape == (3, 11, 47)
    assert torch.equal(out, twins.mem_embed_torch(ids, emb, mem))
    grad_out = torch.randn_like(out)
    (grad_mem,) = torch.autograd.grad(out, mem, grad_out)
    assert grad_mem.dtype == mem_dtype
    assert torch.equal(grad_mem, grad_out[:, :4].to(mem_dtype))


@pytest.mark.parametrize("b,m,t,d", [(1, 1, 2, 8200),  # d > one interpreter block (8192)
                                     (2, 0, 5, 16),   # no mem rows
                                     (2, 3, 0, 16),   # no tokens
                                     (1, 2, 3, 1)])
def test_edge_shapes(b, m, t, d):
    ids, emb, mem = make_case(b, m, t, d)
    out = triton_mem_embed(ids, emb, mem)
    assert out.shape == (b, m + t, d)
    assert torch.equal(out, twins.mem_embed_torch(ids, emb, mem))


def test_strided_inputs_and_frozen_embedding():
    """Views with non-unit batch/row strides, and an embedding that requires grad but gets none."""
    ids, emb, _ = make_case(2, 3, 6, 24)
    big_ids = torch.randint(0, 50, (2, 12), device=DEVICE)
    ids = big_ids[:, ::2]                                  # stride(1) == 2
    mem_big = torch.randn(2, 6, 30, device=DEVICE, requires_grad=True)
    mem = mem_big[:, ::2, 3:27]                            # strided rows, offset columns
    emb.requires_grad_()
    out = triton_mem_embed(ids, emb, mem)
    assert torch.equal(out, twins.mem_embed_torch(ids, emb, mem))
    out.sum().backward()
    assert emb.grad is None
    expected = torch.zeros_like(mem_big)
    expected[:, ::2, 3:27] = 1
    assert torch.equal(mem_big.grad, expected)


def test_gradcheck_fp64():
    ids, emb, mem = make_case(2, 2, 3, 5, emb_dtype=torch.float64, mem_dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: triton_mem_embed(ids, emb, x), (mem,))


@settings(max_examples=10, deadline=None)
@given(b=st.integers(1, 3), m=st.integers(0, 4), t=st.integers(0, 6), d=st.integers(1, 70),
       v=st.integers(1, 100), seed=st.integers(0, 2 ** 16))
def test_property_random_shapes(b, m, t, d, v, seed):
    ids, emb, mem = make_case(b, m, t, d, v=v, emb_dtype=torch.bfloat16, seed=seed)
    assert torch.equal(triton_mem_embed(ids, emb, mem), twins.mem_embed_torch(ids, emb, mem))


def test_ops_routes_triton_backend(monkeypatch):
    calls = []
    kernel = kernels.mem_embed_forward
    monkeypatch.setattr(kernels, "mem_embed_forward",
                        lambda *args, **kw: calls.append(1) or kernel(*args, **kw))
    ids, emb, mem = make_case(2, 3, 5, 20, emb_dtype=torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fallback to torch would warn
        out = triton_mem_embed(ids, emb, mem)
    assert calls == [1]
    assert torch.equal(out, torch_mem_embed(ids, emb, mem))
