"""The GPU a kernel is launched on, as the launchers plan for it: its compute capability and the
shared memory one program may use.

Read from the device when there is one; by compute capability from a table where there is none:
when the kernels are compiled ahead of time for GPUs that are not here (kernels/aot.py).
"""
import functools
from typing import NamedTuple

import torch

# Shared memory one program (thread block) may opt in to, by compute capability: the CUDA
# programming guide's maximum per thread block, which is what a device reports as
# shared_memory_per_block_optin (cudaDevAttrMaxSharedMemoryPerBlockOptin). An SM holds 1 KiB
# more, reserved by the driver for each resident block.
SMEM_PER_BLOCK = {
    (7, 0): 96 << 10,  # V100
    (7, 5): 64 << 10,  # T4, RTX 20xx
    (8, 0): 163 << 10,  # A100, A30
    (8, 6): 99 << 10,  # A10, A40, RTX 30xx
    (8, 7): 163 << 10,  # Jetson Orin
    (8, 9): 99 << 10,  # L4, L40, RTX 40xx
    (9, 0): 227 << 10,  # H100, H200, GH200
    (10, 0): 227 << 10,  # B200, GB200
    (10, 3): 227 << 10,  # B300, GB300
    (11, 0): 227 << 10,  # Jetson Thor
    (12, 0): 99 << 10,  # RTX 50xx, RTX PRO Blackwell
    (12, 1): 99 << 10,  # DGX Spark
}


class Target(NamedTuple):
    capability: tuple  # (major, minor)
    smem_bytes: int  # shared memory one program may use

    @property
    def arch(self):
        """The capability as one number, Triton's GPUTarget arch: (9, 0) -> 90."""
        return self.capability[0] * 10 + self.capability[1]

    @property
    def config_arch(self):
        """The architecture whose configs this GPU takes (90 or 80, those the configs are
        compiled and checked for): 90 where Triton's tensor-core products read their operands
        from shared memory (wgmma on sm_90; tcgen05 on sm_100 and sm_110), 80 where they read
        them from registers (mma.sync: sm_80 to sm_89, sm_120), which changes how many
        registers a tile takes and so which tiles spill."""
        return 90 if self.capability[0] in (9, 10, 11) else 80


def target_of_capability(capability):
    """The Target of a compute capability, (major, minor) or Triton's number (80, 90), from the
    table; a capability not listed gets the limit of the nearest one below it."""
    if isinstance(capability, int):
        capability = divmod(capability, 10)
    capability = tuple(capability)
    known = [c for c in SMEM_PER_BLOCK if c <= capability]
    if not known:
        raise ValueError(f"no shared-memory limit known for compute capability {capability}")
    return Target(capability, SMEM_PER_BLOCK[max(known)])


@functools.cache  # asked at every autotuner key's first launch: read once
def _device_target(index):
    props = torch.cuda.get_device_properties(index)
    capability = (props.major, props.minor)
    smem = getattr(props, "shared_memory_per_block_optin", 0)  # absent from older torch builds
    return Target(capability, smem or target_of_capability(capability).smem_bytes)


def device_target(device):
    """The Target of a CUDA device (torch.device, index or "cuda:1"), read from the device."""
    device = torch.device(device)
    return _device_target(torch.cuda.current_device() if device.index is None else device.index)
