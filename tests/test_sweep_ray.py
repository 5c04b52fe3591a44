"""--engine ray: a local 2-worker Ray cluster (loopback only) computes a sweep's texts, the
driver storing each row: the rows equal a one-process run's, and workers killed with SIGKILL at
random moments lose nothing and store nothing twice."""
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

from cramfast.sweep import grid, ray_engine, store
from cramfast.sweep import runner as sweep

from conftest import write_rotated_corpus

# ray itself is imported by the pool, after it has set the loopback-only environment
if importlib.util.find_spec("ray") is None:
    pytest.skip("the ray extra is not installed: pip install 'cramfast[ray]'",
                allow_module_level=True)

COMPARED = ("model", "source", "sample", "length", "n_mem", "seed", "n_tokens", "steps",
            "stop_reason", "accuracy", "exact", "best_step", "attempts", "decoded_ids")


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
    solve anything: every job runs its 600 steps, long enough to be killed."""
    plan = ("8,12,16,20,24,28,32", "4", "--lr", "1e-5", "--max-steps", "600")
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
    # A worker killed after its last chunk is noticed when the pool next uses it: one more
    # sweep reaches both workers, and then every killed worker has been replaced.
    sweep.run_sweep(sweep_grid(trained_path, prose, tmp_path / "after.db"), quiet=True,
                    compress_iter=pool.compress_iter, rank=0, world=1)
    assert pool.replaced - replaced_before == kills
    assert all(_running(pid) for pid in pool.pids())


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
