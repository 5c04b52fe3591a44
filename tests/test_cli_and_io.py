"""Save/load round trip, decoding, and every bad input: one line, exit code 2."""
import dataclasses
import subprocess
import sys
import time

import pytest
import torch

import cramfast
from cramfast import engine
from cramfast.cli.compress import main

from conftest import corpus_texts


@pytest.fixture(scope="module")
def crammed(trained_path):
    lm = cramfast.load_model(trained_path)
    texts = corpus_texts(lm.tokenizer, [6, 14])
    return lm, cramfast.compress(texts, model=lm, lr=0.03, max_steps=300)


def test_save_load_round_trip_and_decode(crammed, tmp_path):
    lm, results = crammed
    cramfast.save(results, tmp_path)
    loaded = cramfast.load_results(tmp_path)
    assert len(loaded) == 2
    for a, b in zip(results, loaded):
        assert torch.equal(a.mem, b.mem) and a.token_ids == b.token_ids
        assert a.metadata() == b.metadata()
        ids, text = cramfast.decode(b, model=lm)
        assert ids == a.token_ids and text == lm.tokenizer.decode(a.token_ids)
    one = cramfast.load_results(tmp_path / "cram-0001.safetensors")
    assert one[0].token_ids == results[1].token_ids


def test_decodes_back_agrees_with_exact_at_any_batch_size(crammed):
    lm, results = crammed
    assert all(r.exact for r in results)
    for batch_size in (1, 2, 5):
        assert engine.decodes_back(lm, results, batch_size) == [True, True]
    ids = results[0].token_ids           # a text this mem does not hold: its tokens reversed
    other = dataclasses.replace(results[0], token_ids=ids[:1] + ids[:0:-1])
    assert other.token_ids != ids
    assert engine.decodes_back(lm, [other, results[1]], 2) == [False, True]


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
    real = cramfast.compress_iter
    monkeypatch.setattr(cramfast, "compress_iter",
                        lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    for flag, expected in (([], True), (["--no-cuda-graphs"], False)):
        assert main(["compress", "--model", trained_path, "--text", "a cat sat",
                     "--max-steps", "2", *flag]) == 0
        assert seen.pop()["cuda_graphs"] is expected
    capsys.readouterr()


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "cramfast", *args], capture_output=True, text=True)


def cli_in_process(capsys, *args):
    """(exit code, stdout, stderr) of the command line run in this process."""
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exc:              # argparse's own exits
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def bad_inputs(trained_path, tmp_path):
    binary = tmp_path / "latin1.txt"
    binary.write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (tmp_path / "empty_dir").mkdir()
    return {
        "empty text": (["--text", "   "], "empty text"),
        "one token": (["--text", "a"], "at least 2"),
        "too long": (["--text", "the quick brown fox " * 40], "too long"),
        "n_mem": (["--text", "the cat", "--n-mem", "0"], "--n-mem: must be >= 1, got 0"),
        "not utf-8": (["--file", str(binary)], "not UTF-8"),
        "no text files": (["--file", str(tmp_path / "empty_dir")], "no .txt files"),
        "missing file": (["--file", str(tmp_path / "nope.txt")], "no such file"),
        "bad setting": (["--text", "the cat", "--set", "stall_steps=often"], "must be an int"),
        "unknown setting": (["--text", "the cat", "--set", "turbo=1"], "expected key=value"),
        "bad restart": (["--text", "the cat", "--set", "restart=jump"], "restart must be"),
        "bad init": (["--text", "the cat", "--set", "init=zeros"], "init must be one of"),
    }


def test_bad_inputs_exit_2_with_one_line(trained_path, tmp_path, capsys):
    for name, (args, message) in bad_inputs(trained_path, tmp_path).items():
        code, _, stderr = cli_in_process(capsys, "compress", "--model", trained_path, *args)
        assert code == 2, name
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (name, stderr)


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


# ---------------------------------------------------------------------------------------------
# what a user hits: every row a clear line, nothing already computed lost


def test_out_folder_is_never_shared_by_two_runs(crammed, tmp_path, trained_path):
    _, results = crammed
    cramfast.save(results, tmp_path / "run")
    before = sorted(p.read_bytes() for p in (tmp_path / "run").iterdir())
    with pytest.raises(cramfast.CramfastError, match="not empty"):
        cramfast.save(results[:1], tmp_path / "run")
    proc = run_cli("compress", "--model", trained_path, "--text", "a cat sat", "--max-steps", "2",
                   "--out", str(tmp_path / "run"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "not empty" in proc.stderr
    assert sorted(p.read_bytes() for p in (tmp_path / "run").iterdir()) == before


def test_saved_files_record_where_they_were_made_and_share_one_mode(crammed, tmp_path):
    import json
    lm, results = crammed
    [path, _] = cramfast.save(results, tmp_path)
    meta = json.loads(path.read_text())
    assert meta["dtype"] == "float32" and meta["device"] == "cpu"
    assert meta["cramfast_version"] == cramfast.__version__
    assert meta["tokenizer"] == meta["model"] == lm.name        # a name, not this machine's path
    assert meta["settings"]["cuda_graphs"] is False             # what ran, not what was asked
    assert path.stat().st_mode == path.with_suffix(".safetensors").stat().st_mode
    assert len(repr(results[0])) < 300 and "tensor" not in repr(results[0])


def test_decode_takes_every_good_result_names_each_bad_one_and_skips_other_files(crammed, tmp_path):
    _, results = crammed
    cramfast.save(results, tmp_path)
    (tmp_path / "notes.json").write_text('{"about": "my notes"}')
    cut = tmp_path / "cram-0001.safetensors"
    cut.write_bytes(cut.read_bytes()[:40])
    proc = run_cli("decode", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stdout.count("matches stored ids: yes") == 1
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 1 and "cram-0001.json" in errors[0] and "notes" not in proc.stderr
    one = run_cli("decode", str(cut))
    assert one.returncode == 2 and one.stderr.count("\n") == 1 and "not a readable" in one.stderr


def test_flag_errors_name_the_flag(trained_path, capsys):
    cases = {("--text", "a b c d e f g h", "--length", "-5"): "--length: must be >= 2, got -5",
             ("--text", "a cat", "--backend", "cuda"): "--backend: invalid choice: 'cuda'",
             ("--text", "a cat", "--max-steps", "-1"): "--max-steps: must be >= 0, got -1",
             ("--text", "a cat", "--lr", "0"): "lr must be > 0, got 0.0 (flag --lr)",
             ("--text", "a cat", "--samples", "0"): "--samples: must be >= 1, got 0",
             ("--text", "a cat", "--threads", "0"): "--threads: must be >= 1, got 0",
             ("--text", "a cat", "--set", "margin=-1"): "margin must be >= 0, got -1.0 (flag --set",
             ("--text", "a cat", "--device", "cuda"): "no CUDA GPU"}
    for args, message in cases.items():
        code, _, stderr = cli_in_process(capsys, "compress", "--model", trained_path, *args)
        lines = stderr.strip().splitlines()
        assert code == 2 and len(lines) == 1 and message in lines[0], (args, stderr)


def test_a_file_without_blank_lines_still_gives_passages(trained_path, tmp_path):
    from conftest import CORPUS
    flat = tmp_path / "flat.txt"
    flat.write_text(CORPUS.replace("\n", " "))
    lm = cramfast.load_model(trained_path)
    passages = cramfast.sources.sample_passages(lm.tokenizer, flat.read_text(), 8, 3, seed=0)
    assert len(passages) == 3 and all(len(p) == 8 for p in passages)
    assert len({tuple(p) for p in passages}) == 3
    with pytest.raises(cramfast.CramfastError, match="ask for fewer or shorter"):
        cramfast.sources.sample_passages(lm.tokenizer, "a b c d e f", 8, 2, seed=0)
    old = tmp_path / "old.txt"
    old.write_bytes("caf\xe9 au lait, cr\xe8me br\xfbl\xe9e".encode("cp1252"))
    assert cramfast.sources.read_text_file(old, "cp1252") == "café au lait, crème brûlée"


def test_compress_streams_rows_and_tables(trained_path, tmp_path):
    proc = run_cli("compress", "--model", trained_path, "--text", "a cat sat on the mat",
                   "--text", "the quick brown fox jumps", "--max-steps", "300", "--threads", "1",
                   "--json", str(tmp_path / "t.json"), "--csv", str(tmp_path / "t.csv"),
                   "--out", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    import csv
    import json
    rows = json.loads((tmp_path / "t.json").read_text())
    assert sorted(r["#"] for r in rows) == [0, 1] and {r["exact"] for r in rows} == {"yes"}
    assert rows[0]["text"] in ("a cat sat on the mat", "the quick brown fox jumps")
    with open(tmp_path / "t.csv") as f:
        assert next(csv.DictReader(f))["#"] == str(rows[0]["#"])
    assert "text/s" in proc.stderr or "text-steps/s" in proc.stderr     # the progress bar
    assert len(cramfast.load_results(tmp_path / "run")) == 2


def test_ctrl_c_keeps_the_finished_results(trained_path, tmp_path):
    import signal
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cramfast", "compress", "--model", trained_path, "--quiet",
         "--text", "a cat sat on the mat", "--text", "zebra quartz vortex jumbled " * 2,
         "--max-steps", "100000", "--patience", "100000", "--set", "stall_steps=0",
         "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # Ctrl-C as a terminal delivers it: a test run in the background (nohup, `cmd &`)
        # passes SIGINT on ignored, and Python then never raises KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:                        # its second text never ends: never leave it running
        deadline = time.time() + 240
        while not (out / "cram-0000.json").exists() and time.time() < deadline:
            time.sleep(0.5)
        assert (out / "cram-0000.json").exists()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == \
        f"cramfast: interrupted: 1 of 2 results done, kept in {out}"
    assert "Traceback" not in stderr
    [kept] = cramfast.load_results(out)
    assert kept.exact and kept.text == "a cat sat on the mat"


def test_wheel_declares_what_the_default_model_sweeps_and_reports_need(tmp_path):
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path)],
                   cwd=root, check=True, capture_output=True)
    [requires] = tmp_path.glob("*.egg-info/requires.txt")
    declared = {line.split("=")[0].split(">")[0].strip()
                for line in requires.read_text().splitlines() if line and not line.startswith("[")}
    assert {"torch", "transformers", "safetensors", "gguf", "accelerate", "matplotlib",
            "wordfreq"} <= declared
    assert "torch==2.13.0" in requires.read_text()


def test_threads_default_leaves_busy_cores_alone():
    from cramfast.cli.compress import default_threads
    assert default_threads(2, 2, 0) == 2          # an idle machine: torch's own count
    assert default_threads(2, 2, 1) == 1          # another job on one of two cores
    assert default_threads(8, 4, 9) == 1          # overloaded: still one
    assert default_threads(4, 16, 2) == 4         # never more than torch would use


def test_busy_cores_sees_a_process_spinning_now():
    from cramfast.cli.compress import busy_cores
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 3\n"
                                "while time.time() < end: pass"])
    try:
        time.sleep(0.5)                           # the spinner is running
        assert busy_cores(window=0.5) >= 1
    finally:
        spinner.kill()
        spinner.wait()


def test_loading_a_model_prints_no_bar(trained_path, capfd):
    capfd.readouterr()
    cramfast.load_model(trained_path, dtype="fp16")           # not loaded yet in this process
    out, err = capfd.readouterr()
    assert "Loading" not in err and "Loading" not in out


def test_decode_prints_each_text_on_one_line(crammed, tmp_path, capsys, monkeypatch):
    """A decoded text with newlines stays on its line (newlines shown as \\n), so it never runs
    into the next result's header."""
    _, results = crammed
    cramfast.save(results, tmp_path)
    monkeypatch.setattr(cramfast, "decode", lambda res, model=None: (res.token_ids, "two\nlines"))
    capsys.readouterr()
    assert main(["decode", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 4 and printed[1] == printed[3] == "two\\nlines"
    assert printed[0].startswith("--- ") and printed[2].startswith("--- ")
