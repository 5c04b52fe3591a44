"""The Triton kernels compiled ahead of time for the GPUs they are tuned for, sm_90 (H100, H200)
and sm_80 (A100), on realistic shapes; and the config pruning by a GPU's shared memory.

cramfast.kernels.aot lists every launch the launchers make for d 576 / V 49152 and d 4096 /
V 128256, N 960 and 16384, bf16, fp16 and fp32, with and without the gradient, expands each into
the configs the autotuner could choose on each GPU, and compiles them with the ptxas of
Triton's wheel. It runs in a subprocess: these tests run under the interpreter (conftest.py),
whose @triton.jit functions cannot be compiled. Compiles are cached per user (aot.CACHE_DIR,
or TRITON_CACHE_DIR), so only the first run, or one after a kernel changed, compiles.
"""
import json
import os
import subprocess
import sys
import types

import pytest
import torch

from cramfast.kernels import aot, targets
from cramfast.kernels import linear_cross_entropy as lce

KERNELS = {"vocab_split_partials", "combine_vocab_splits", "_mem_embed_kernel"}

# Spills inside a loop that are accepted, by (kernel, arch, config, d): the most bytes stored
# and loaded inside loops, and why. None may sit in an innermost loop.
_C = "BLOCK_N=64 BLOCK_V=32 BLOCK_K=64 MAX_ACC=288 num_warps=4 num_stages=2"
LOOP_SPILLS = {
    ("vocab_split_partials", 80, _C, 4096): (
        60, 148,
        "sm_80's 64-row config is there for d <= 576, where it alone keeps h in shared memory; "
        "at d = 4096 its spills sit in the vocabulary loop outside the K loop (once per "
        "32-column tile, against 64 iterations of the K loop's products), and the autotuner "
        "times it against the 128-row config, which does not spill and is the one small "
        "problems run untimed"),
}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """aot's records, compiled for sm_90 and sm_80."""
    out = tmp_path_factory.mktemp("aot") / "records.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "cramfast.kernels.aot", "--out", str(out)],
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(out.read_text())["records"]


def test_every_kernel_compiles_for_each_gpu(compiled):
    assert {r["arch"] for r in compiled} == set(aot.ARCHS)
    for arch in aot.ARCHS:
        assert {r["kernel"] for r in compiled if r["arch"] == arch} == KERNELS
    failed = [(r["kernel"], r["arch"], r["config"], r["error"]) for r in compiled if "error" in r]
    assert not failed


def test_shared_memory_fits_each_gpu(compiled):
    over = [(r["kernel"], r["arch"], r["config"], r["d"], r["dtype"], r["shared"])
            for r in compiled if r["shared"] > r["smem_limit"]]
    assert not over
    assert {r["smem_limit"] for r in compiled if r["arch"] == 80} == {163 << 10}


def test_no_spills_inside_loops_but_those_recorded(compiled):
    unexplained, seen = [], set()
    for r in compiled:
        if not r["loop_store_bytes"] and not r["loop_load_bytes"]:
            continue
        key = (r["kernel"], r["arch"], r["config"], r["d"])
        most_stored, most_loaded, _why = LOOP_SPILLS.get(key, (0, 0, ""))
        seen.add(key)
        if (r["inner_stores"] or r["inner_loads"] or r["loop_store_bytes"] > most_stored
                or r["loop_load_bytes"] > most_loaded):
            unexplained.append((*key, r["dtype"], r["want_grad"], r["loop_store_bytes"],
                                r["loop_load_bytes"], r["inner_stores"], r["inner_loads"]))
    assert not unexplained
    assert not set(LOOP_SPILLS) - seen, "recorded spills that no longer happen: drop them"


def test_each_gpu_is_offered_its_own_configs(compiled):
    chosen = lambda arch, table: {r["config"] for r in compiled if r["arch"] == arch
                                  and r["kernel"] == "vocab_split_partials"
                                  and (r["dtype"] == "float32") == (table is lce.CONFIGS_FP32)}
    for table in (lce.CONFIGS_16BIT, lce.CONFIGS_FP32):
        for arch in aot.ARCHS:
            expected = {aot._config_label(c, None) for c, a in table.items() if a == arch}
            assert chosen(arch, table) <= expected and chosen(arch, table)


@pytest.mark.parametrize("d", [576, 4096])
@pytest.mark.parametrize("elem", [2, 4])
def test_pruning_keeps_only_configs_that_fit_sm_80(d, elem):
    sm80 = targets.target_of_capability(80)
    h = types.SimpleNamespace(element_size=lambda: elem)
    kept = lce._prune_configs(None, dict(D=d, N=16384, V=128256, h_ptr=h), target=sm80)
    assert kept
    for config in kept:
        assert (lce.CONFIGS_FP32 if elem == 4 else lce.CONFIGS_16BIT)[config] == 80
        smem, groups = lce._hoisted_smem_bytes(config, d, elem)
        assert groups > 2 or smem + lce.SMEM_HEADROOM <= sm80.smem_bytes


def test_pruning_follows_the_gpu_the_launch_is_on(monkeypatch):
    """Two GPUs of the same capability but less shared memory on the second: its limit is read
    from the device, and 128 rows of h (hoisted, d = 576) fit the first only."""
    props = {0: types.SimpleNamespace(major=9, minor=0, shared_memory_per_block_optin=227 << 10),
             1: types.SimpleNamespace(major=9, minor=0, shared_memory_per_block_optin=99 << 10)}
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props[index])
    targets._device_target.cache_clear()
    try:
        kept = {}
        for index in props:
            h = types.SimpleNamespace(element_size=lambda: 2, device=torch.device("cuda", index))
            kept[index] = lce._prune_configs(None, dict(D=576, N=16384, V=49152, h_ptr=h))
        first = next(iter(lce.CONFIGS_16BIT))
        assert kept[0][0] == first and first not in kept[1] and kept[1]
    finally:
        targets._device_target.cache_clear()


def test_targets_table_and_device_fallback(monkeypatch):
    assert targets.target_of_capability((8, 0)).smem_bytes == 163 << 10
    assert targets.target_of_capability(86).smem_bytes == 99 << 10
    assert targets.target_of_capability(89).smem_bytes == 99 << 10
    assert targets.target_of_capability(90) == ((9, 0), 227 << 10)
    assert targets.target_of_capability((8, 8)).smem_bytes == 163 << 10  # nearest below: 8.7
    assert targets.target_of_capability(90).config_arch == 90
    assert targets.target_of_capability(100).config_arch == 90
    assert targets.target_of_capability(120).config_arch == 80
    with pytest.raises(ValueError):
        targets.target_of_capability((6, 0))
    # a torch without shared_memory_per_block_optin: the table by the device's capability
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index: types.SimpleNamespace(major=8, minor=0))
    targets._device_target.cache_clear()
    try:
        assert targets.device_target("cuda:3") == ((8, 0), 163 << 10)
    finally:
        targets._device_target.cache_clear()


def test_sass_spills_counts_loops_and_widths():
    sass = """
        /*0000*/                   STL [R1], R2 ;
        /*0010*/                   STL.64 [R1+0x8], R4 ;
        /*0020*/                   LDL R6, [R1] ;
        /*0030*/                   LDL.128 R8, [R1+0x10] ;
        /*0040*/              @!P0 BRA 0x30 ;
        /*0050*/                   LDL.LU R2, [R1+0x8] ;
        /*0060*/                   EXIT ;
        /*0070*/                   BRA 0x70;
    """
    counts = aot.sass_spills(sass)
    assert counts["loops"] == 1
    assert (counts["stores"], counts["store_bytes"], counts["loads"], counts["load_bytes"]) \
        == (2, 12, 3, 24)
    assert (counts["loop_loads"], counts["loop_load_bytes"], counts["loop_stores"]) == (1, 16, 0)
    assert counts["inner_load_bytes"] == 16
