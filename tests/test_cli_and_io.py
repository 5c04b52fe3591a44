"""Save/load round trip, decoding, and every bad input: one line, exit code 2."""
import subprocess
import sys

import pytest
import torch

import cramfast
from cramfast.cli import main
from test_compressor import corpus_texts


@pytest.fixture(scope="module")
def crammed(trained_path):
    lm = cramfast.load_model(trained_path)
    texts = corpus_texts(lm.tokenizer, [6, 14])
    return lm, cramfast.compress(texts, model=lm, lr=0.03, max_steps=300)


def test_save_load_round_trip_and_decode(crammed, tmp_path):
    lm, results = crammed
    cramfast.save(results, tmp_path, tokenizer_path=lm.path)
    loaded = cramfast.load_results(tmp_path)
    assert len(loaded) == 2
    for a, b in zip(results, loaded):
        assert torch.equal(a.mem, b.mem) and a.token_ids == b.token_ids
        assert a.metadata() == b.metadata()
        ids, text = cramfast.decode(b, model=lm)
        assert ids == a.token_ids and text == lm.tokenizer.decode(a.token_ids)
    one = cramfast.load_results(tmp_path / "cram-0001.safetensors")
    assert one[0].token_ids == results[1].token_ids


def test_cli_compress_then_decode(trained_path, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["compress", "--model", trained_path, "--text", "a cat sat on the mat",
                 "--lr", "0.03", "--max-steps", "300", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "lossless" in printed and "1/1 texts exact" in printed
    assert main(["decode", str(out)]) == 0
    decoded = capsys.readouterr().out
    assert "matches stored ids: yes" in decoded and "a cat sat on the mat" in decoded


def test_cli_no_cuda_graphs_reaches_compress(trained_path, monkeypatch, capsys):
    seen = []
    real = cramfast.compress
    monkeypatch.setattr(cramfast, "compress", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    for flag, expected in (([], True), (["--no-cuda-graphs"], False)):
        assert main(["compress", "--model", trained_path, "--text", "a cat sat",
                     "--max-steps", "2", *flag]) == 0
        assert seen.pop()["cuda_graphs"] is expected
    capsys.readouterr()


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "cramfast", *args], capture_output=True, text=True)


def bad_inputs(trained_path, tmp_path):
    binary = tmp_path / "latin1.txt"
    binary.write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (tmp_path / "empty_dir").mkdir()
    return {
        "empty text": (["--text", "   "], "empty text"),
        "one token": (["--text", "a"], "at least 2"),
        "too long": (["--text", "the quick brown fox " * 40], "too long"),
        "n_mem": (["--text", "the cat", "--n-mem", "0"], "n_mem"),
        "not utf-8": (["--file", str(binary)], "not UTF-8"),
        "no text files": (["--file", str(tmp_path / "empty_dir")], "no .txt files"),
        "missing file": (["--file", str(tmp_path / "nope.txt")], "no such file"),
        "bad setting": (["--text", "the cat", "--set", "stall_steps=often"], "must be an int"),
        "unknown setting": (["--text", "the cat", "--set", "turbo=1"], "expected key=value"),
        "bad restart": (["--text", "the cat", "--set", "restart=jump"], "restart must be"),
        "bad init": (["--text", "the cat", "--set", "init=zeros"], "init must be one of"),
    }


def test_bad_inputs_exit_2_with_one_line(trained_path, tmp_path):
    for name, (args, message) in bad_inputs(trained_path, tmp_path).items():
        proc = run_cli("compress", "--model", trained_path, *args)
        assert proc.returncode == 2, name
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (name, proc.stderr)


def test_unknown_model_offline(tmp_path):
    proc = run_cli("compress", "--model", "no-such-org/no-such-model", "--text", "hello there")
    assert proc.returncode == 2
    assert "unknown model" in proc.stderr and "offline" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_decode_of_a_wrong_file(tmp_path):
    bogus = tmp_path / "x.json"
    bogus.write_text("{not json")
    for target in (bogus, tmp_path / "missing.json", tmp_path):
        proc = run_cli("decode", str(target))
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
