"""Numbers shared by the ops, their torch twins and the Triton kernels."""

# A target that is not scored (padding, mem positions, a stopped slot): loss 0, argmax -1,
# zero gradient. torch's own ignore_index, so the naive reference can use F.cross_entropy.
IGNORE_INDEX = -100

# Rows of logits the torch twin of the fused CE materializes at once: its peak memory stays
# about this many fp32 values (64 MiB) whatever N is; chunks of ~1k rows x 49k columns are
# still large enough for the matmuls to run at full speed.
CHUNK_ELEMENTS = 1 << 24
