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
from cramfast.engine import checkpoint
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


def test_compress_with_a_checkpoint_folder_resumes_after_a_kill(tmp_path, corpus_file):
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
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while proc.poll() is None and not list(folder.glob("*.pt")) and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)
    assert proc.poll() is None, "it finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(folder.glob("*.pt"))
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
