"""mem_embed: [mem ; embedding[input_ids] * scale] written into one [B, m+T, d] buffer by one
kernel (scale: the model's input scale, Gemma's sqrt(d); 1 for most models, a plain copy).

One program copies one output row. Which source it reads (a mem row or a gathered embedding
row) is decided by predicating both loads instead of branching: a masked-off load issues no
memory transaction, so reading "both" costs one row, and the program has no divergent paths.
"""

import torch
import triton
import triton.language as tl

from .interpreter import INTERPRET

# The interpreter runs each program in numpy: fewer, wider blocks are much faster there.
MAX_BLOCK_D = 8192 if INTERPRET else 1024


@triton.jit(do_not_specialize=["M", "S"])  # one compilation whatever the batch's lengths
def _mem_embed_kernel(ids_ptr, emb_ptr, mem_ptr, out_ptr, M, S, D,
                      stride_ids_b, stride_emb, stride_mem_b, stride_mem_m,
                      stride_out_b, stride_out_s, SCALE,
                      HAS_SCALE: tl.constexpr, BLOCK_D: tl.constexpr):
    # int64 before multiplying by strides: B * (m+T) * d overflows int32 for long batches.
    row = tl.program_id(0).to(tl.int64)
    b = row // S
    s = row % S
    is_mem = s < M
    tok = tl.load(ids_ptr + b * stride_ids_b + (s - M), mask=s >= M, other=0).to(tl.int64)
    mem_row = mem_ptr + b * stride_mem_b + s * stride_mem_m
    emb_row = emb_ptr + tok * stride_emb
    out_row = out_ptr + b * stride_out_b + s * stride_out_s
    # Each source's load mask is "column < its width", the width being 0 for the source not
    # used by this row.
    d_mem = tl.where(is_mem, D, 0)
    d_tok = D - d_mem
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        x_mem = tl.load(mem_row + cols, mask=cols < d_mem, other=0)
        x_tok = tl.load(emb_row + cols, mask=cols < d_tok, other=0)
        if HAS_SCALE:   # in fp32, rounded once to the output's dtype (as torch's x * scale)
            x_tok = (x_tok.to(tl.float32) * SCALE).to(x_mem.dtype)
        tl.store(out_row + cols, tl.where(is_mem, x_mem, x_tok), mask=cols < D)


def _unit_last_stride(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def mem_embed_forward(input_ids, embedding, mem, scale=1.0):
    """[mem ; embedding[input_ids] * scale] (forward only); shapes checked by
    cramfast.ops.mem_embed."""
    if not INTERPRET and not embedding.is_cuda:
        raise RuntimeError("mem_embed (triton): tensors must be on CUDA, or set TRITON_INTERPRET=1 "
                           "before importing cramfast to run the kernels on CPU")
    out, launches = mem_embed_launches(input_ids, embedding, mem, scale)
    for kernel, grid, args, kwargs in launches:
        kernel[grid](*args, **kwargs)
    return out


def mem_embed_launches(input_ids, embedding, mem, scale=1.0):
    """(out, launches): the output [B, m+T, d], allocated, and the kernel launches that fill it
    as (kernel, grid, args, kwargs); no kernel runs (kernels/aot.py lists them on the meta
    device)."""
    (b, t), (_, d), (_, m, _) = input_ids.shape, embedding.shape, mem.shape
    # mem is cast on the host side so the kernel is a same-dtype copy: mem is only B*m rows, and
    # the interpreter's fp32 -> bf16 cast truncates where torch (and CUDA) round to nearest even.
    mem = mem.to(embedding.dtype)
    input_ids, embedding, mem = (_unit_last_stride(x) for x in (input_ids, embedding, mem))
    out = torch.empty(b, m + t, d, dtype=embedding.dtype, device=embedding.device)
    if not out.numel():
        return out, []
    return out, [(_mem_embed_kernel, (b * (m + t),),
                  (input_ids, embedding, mem, out, m, m + t, d,
                   input_ids.stride(0), embedding.stride(0), mem.stride(0), mem.stride(1),
                   out.stride(0), out.stride(1), float(scale)),
                  dict(HAS_SCALE=scale != 1.0, BLOCK_D=min(triton.next_power_of_2(d), MAX_BLOCK_D),
                       num_warps=4))]
