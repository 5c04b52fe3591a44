"""--engine ray: a local 2-worker Ray cluster (loopback only) computes a sweep's texts, the
driver storing each row: the rows equal a one-process run's, a capacity search submits each
probe to the running pool, workers killed with SIGKILL at random moments lose nothing and store
nothing twice, and a killed worker's texts (or a lost driver's) resume from their checkpoints."""
import importlib.util
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import torch

import cramfast
from cramfast.engine import checkpoint
from cramfast.errors import CramfastError
from cramfast.sweep import grid, ray_engine, store
from cramfast.sweep import runner as sweep

from conftest import corpus_texts, write_rotated_corpus

# ray itself is imported by the pool, after it has set the loopback-only environment
if importlib.util.find_spec("ray") is None:
    pytest.skip("the ray extra is not installed: pip install 'cramfast[ray]'",
                allow_module_level=True)

COMPARED = ("model", "source", "sample", "length", "n_mem", "seed", "n_tokens", "steps",
            "stop_reason", "accuracy", "exact", "best_step", "attempts", "decoded_ids")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The one-process runs here on one thread, as each actor computes (threads=1): the same
    arithmetic, and no second thread to wait for on a busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def prose(tmp_path_factory):
    return write_rotated_corpus(tmp_path_factory.mktemp("ray_src"))


@pytest.fixture(scope="module")
def pool():
    pool = ray_engine.RayPool(workers=2, threads=1)
    yield pool
    pool.close()


def sweep_grid(trained_path, prose, db, lengths="8,12,16", samples="3", *extra):
    args = ["--model", trained_path, "--source", str(prose), "--lengths", lengths, "--samples",
            samples, "--dtype", "fp64", "--max-steps", "120", "--set", "fill_slots=0", "--db",
            str(db), "--quiet", *extra]
    return grid.build_grid(sweep._parser().parse_args(args))


def rows_by_key(db):
    return {tuple(r[k] for k in store.KEY): r for r in store.read_runs([db])}


def assert_same_rows(got: dict, expected: dict):
    assert got.keys() == expected.keys()
    for key, row in expected.items():
        assert {k: got[key][k] for k in COMPARED} == {k: row[k] for k in COMPARED}, key
        assert got[key]["ce_with_mem"] == pytest.approx(row["ce_with_mem"], rel=1e-9, abs=1e-9)


def test_a_two_worker_ray_sweep_stores_the_rows_of_a_one_process_run(trained_path, prose,
                                                                      tmp_path, pool):
    alone = sweep.run_sweep(sweep_grid(trained_path, prose, tmp_path / "one.db"), quiet=True)
    on_ray = sweep.run_sweep(sweep_grid(trained_path, prose, tmp_path / "ray.db"), quiet=True,
                             compress_iter=pool.compress_iter, rank=0, world=1)
    assert alone.ran == on_ray.ran == 9
    assert_same_rows(rows_by_key(tmp_path / "ray.db"), rows_by_key(tmp_path / "one.db"))
    again = sweep.run_sweep(sweep_grid(trained_path, prose, tmp_path / "ray.db"), quiet=True,
                            compress_iter=pool.compress_iter, rank=0, world=1)
    assert (again.ran, again.already) == (0, 9)                # resumes from the store


def test_workers_killed_mid_sweep_lose_nothing_and_store_nothing_twice(trained_path, prose,
                                                                       tmp_path, pool):
    """Up to five SIGKILLs, each at a random moment after the sweep stored one more row (at
    least three: on a loaded machine the sweep may end first). A learning rate too small to
    solve anything: every job runs its 200 steps, long enough to be killed; two slots per
    worker, so that rows come in waves (in one batch all 28 would end at one moment)."""
    plan = ("8,12,16,20,24,28,32", "4", "--lr", "1e-5", "--max-steps", "200", "--max-slots",
            "2")
    sweep.run_sweep(sweep_grid(trained_path, prose, tmp_path / "one.db", *plan), quiet=True)
    db = tmp_path / "ray.db"
    done = {}
    worker = threading.Thread(target=lambda: done.update(summary=sweep.run_sweep(
        sweep_grid(trained_path, prose, db, *plan), quiet=True,
        compress_iter=pool.compress_iter, rank=0, world=1)))
    replaced_before = pool.replaced
    worker.start()
    rng = random.Random(0)
    kills, seen = 0, 0
    deadline = time.time() + 240
    while kills < 5 and worker.is_alive() and time.time() < deadline:
        stored = _count(db)
        if stored > seen:
            time.sleep(rng.uniform(0, 0.5))
            alive = [pid for pid in pool.pids() if _running(pid)]
            if alive:                                     # else one died, not replaced yet
                os.kill(rng.choice(alive), signal.SIGKILL)
                kills, seen = kills + 1, stored
        time.sleep(0.05)
    worker.join(timeout=300)
    assert kills >= 3 and not worker.is_alive() and "summary" in done
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 28    # each job once
    assert_same_rows(rows_by_key(db), rows_by_key(tmp_path / "one.db"))
    # A worker killed after its last text is noticed when the pool next waits on it: one more
    # sweep reaches both workers, and then every killed worker has been replaced.
    sweep.run_sweep(sweep_grid(trained_path, prose, tmp_path / "after.db"), quiet=True,
                    compress_iter=pool.compress_iter, rank=0, world=1)
    assert pool.replaced - replaced_before == kills
    assert all(_running(pid) for pid in pool.pids())
    assert pool.status() == f"2 workers ({pool.replaced} replaced)"   # the progress bar's


def alone_and_on_ray(trained_path, prose, tmp_path, pool, plan):
    """The same sweep in one process and on the pool: (its summaries, the pool's
    compress_iter calls, each the count of texts it was first given)."""
    alone = sweep.run_sweep(sweep_grid(trained_path, prose, tmp_path / "one.db", *plan),
                            quiet=True)
    calls = []

    def counted(texts, **kwargs):
        calls.append(len(texts))
        return pool.compress_iter(texts, **kwargs)

    on_ray = sweep.run_sweep(sweep_grid(trained_path, prose, tmp_path / "ray.db", *plan),
                             quiet=True, compress_iter=counted, rank=0, world=1)
    assert_same_rows(rows_by_key(tmp_path / "ray.db"), rows_by_key(tmp_path / "one.db"))
    return alone, on_ray, calls


def test_a_capacity_search_on_ray_submits_each_probe_to_the_running_pool(trained_path, prose,
                                                                           tmp_path, pool):
    """One compress_iter call per group: each text's next probe is submitted the moment its
    last one is stored (no rounds), and the search ends where a one-process search does."""
    alone, on_ray, calls = alone_and_on_ray(trained_path, prose, tmp_path, pool,
                                            ("8,32", "3", "--search", "capacity"))
    assert calls == [3] and on_ray.ran == alone.ran > 3       # later probes were submitted
    assert on_ray.search == alone.search


def test_a_climb_on_ray_submits_each_length_to_the_running_pool(trained_path, prose, tmp_path,
                                                                 pool):
    """A climb on Ray is one compress_iter call per group too: a length's next jobs are
    submitted the moment it is decided, and the climb stores what a one-process climb does."""
    alone, on_ray, calls = alone_and_on_ray(trained_path, prose, tmp_path, pool,
                                            ("8,12,16,24,32", "2", "--climb", "--preset", "fast"))
    assert calls == [4] and on_ray.ran == alone.ran > 4        # later lengths were submitted
    assert on_ray.climb == alone.climb


class DictStore:
    """A CheckpointStore in memory; ``on_put(n)`` runs after the n-th put (a fault injected)."""

    def __init__(self, on_put=None):
        self.records, self.puts, self.on_put = {}, 0, on_put

    def get(self, fingerprints):
        return {fp: self.records[fp] for fp in fingerprints if fp in self.records}

    def put(self, records):
        self.records.update(records)
        self.puts += 1
        if self.on_put:
            self.on_put(self.puts)

    def delete(self, fingerprints):
        for fp in fingerprints:
            self.records.pop(fp, None)

    def checkpoints(self):
        return len(self.records)


@pytest.fixture(scope="module")
def lm(trained_path):
    return cramfast.load_model(trained_path, dtype="fp64")


# Texts that run their whole budget (a learning rate too small to solve them), a checkpoint saved
# at every sync: there are records to resume from whenever the fault comes.
LONG_JOBS = dict(max_steps=240, lr=1e-5, fill_slots=0, checkpoint_seconds=0)


def assert_same_results(got: dict, expected: list):
    assert sorted(got) == list(range(len(expected)))
    for i, want in enumerate(expected):
        have = got[i]
        assert (have.steps, have.stop_reason, have.best_step, have.decoded_ids) == (
            want.steps, want.stop_reason, want.best_step, want.decoded_ids), i
        torch.testing.assert_close(have.mem, want.mem, rtol=1e-9, atol=1e-9)


def test_a_killed_worker_s_texts_resume_from_their_checkpoints(lm, pool):
    texts = corpus_texts(lm.tokenizer, [16, 24, 32, 40], seed=5)
    alone = cramfast.compress(texts, model=lm, **LONG_JOBS)
    killed = []

    def kill_a_worker(puts):                    # a worker whose texts have checkpoints
        running = pool.running
        slots = [s for s, held in running.held.items() if held & running.records.keys()]
        if puts >= 4 and slots and not killed:
            killed.append(pool.pids()[slots[0]])
            os.kill(killed[0], signal.SIGKILL)

    resumed_before, replaced_before = pool.resumed, pool.replaced
    store = DictStore(kill_a_worker)
    got = dict(pool.compress_iter(texts, model=lm, checkpoint=store, **LONG_JOBS))
    assert killed and pool.replaced == replaced_before + 1
    assert pool.resumed > resumed_before                      # re-queued with a checkpoint
    assert_same_results(got, alone)
    assert store.records == {}                  # each record gone once its result was taken


def test_a_text_withdrawn_on_ray_is_not_yielded_and_goes_on_from_its_kept_checkpoint(lm, pool):
    """PoolStream.withdraw, as the engine's Stream.withdraw: text 2, withdrawn from its actor
    once text 0 (a short budget) is back, never comes; its record comes back to the store, and
    a run with that store goes on from it to the uninterrupted result."""
    texts = corpus_texts(lm.tokenizer, [16, 32, 40], seed=5)
    per_text = [dict(max_steps=20), {}, {}]
    alone = cramfast.compress(texts, model=lm, per_text=per_text, **LONG_JOBS)
    store = DictStore()
    stream = pool.compress_iter(texts, model=lm, per_text=per_text, checkpoint=store,
                                **LONG_JOBS)
    got = {}
    for index, result in stream:
        got[index] = result
        if index == 0:
            stream.withdraw(2)
    assert sorted(got) == [0, 1]
    assert_same_results({i: got[i] for i in (0, 1)}, alone[:2])
    [record] = store.records.values()               # text 2's: the others' were taken
    assert 0 < checkpoint.progress(checkpoint.unpack(record))["steps"] < 240
    [resumed] = cramfast.compress([texts[2]], model=lm, checkpoint=store, **LONG_JOBS)
    assert_same_results({0: resumed}, alone[2:])
    assert store.records == {}


class DriverLost(Exception):
    pass


def test_a_restarted_driver_resumes_the_texts_from_its_store(lm, pool):
    """The driver's loop dies after its store has records (as a killed driver would leave
    them); the same call again resumes every text from its record, on fresh actors."""
    texts = corpus_texts(lm.tokenizer, [16, 24, 32, 40], seed=6)
    alone = cramfast.compress(texts, model=lm, **LONG_JOBS)

    def lose_the_driver(puts):
        if puts == 8:
            raise DriverLost

    store = DictStore(lose_the_driver)
    with pytest.raises(DriverLost):
        list(pool.compress_iter(texts, model=lm, checkpoint=store, **LONG_JOBS))
    saved = dict(store.records)
    assert saved
    store.on_put = None
    stream = pool.compress_iter(texts, model=lm, checkpoint=store, **LONG_JOBS)
    assert stream.from_store == len(saved)
    assert_same_results(dict(stream), alone)
    assert store.records == {}


def test_a_bad_text_on_ray_raises_as_in_one_process_and_the_pool_goes_on(lm, pool):
    texts = corpus_texts(lm.tokenizer, [16, 24], seed=7)
    kw = dict(model=lm, max_steps=20, fill_slots=0)
    stream = pool.compress_iter(texts, **kw)
    with pytest.raises(CramfastError, match="longer than the stream was sized for"):
        stream.submit(corpus_texts(lm.tokenizer, [40], seed=7)[0])     # checked at once
    stream.submit([5])                                  # checked by the actor that takes it
    with pytest.raises(CramfastError, match="at least 2 are needed"):
        dict(stream)
    assert list(stream) == []                           # the call has ended: no wait, no hang
    assert sorted(dict(pool.compress_iter(texts, **kw))) == [0, 1]


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed process not yet reaped still takes signals)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False


def _count(db) -> int:
    try:
        return sqlite3.connect(db).execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_the_sweep_command_runs_on_ray(trained_path, prose, tmp_path):
    """python -m cramfast.sweep --engine ray: its own local cluster, started and stopped."""
    db = tmp_path / "cli.db"
    args = ["--model", trained_path, "--source", str(prose), "--lengths", "8", "--samples", "2",
            "--dtype", "fp64", "--max-steps", "60", "--db", str(db), "--quiet", "--engine", "ray",
            "--workers", "1", "--threads", "1"]
    done = subprocess.run([sys.executable, "-m", "cramfast.sweep", *args], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "2 jobs, 0 already stored, 2 rows written" in done.stdout
    assert len(store.read_runs([db])) == 2


def test_a_worker_that_cannot_load_its_model_is_refused_in_one_line(lm, pool, tmp_path):
    texts = corpus_texts(lm.tokenizer, [16], seed=7)
    with pytest.raises(CramfastError, match=r"a Ray worker could not start: .*no-such-model"):
        dict(pool.compress_iter(texts, model=str(tmp_path / "no-such-model"), max_steps=5))
    assert sorted(dict(pool.compress_iter(texts, model=lm, max_steps=5))) == [0]
