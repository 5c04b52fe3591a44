"""Triton backend of cramfast.ops (installed as cramfast.kernels).

Compiled on CUDA; on CPU it runs only under the Triton interpreter, which must be chosen
(TRITON_INTERPRET=1) before this package is imported.
"""
from .linear_cross_entropy import linear_cross_entropy
from .mem_embed import mem_embed

__all__ = ["linear_cross_entropy", "mem_embed"]
