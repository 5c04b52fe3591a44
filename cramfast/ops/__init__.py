"""The fused ops, three layers: ``dispatch`` (the public functions: validate, pick a backend),
``autograd`` (one autograd Function per op over a forward), ``twins`` (the torch forwards that
mirror the Triton kernels in cramfast.kernels, and the naive references)."""
from cramfast.ops.dispatch import (
                                   BACKENDS,
                                   IGNORE_INDEX,
                                   TRITON_DTYPES,
                                   backend_for,
                                   linear_cross_entropy,
                                   mem_embed,
                                   resolve_backend,
)

__all__ = ["BACKENDS", "IGNORE_INDEX", "TRITON_DTYPES", "backend_for", "linear_cross_entropy",
           "mem_embed", "resolve_backend"]
