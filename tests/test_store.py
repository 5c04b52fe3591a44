"""The sweep's SQLite store: schema, one row per key, WAL, mem blobs, shards merged; columns
derived from the result type; older databases upgraded when opened; unwritable ones refused."""
import dataclasses
import json
import sqlite3

import pytest
import torch

from cramfast.errors import CramfastError
from cramfast.metrics import CompressionResult, make_result
from cramfast.report import build as report
from cramfast.sweep import grid, store
from cramfast.sweep import runner as sweep

from conftest import fake_compressor


def fake_result(n_tokens=6, correct=5, mem=None):
    ids = list(range(3, 3 + n_tokens))
    return make_result(token_ids=ids, correct_with_mem=correct, correct_without_mem=1,
                       ce_without_mem=20.0, ce_with_mem=2.5, decoded_ids=ids[1:],
                       stop_reason="lossless", mem=mem if mem is not None else torch.randn(2, 4),
                       n_mem=2, model="m", seed=0, steps=7, best_step=7, seconds=0.5,
                       text="t" * n_tokens, settings={"lr": 0.01})


def key(**kw):
    base = dict(model="m", source="file:/x?chunking=prefix&sample_seed=0", sample=0, length=6,
                n_mem=2, seed=0, settings_hash="abc")
    return dict(base, **kw)


def test_row_round_trip_unique_key_and_wal(tmp_path):
    mem = torch.randn(2, 4)
    with store.Store(tmp_path / "r.db") as s:
        row = store.result_row(fake_result(mem=mem), key=key(), origin="grid",
                               model_info=dict(label="m", hidden_size=4, vocab_size=300, max_cap=8,
                                               context=128), source_label="x")
        assert s.add(row) is True
        assert s.add(dict(row, accuracy=0.0)) is False         # same key: ignored, not duplicated
        assert s.add(store.result_row(fake_result(), key=key(sample=1))) is True
        assert s.count() == 2
        assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        [first] = s.rows(with_mem=True, where="sample = ?", params=(0,))
    assert first["accuracy"] == 1.0 and first["token_gain"] == 4.0 and first["exact"] == 1
    assert first["ref"] == "r.db#1" and first["hidden_size"] == 4 and first["cramfast_version"]
    assert torch.equal(store.blob_to_mem(first["mem"]), mem)
    assert first["mem_shape"] == "[2, 4]" and first["token_ids"] == "[3, 4, 5, 6, 7, 8]"
    # the unique constraint is in the schema itself, not only in Store.add
    conn = sqlite3.connect(tmp_path / "r.db")
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(f"INSERT INTO runs ({', '.join(store.KEY)}) VALUES (?,?,?,?,?,?,?)",
                     tuple(key().values()))


def test_shards_merge_first_copy_wins(tmp_path):
    main = tmp_path / "sweep.db"
    for path, samples in ((main, [0, 1]), (store.shard_path(main, 0), [1, 2]),
                          (store.shard_path(main, 1), [3])):
        with store.Store(path) as s:
            for i in samples:
                s.add(store.result_row(fake_result(), key=key(sample=i)))
    (tmp_path / "sweep.rankX.db").write_text("not a shard")
    assert [p.name for p in store.family(main)] == ["sweep.db", "sweep.rank0.db", "sweep.rank1.db"]
    rows = store.read_runs([main])
    assert sorted(r["sample"] for r in rows) == [0, 1, 2, 3]
    assert {r["ref"] for r in rows if r["sample"] == 1} == {"sweep.db#2"}
    assert len(store.family_key_values(main, "accuracy")) == 4
    # shards alone (the main file never written) are found too
    main.unlink()
    assert sorted(r["sample"] for r in store.read_runs([main])) == [1, 2, 3]


def test_bad_files_are_one_line_errors(tmp_path):
    text = tmp_path / "notes.db"
    text.write_text("hello, not sqlite " * 100)
    with pytest.raises(CramfastError, match="not a cramfast results database"):
        store.Store(text)
    assert text.read_text().startswith("hello")              # untouched
    with pytest.raises(CramfastError, match="no such results database"):
        store.read_runs([tmp_path / "absent.db"])
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)")
    with pytest.raises(CramfastError, match="no table 'runs'"):
        store.Store(other, create=False)


# ---------------------------------------------------------------------------------------------
# columns derived from the result type


def test_every_result_field_is_a_column_of_its_type(tmp_path):
    conn_types = {}
    with store.Store(tmp_path / "t.db") as s:
        conn_types = {r[1]: r[2] for r in s.conn.execute("PRAGMA table_info(runs)")}
    for f in dataclasses.fields(CompressionResult):
        assert f.name in conn_types, f.name
    assert {n: conn_types[n] for n in ("restarts", "attempts", "attempt", "exact", "accuracy",
                                       "stop_reason", "token_ids", "settings", "error",
                                       "mem")} == dict(
        restarts="INTEGER", attempts="INTEGER", attempt="INTEGER", exact="INTEGER", accuracy="REAL",
        stop_reason="TEXT", token_ids="TEXT", settings="TEXT", error="TEXT", mem="BLOB")
    for name in store.PROVENANCE:
        assert name in conn_types
    result = dataclasses.replace(fake_result(), restarts=2, attempts=3, attempt=1)
    with store.Store(tmp_path / "t.db") as s:
        s.add(store.result_row(result, key=key(), sweep={"preset": "fast"}))
        [row] = s.rows()
    assert (row["restarts"], row["attempts"], row["attempt"]) == (2, 3, 1)
    assert json.loads(row["settings"]) == {"lr": 0.01}               # the result's own settings
    assert json.loads(row["sweep"]) == {"preset": "fast"}            # the sweep's record
    assert row["error"] is None and row["n_tokens"] == 6


def test_a_new_result_field_needs_no_store_edit(monkeypatch):
    @dataclasses.dataclass
    class Extended(CompressionResult):
        margin: float | None = None
        per_step: list[float] = dataclasses.field(default_factory=list)
    monkeypatch.setattr(store, "CompressionResult", Extended)
    columns = store._result_columns()
    assert columns["margin"] is float and columns["per_step"] is list and columns["exact"] is bool
    with pytest.raises(TypeError, match="no SQL column type"):
        store._column_kind(set[int])


# ---------------------------------------------------------------------------------------------
# older databases


# The schema of cramfast 7b3a1b0 (results schema 1), as its store.py created it.
V1_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY, model TEXT NOT NULL, source TEXT NOT "
    "NULL, sample INTEGER NOT NULL, length INTEGER NOT NULL, n_mem INTEGER NOT NULL, seed INTEGER "
    "NOT NULL, settings_hash TEXT NOT NULL, origin TEXT, model_label TEXT, source_label TEXT, "
    "hidden_size "
    "INTEGER, vocab_size INTEGER, max_cap INTEGER, context INTEGER, n_tokens INTEGER, token_ids "
    "TEXT, "
    "decoded_ids TEXT, text TEXT, steps INTEGER, best_step INTEGER, stop_reason TEXT, accuracy "
    "REAL, accuracy_without_mem REAL, exact INTEGER, ce_without_mem REAL, ce_with_mem REAL, "
    "info_gain_nats "
    "REAL, info_gain_bits REAL, token_gain REAL, seconds REAL, error TEXT, mem BLOB, mem_shape "
    "TEXT, init_from TEXT, settings TEXT, cramfast_version TEXT, created_at REAL, host TEXT, rank "
    "INTEGER, UNIQUE (model, source, sample, length, n_mem, seed, settings_hash));"
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);"
)


def v1_database(path, rows):
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript("BEGIN;" + V1_SCHEMA +
                       "INSERT OR IGNORE INTO meta VALUES ('schema_version', '1');COMMIT;")
    for row in rows:
        conn.execute(f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                     list(row.values()))
    conn.close()


def v1_row(job_key: dict, settings, token_ids=(3, 4, 5, 6, 7, 8, 9, 10)):
    """A row as cramfast 7b3a1b0's sweep wrote it: its record of the run in ``settings``."""
    n = len(token_ids) - 1
    return dict(job_key, origin="grid", model_label="tiny", source_label="random", hidden_size=32,
                vocab_size=300, max_cap=62, context=128, n_tokens=len(token_ids),
                token_ids=json.dumps(list(token_ids)), decoded_ids=json.dumps(list(token_ids[1:])),
                text="cat dog", steps=12, best_step=12, stop_reason="lossless", accuracy=1.0,
                accuracy_without_mem=0.25, exact=1, ce_without_mem=3.0 * n, ce_with_mem=0.1,
                info_gain_nats=3.0 * n - 0.1, info_gain_bits=(3.0 * n - 0.1) / 0.6931471805599453,
                token_gain=0.75 * n, seconds=1.5, error=None,
                mem=store.mem_to_blob(torch.ones(1, 32)), mem_shape="[1, 32]", init_from=None,
                settings=json.dumps(settings, sort_keys=True), cramfast_version="0.1.0",
                created_at=1.0, host="h", rank=0)


def test_version_1_database_upgraded_resumed_and_reported(trained_path, tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("cat\ndog\nsky\nmat\nfox\n")
    db = tmp_path / "v1.db"
    g = grid.build_grid(sweep._parser().parse_args([
        "--model", trained_path, "--source", "random", "--vocab-file", str(words),
        "--lengths", "8,12", "--samples", "1", "--db", str(db)]))
    first = grid.SweepJobs(g).jobs[0]
    record = g.settings_record()
    v1_database(db, [v1_row(first.as_dict(), record)])

    with store.Store(db, create=False) as s:
        [row] = s.rows(with_mem=True)
        version = s.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
    assert version == "2"
    assert (row["accuracy"], row["steps"], row["stop_reason"], row["ref"]) == (1.0, 12, "lossless",
                                                                               "v1.db#1")
    assert torch.equal(store.blob_to_mem(row["mem"]), torch.ones(1, 32))
    assert (row["restarts"], row["attempts"], row["attempt"]) == (None, None, None)   # new columns
    assert json.loads(row["sweep"]) == record
    assert json.loads(row["settings"]) == record["optim"]
    with store.Store(db, create=False) as s:                        # upgraded once only
        assert json.loads(s.rows()[0]["sweep"]) == record

    fake = fake_compressor(lambda ids: 100)
    summary = sweep.run_sweep(g, quiet=True, compress_iter=fake)
    assert summary.already == 1 and summary.ran == 1
    assert [c["lengths"] for c in fake.calls] == [[12]]             # the stored key is skipped
    result = report.make_report([db], tmp_path / "rep")
    assert result["rows"] == 2 and [r["texts"] for r in result["table"]] == [1]


def test_version_1_row_without_a_sweep_record_keeps_its_settings(tmp_path):
    db = tmp_path / "plain.db"
    v1_database(db, [v1_row(key(), {"lr": 0.01}), dict(key(sample=1), settings=None)])
    rows = store.read_runs([db])
    assert [json.loads(r["settings"]) if r["settings"] else None for r in rows] == [{"lr": 0.01},
                                                                                    None]
    assert [r["sweep"] for r in rows] == [None, None]


def test_missing_columns_are_added_generically(tmp_path):
    db = tmp_path / "old2.db"
    with store.Store(db) as s:
        s.add(store.result_row(fake_result(), key=key()))
    conn = sqlite3.connect(db)
    conn.execute("ALTER TABLE runs DROP COLUMN attempt")        # as a store made before the field
    conn.commit()
    conn.close()
    [row] = store.read_runs([db])
    assert row["attempt"] is None and row["accuracy"] == 1.0
    with store.Store(db) as s:
        s.add(store.result_row(fake_result(), key=key(sample=1)))
        assert [r["attempt"] for r in s.rows()] == [None, 0]


def test_newer_schema_refused_in_one_line(tmp_path):
    db = tmp_path / "new.db"
    store.Store(db).close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(CramfastError, match="results schema 3 is newer than this cramfast reads"):
        store.Store(db, create=False)


# ---------------------------------------------------------------------------------------------
# databases that cannot be written


def test_unwritable_places_refused_when_opened_for_writing(tmp_path):
    with pytest.raises(CramfastError, match="cannot write the results database"):
        store.Store("/proc/cramfast-results.db")                 # no file can be made in /proc
    with pytest.raises(CramfastError, match="cannot create its folder"):
        store.Store("/proc/cramfast-none/results.db")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CramfastError, match="cannot create its folder"):
        store.Store(blocker / "results.db")


def test_a_failed_store_is_one_line_and_keeps_the_rows_before(tmp_path):
    db = tmp_path / "refuse.db"
    with store.Store(db) as s:
        s.add(store.result_row(fake_result(), key=key()))
        s.conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON runs WHEN NEW.sample = 1 "
                       "BEGIN SELECT RAISE(ABORT, 'disk refused the row'); END")
        with pytest.raises(CramfastError, match=f"{db}: cannot store a finished job "
                                                r"\(disk refused the row\)"):
            s.add(store.result_row(fake_result(), key=key(sample=1)))
        assert not s.conn.in_transaction
        assert s.add(store.result_row(fake_result(), key=key(sample=2)))   # still usable
    assert sorted(r["sample"] for r in store.read_runs([db])) == [0, 2]
