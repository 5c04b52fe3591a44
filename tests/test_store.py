"""The sweep's SQLite store: schema, one row per key, WAL, mem blobs, shards merged."""
import sqlite3

import pytest
import torch

from cramfast import store
from cramfast.errors import CramfastError
from cramfast.metrics import make_result


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
