"""Checkpoint and resume (cramfast.engine.checkpoint): a run stopped at any save and rerun ends
with the uninterrupted run's results, bit for bit (fp64, the same thread count); a sweep killed
with SIGKILL 20 times at random moments loses nothing, stores nothing twice, and every row equals
the uninterrupted sweep's."""
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch

import cramfast
from cramfast import results_io
from cramfast.engine import checkpoint, stopping
from cramfast.sweep import runner as sweep
from cramfast.sweep import store

from conftest import TRAINED, corpus_texts, env, one_line_failure, write_rotated_corpus

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class Stop(Exception):
    """Stands in for a kill: raised right after a save."""


class StopAfter(checkpoint.DirectoryCheckpoints):
    def __init__(self, path, saves: int):
        super().__init__(path)
        self.saves, self.made = saves, 0

    def put(self, records):
        super().put(records)
        self.made += 1
        if self.made == self.saves:
            raise Stop


@pytest.fixture(scope="module")
def lm():
    return cramfast.load_model(str(TRAINED), dtype="fp64")


# hard enough on the tiny model to stall, restart and run out of steps; fp64: batch-independent
HARD = dict(max_steps=300, lr=0.05, stall_steps=25, checkpoint_seconds=0)


def interrupted_then_resumed(lm, texts, saves, folder, **kw):
    """Texts computed until the ``saves``-th checkpoint, the rest by a rerun (as a sweep reruns
    what it has not stored)."""
    got = {}
    try:
        for i, result in cramfast.compress_iter(texts, model=lm, checkpoint=StopAfter(folder,
                                                                                       saves),
                                                **kw):
            got[i] = result
    except Stop:
        pass
    left = [i for i in range(len(texts)) if i not in got]
    if left:
        got.update(zip(left, cramfast.compress([texts[i] for i in left], model=lm,
                                               checkpoint=folder, **kw)))
    return [got[i] for i in range(len(texts))], left


def assert_identical(got, expected):
    for a, b in zip(got, expected):
        assert (a.steps, a.best_step, a.stop_reason, a.restarts, a.attempt, a.attempts,
                a.decoded_ids) == (b.steps, b.best_step, b.stop_reason, b.restarts, b.attempt,
                                   b.attempts, b.decoded_ids)
        assert torch.equal(a.mem, b.mem)
        assert (a.ce_with_mem, a.margin) == (b.ce_with_mem, b.margin)


@pytest.mark.parametrize("fill_slots", [0, 4], ids=["one-attempt", "parallel-attempts"])
def test_a_run_stopped_at_any_save_resumes_to_the_same_results(lm, tmp_path, fill_slots):
    texts = corpus_texts(lm.tokenizer, [40, 56, 64, 80], seed=1)
    kw = dict(HARD, fill_slots=fill_slots)
    expected = cramfast.compress(texts, model=lm, **kw)
    assert {r.stop_reason for r in expected} == {"lossless", "max_steps"}
    assert all(r.restarts > 0 for r in expected)
    stopped_with = []
    for saves in (1, 6, 14):
        got, left = interrupted_then_resumed(lm, texts, saves, tmp_path / f"at{saves}", **kw)
        assert_identical(got, expected)
        stopped_with.append(len(left))
        assert not list((tmp_path / f"at{saves}").iterdir())     # finished texts leave nothing
    assert stopped_with[0] == len(texts) and min(stopped_with) < len(texts)


def test_a_record_of_other_inputs_or_unreadable_is_not_resumed(lm, tmp_path):
    texts = corpus_texts(lm.tokenizer, [40, 64], seed=1)
    folder = tmp_path / "ckpt"
    interrupted_then_resumed(lm, texts, 3, folder, **HARD)
    with pytest.raises(Stop):
        list(cramfast.compress_iter(texts, model=lm, checkpoint=StopAfter(folder, 2), **HARD))
    # other settings: other fingerprints, so these texts start afresh
    other = dict(HARD, max_steps=200)
    assert_identical(cramfast.compress(texts, model=lm, checkpoint=folder, **other),
                     cramfast.compress(texts, model=lm, **other))
    # a record cut short (a disk that filled up) is no record
    with pytest.raises(Stop):
        list(cramfast.compress_iter(texts, model=lm, checkpoint=StopAfter(folder, 2), **HARD))
    for path in folder.iterdir():
        path.write_bytes(path.read_bytes()[:100])
    assert_identical(cramfast.compress(texts, model=lm, checkpoint=folder, **HARD),
                     cramfast.compress(texts, model=lm, **HARD))


def test_a_write_cut_short_by_a_kill_is_removed_with_its_record(tmp_path, monkeypatch):
    """A kill -9 between mkstemp and the rename leaves a partial file: the text's record is
    still the previous one, and the partial goes when the text finishes (its delete), while
    another text's partial stays."""
    folder = checkpoint.DirectoryCheckpoints(tmp_path)
    folder.put({"a" * 32: b"first", "b" * 32: b"other"})

    def killed(src, dst):
        raise KeyboardInterrupt             # the process dies before the rename
    monkeypatch.setattr(checkpoint.os, "replace", killed)
    for fp in ("a" * 32, "b" * 32):
        with pytest.raises(KeyboardInterrupt):
            folder.put({fp: b"second, cut short"})
    monkeypatch.undo()
    assert folder.get(["a" * 32]) == {"a" * 32: b"first"}
    assert len(list(tmp_path.glob("*.tmp"))) == 2
    folder.delete(["a" * 32])
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("b")) == []
    assert [p.suffix for p in tmp_path.glob("b*")] in ([".pt", ".tmp"], [".tmp", ".pt"])


def test_checkpoints_are_saved_when_due(lm, tmp_path):
    texts = corpus_texts(lm.tokenizer, [40, 56, 64, 80], seed=1)[1:2]    # runs out of steps
    saves = []

    class Counting(checkpoint.DirectoryCheckpoints):
        def put(self, records):
            saves.append(sorted(records))
            super().put(records)

    for kw, expected in ((dict(checkpoint_seconds=1e9), 0),          # never due within the run
                         (dict(checkpoint_seconds=1e9, checkpoint_steps=64), 4),
                         (dict(checkpoint_seconds=0), 18)):
        saves.clear()
        [result] = cramfast.compress(texts, model=lm, checkpoint=Counting(tmp_path / "c"),
                                     **dict(HARD, fill_slots=0, **kw))
        assert result.steps == 300 and len(saves) == expected       # syncs of 16: 300 // 16


# ---------------------------------------------------------------------------------------------
# a polite stop (engine/stopping.py): SIGTERM or Ctrl-C saves every text in flight, then ends


def test_a_sigterm_saves_every_text_in_flight_at_the_next_sync_and_the_rerun_ends_the_same(
        lm, tmp_path):
    """No save is due in the run (checkpoint_seconds 1e9): what the rerun resumes from is the
    stop's own save."""
    texts = corpus_texts(lm.tokenizer, [40, 56, 64, 80], seed=1)
    kw = dict(HARD, fill_slots=0, checkpoint_seconds=1e9)
    expected = cramfast.compress(texts, model=lm, **kw)
    folder, got = tmp_path / "ckpt", {}
    with stopping.stop_on_signals(), pytest.raises(stopping.Stopped) as stop:
        for i, result in cramfast.compress_iter(texts, model=lm, checkpoint=folder, **kw):
            got[i] = result
            signal.raise_signal(signal.SIGTERM)     # as the first text comes: three in flight
    assert stop.value.signum == signal.SIGTERM and stop.value.saved == len(texts) - len(got)
    assert 0 < len(got) < len(texts) and len(list(folder.iterdir())) == stop.value.saved
    left = [i for i in range(len(texts)) if i not in got]
    got.update(zip(left, cramfast.compress([texts[i] for i in left], model=lm, checkpoint=folder,
                                           **kw)))
    assert_identical([got[i] for i in range(len(texts))], expected)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL      # the handlers are put back


def test_a_stop_with_no_loop_running_or_a_second_signal_stops_at_once():
    # pytest itself may run with SIGINT ignored (started in the background by a script): the
    # first part is of a process that takes Ctrl-C, as Python's own handler does
    launched = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with stopping.stop_on_signals(), pytest.raises(stopping.Stopped) as stop:
            signal.raise_signal(signal.SIGINT)       # nothing in flight: nothing to wait for
    finally:
        signal.signal(signal.SIGINT, launched)
    assert (stop.value.signum, stop.value.saved) == (signal.SIGINT, None)
    lines = []
    with stopping.stop_on_signals(lines.append), stopping.saving_loop():
        signal.raise_signal(signal.SIGTERM)          # a loop runs: it is asked, not killed
        signal.raise_signal(signal.SIGTERM)          # the same stop, forwarded by a wrapper
        assert stopping.stop_signal() == signal.SIGTERM and len(lines) == 1
        time.sleep(stopping.ECHO_SECONDS)
        with pytest.raises(stopping.Stopped):
            signal.raise_signal(signal.SIGTERM)      # a second stop
    assert stopping.stop_signal() is None
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)    # as a job started with `&` is
    try:
        with stopping.stop_on_signals():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


# ---------------------------------------------------------------------------------------------
# a sweep killed with SIGKILL 20 times


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    return write_rotated_corpus(tmp_path_factory.mktemp("ckpt_src"))


def _saved(db) -> tuple[int, float]:
    """(rows stored, time of the newest checkpoint save)."""
    try:
        conn = sqlite3.connect(db)
        rows = conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        saved = conn.execute("SELECT MAX(saved_at) FROM checkpoints").fetchone()[0] or 0.0
        return rows, saved
    except sqlite3.OperationalError:        # not created yet
        return 0, 0.0


def test_a_sweep_killed_20_times_loses_nothing_and_ends_as_uninterrupted(tmp_path, corpus_file):
    """Every job runs hundreds of updates in one batch (all fit at once); each kill comes at a
    random moment after the rerun made progress (a new save or a new row)."""
    args = ["--model", str(TRAINED), "--source", str(corpus_file), "--lengths",
            "16,24,32,40,48", "--samples", "4", "--dtype", "fp64", "--max-steps", "600",
            "--lr", "0.03", "--max-slots", "32", "--checkpoint-every", "0",
            "--threads", "1", "--quiet"]
    assert sweep.main([*args, "--db", str(tmp_path / "once.db")]) == 0
    db = tmp_path / "killed.db"
    rng = random.Random(0)
    kills, last = 0, (0, 0.0)
    while kills < 20:
        proc = subprocess.Popen([sys.executable, "-m", "cramfast.sweep", *args, "--db", str(db)],
                                cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while proc.poll() is None and _saved(db) == last and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 0.3))
        if proc.poll() is not None:
            assert proc.returncode == 0, proc.stderr.read()
            break                       # it finished first: fewer kills than planned
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills, last = kills + 1, _saved(db)
    assert kills == 20, f"the sweep ended after {kills} kills"
    assert sweep.main([*args, "--db", str(db)]) == 0
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 20    # each job once
    assert conn.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0] == 0
    expected = {tuple(r[k] for k in store.KEY): r
                for r in store.read_runs([tmp_path / "once.db"], with_mem=True)}
    got = {tuple(r[k] for k in store.KEY): r for r in store.read_runs([db], with_mem=True)}
    assert got.keys() == expected.keys()
    compared = ("steps", "best_step", "stop_reason", "restarts", "attempts", "accuracy",
                "exact", "decoded_ids", "ce_with_mem", "margin", "mem")
    assert {r["stop_reason"] for r in expected.values()} >= {"lossless", "max_steps"}
    for key, row in expected.items():
        assert {k: got[key][k] for k in compared} == {k: row[k] for k in compared}, key


def test_a_sweep_sent_sigterm_saves_its_texts_exits_143_and_the_rerun_ends_as_uninterrupted(
        tmp_path, corpus_file):
    args = ["--model", str(TRAINED), "--source", str(corpus_file), "--lengths", "16,48",
            "--samples", "3", "--dtype", "fp64", "--max-steps", "600", "--lr", "0.03",
            "--max-slots", "32", "--checkpoint-every", "1000000", "--threads", "1", "--quiet"]
    assert sweep.main([*args, "--db", str(tmp_path / "once.db")]) == 0
    db = tmp_path / "stopped.db"
    proc = subprocess.Popen([sys.executable, "-m", "cramfast.sweep", *args, "--db", str(db)],
                            cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while proc.poll() is None and _saved(db)[0] == 0 and time.time() < deadline:
        time.sleep(0.02)                 # the first row stored: the others are in flight
    assert proc.poll() is None, "the sweep ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "text(s) in flight saved" in err
    rows, saved_at = _saved(db)
    assert 0 < rows < 6 and saved_at > 0        # saved by the stop: no save was due before
    assert sweep.main([*args, "--db", str(db)]) == 0
    expected = {tuple(r[k] for k in store.KEY): r
                for r in store.read_runs([tmp_path / "once.db"], with_mem=True)}
    got = {tuple(r[k] for k in store.KEY): r for r in store.read_runs([db], with_mem=True)}
    assert got.keys() == expected.keys()
    for key, row in expected.items():
        assert {k: got[key][k] for k in ("steps", "stop_reason", "mem", "ce_with_mem")} == {
            k: row[k] for k in ("steps", "stop_reason", "mem", "ce_with_mem")}, key


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_compress_with_a_checkpoint_folder_resumes_after_a_kill(tmp_path, corpus_file, stop):
    """SIGKILL: the rerun goes on from the last save; SIGTERM: from the stop's own save."""
    command = [sys.executable, "-m", "cramfast", "compress", "--model", str(TRAINED), "--dtype",
               "fp64", "--file", str(corpus_file), "--length", "56", "--samples", "3", "--lr",
               "0.05", "--set", "stall_steps=25", "--max-steps", "300", "--threads", "1",
               "--quiet"]
    run = lambda *extra: subprocess.run([*command, *extra], cwd=tmp_path, env=env(),
                                        capture_output=True, text=True, timeout=300)
    assert run("--out", "once").returncode == 0
    folder = tmp_path / "ckpt"
    resume = ("--checkpoint", str(folder), "--checkpoint-every", "0")
    proc = subprocess.Popen([*command, "--out", "killed", *resume], cwd=tmp_path, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while proc.poll() is None and not list(folder.glob("*.pt")) and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)
    assert proc.poll() is None, "it finished before it could be killed"
    os.kill(proc.pid, stop)
    _, err = proc.communicate(timeout=120)
    assert list(folder.glob("*.pt"))
    if stop == signal.SIGTERM:
        assert proc.returncode == 143 and "stopped by SIGTERM" in err.splitlines()[-1], err
    assert run("--out", "resumed", *resume).returncode == 0
    assert not list(folder.iterdir())
    once, _ = results_io.read_results(tmp_path / "once")
    resumed, _ = results_io.read_results(tmp_path / "resumed")
    for a, b in zip(resumed, once, strict=True):
        assert (a.steps, a.stop_reason, a.restarts) == (b.steps, b.stop_reason, b.restarts)
        assert torch.equal(a.mem, b.mem) and a.ce_with_mem == b.ce_with_mem


def test_a_checkpoint_folder_that_cannot_be_written_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    run = subprocess.run([sys.executable, "-m", "cramfast", "compress", "--model", str(TRAINED),
                          "--text", "a short text", "--checkpoint", str(blocker / "ckpt")],
                         cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120)
    assert "cannot keep checkpoints there" in one_line_failure(run, "cramfast")
