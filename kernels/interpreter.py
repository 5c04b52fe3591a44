"""Whether Triton runs in its interpreter (TRITON_INTERPRET=1, chosen before the kernels are
imported): on a CPU, where the kernels pick interpreter-sized grids and blocks."""
import os

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
