"""The C++ scheduler extension cramfast._scheduler (plain pybind11, no torch headers). Every
other part of the build (metadata, dependencies, packages) is in pyproject.toml."""
import shutil
import sys

from setuptools import setup

try:
    from pybind11.setup_helpers import Pybind11Extension, build_ext
except ImportError:  # pragma: no cover - a clear message instead of a traceback
    sys.exit("cramfast: building needs pybind11 (pip install pybind11) before installing.")

if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
    sys.exit("cramfast: no C++ compiler found (c++/g++/clang++); install one "
             "(e.g. apt-get install g++) to build the scheduler extension.")

setup(
    ext_modules=[Pybind11Extension("cramfast._scheduler", ["csrc/scheduler.cpp",
                                                           "csrc/bindings.cpp"],
                                   include_dirs=["csrc"], cxx_std=17, extra_compile_args=["-O2"])],
    cmdclass={"build_ext": build_ext},
)
