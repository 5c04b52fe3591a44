"""Triton kernels of cramfast.ops (installed as cramfast.kernels): forward functions only; the
autograd Functions are cramfast.autograd's and the checks and dispatch cramfast.ops'.

Compiled on CUDA; on CPU they run only under the Triton interpreter, which must be chosen
(TRITON_INTERPRET=1) before this package is imported.
"""
from .linear_cross_entropy import linear_cross_entropy_forward
from .mem_embed import mem_embed_forward

__all__ = ["linear_cross_entropy_forward", "mem_embed_forward"]
