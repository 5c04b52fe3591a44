#!/usr/bin/env bash
# Everything a CUDA machine checks, in one command, most important first, each step bounded so
# that a slow one cannot starve the rest (a lent GPU comes with minutes, not hours):
#   bash benchmarks/gpu_session.sh [TOKENIZER_DIR] [OUT_DIR] [SECONDS]
# 1. build and install (the C++ scheduler compiled there; carried wheels in .whl/ first, if any)
# 2. the kernel tests, compiled (TRITON_INTERPRET=0)
# 3. benchmarks/gpu_throughput.py: steps/s of cramfast vs the paper loop, real shapes
# 4. benchmarks/gpu_check.py --no-tests: the kernels' time and memory vs torch at d = 2048
# 5. the whole test suite on CUDA (load_model puts the tiny test models on the GPU)
set -uo pipefail
TOK=${1:-.gpu_carry/tokenizer}
OUT_DIR=${2:-${OUT:-/tmp/cramfast-gpu}}
BUDGET=${3:-540}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
bounded() {  # bounded CAP NAME cmd...: run with min(CAP, time left) seconds, log to OUT_DIR/NAME.log
    local cap=$1 name=$2; shift 2
    local t; t=$(left); (( t > cap )) && t=$cap
    if (( t < 20 )); then echo "== $name: skipped, $(left) s left"; return; fi
    echo "== $name (at most $t s): $*"
    timeout "$t" "$@" > "$OUT_DIR/$name.log" 2>&1
    echo "== $name: exit $? after $(( $(date +%s) - START )) s"
    tail -n 25 "$OUT_DIR/$name.log"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
bounded 150 install python3 -m pip install --no-build-isolation --no-deps --no-index -e .
versions() { python3 -c "import cramfast._scheduler, torch, triton, transformers; from cramfast import kernels
print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"; }
# the carried wheels, else the machine's own transformers
versions || { unset PYTHONPATH; versions; } || { echo "import failed: see $OUT_DIR/install.log"; exit 1; }
XDIST=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")
export TRITON_INTERPRET=0
bounded 200 kernel-tests python3 -m pytest -q -p no:cacheprovider $XDIST tests/test_kernel_linear_cross_entropy.py tests/test_kernel_mem_embed.py
bounded 200 throughput python3 benchmarks/gpu_throughput.py "$TOK" --dtypes bf16 --out "$OUT_DIR/gpu_throughput.json"
bounded 100 gpu-check python3 benchmarks/gpu_check.py --no-tests
bounded 300 suite python3 -m pytest -q -p no:cacheprovider $XDIST tests --ignore tests/test_real_model.py --ignore tests/test_kernel_linear_cross_entropy.py --ignore tests/test_kernel_mem_embed.py
echo "== done after $(( $(date +%s) - START )) s"
