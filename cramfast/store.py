"""The results store of ``cramfast.sweep``: one SQLite file, table ``runs``, one row per finished job.

A job is identified by KEY = (model, source, sample, length, n_mem, seed, settings_hash), a
UNIQUE constraint: a job is stored once whatever happens. Each row is written in its own
transaction (WAL journal, synchronous=FULL), so a process killed at any moment (kill -9 included)
leaves every committed row intact and none half-written; rerunning the sweep skips the jobs whose
key is present. Columns besides the key: every CompressionResult metric, steps, seconds, the token
ids and greedy-decoded ids (JSON), the text, the mem vectors (safetensors bytes), the model's
d / V / MaxCap / context, the full settings (JSON), the cramfast version, when and where it ran.

Sharded runs (torchrun) write ``NAME.rank{r}.db`` beside ``NAME.db``; ``family(path)`` lists a DB
and its shards, ``read_runs(paths)`` reads and merges them (first copy of a key wins) and tags
each row with ``ref`` = "FILE#id" so every reported number can be traced to its row.
"""
from __future__ import annotations

import json
import socket
import sqlite3
import time
from pathlib import Path

import torch
from safetensors.torch import load as st_load, save as st_save

from cramfast.errors import CramfastError

SCHEMA_VERSION = 1
KEY = ("model", "source", "sample", "length", "n_mem", "seed", "settings_hash")

_COLUMNS = [  # name, SQL type; the key columns first
    ("model", "TEXT NOT NULL"), ("source", "TEXT NOT NULL"), ("sample", "INTEGER NOT NULL"),
    ("length", "INTEGER NOT NULL"), ("n_mem", "INTEGER NOT NULL"), ("seed", "INTEGER NOT NULL"),
    ("settings_hash", "TEXT NOT NULL"),
    ("origin", "TEXT"),                 # grid | search | warm: which sweep mode asked for it
    ("model_label", "TEXT"), ("source_label", "TEXT"),
    ("hidden_size", "INTEGER"), ("vocab_size", "INTEGER"), ("max_cap", "INTEGER"),
    ("context", "INTEGER"),
    ("n_tokens", "INTEGER"), ("token_ids", "TEXT"), ("decoded_ids", "TEXT"), ("text", "TEXT"),
    ("steps", "INTEGER"), ("best_step", "INTEGER"), ("stop_reason", "TEXT"),
    ("accuracy", "REAL"), ("accuracy_without_mem", "REAL"), ("exact", "INTEGER"),
    ("ce_without_mem", "REAL"), ("ce_with_mem", "REAL"), ("info_gain_nats", "REAL"),
    ("info_gain_bits", "REAL"), ("token_gain", "REAL"), ("seconds", "REAL"), ("error", "TEXT"),
    ("mem", "BLOB"), ("mem_shape", "TEXT"),
    ("init_from", "TEXT"),              # warm start: ref of the row whose mem was the init
    ("settings", "TEXT"), ("cramfast_version", "TEXT"), ("created_at", "REAL"),
    ("host", "TEXT"), ("rank", "INTEGER"),
]
COLUMNS = [name for name, _ in _COLUMNS]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY, "
    + ", ".join(f"{n} {t}" for n, t in _COLUMNS)
    + f", UNIQUE ({', '.join(KEY)}));"
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);"
)


class Store:
    """One SQLite results file, opened for reading and appending."""

    def __init__(self, path, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise CramfastError(f"{self.path}: no such results database")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self._init_schema(create)
        except sqlite3.DatabaseError as exc:
            raise CramfastError(f"{self.path}: not a cramfast results database ({exc})") from None

    def _init_schema(self, create: bool):
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "runs" not in tables:
            if not create:
                raise CramfastError(f"{self.path}: no table 'runs': not a cramfast results database")
            self.conn.executescript("BEGIN;" + _SCHEMA +
                                    f"INSERT OR IGNORE INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}');"
                                    "COMMIT;")
        version = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if version is None or int(version[0]) > SCHEMA_VERSION:
            raise CramfastError(f"{self.path}: results schema {version and version[0]} is newer than "
                                f"this cramfast reads ({SCHEMA_VERSION}); upgrade cramfast")

    def close(self):
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def add(self, row: dict) -> bool:
        """Insert one finished job in its own transaction; False if its key is already stored."""
        names = [c for c in COLUMNS if c in row]
        missing = [k for k in KEY if k not in row]
        if missing:
            raise ValueError(f"row lacks key column(s) {missing}")
        sql = f"INSERT OR IGNORE INTO runs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            cur = self.conn.execute(sql, [row[c] for c in names])
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return cur.rowcount == 1

    def keys(self) -> set[tuple]:
        return {tuple(r) for r in self.conn.execute(f"SELECT {', '.join(KEY)} FROM runs")}

    def rows(self, with_mem: bool = False, where: str = "", params=()) -> list[dict]:
        """All rows (optionally filtered by an SQL ``where`` clause) as dicts, ``ref`` added."""
        cols = ["id"] + [c for c in COLUMNS if with_mem or c != "mem"]
        cur = self.conn.execute(f"SELECT {', '.join(cols)} FROM runs {'WHERE ' + where if where else ''} "
                                "ORDER BY id", params)
        out = []
        for values in cur:
            row = dict(zip(cols, values))
            row["ref"] = f"{self.path.name}#{row['id']}"
            out.append(row)
        return out

    def key_values(self, *columns) -> dict[tuple, tuple]:
        """{key: (values of ``columns``)} for every stored job; column "ref" gives "FILE#id"."""
        cols = [f"'{self.path.name}#' || id" if c == "ref" else c for c in KEY + columns]
        return {tuple(r[:len(KEY)]): tuple(r[len(KEY):])
                for r in self.conn.execute(f"SELECT {', '.join(cols)} FROM runs")}

    def count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]


# ---------------------------------------------------------------------------------------------
# rows from results, mem blobs


def mem_to_blob(mem: torch.Tensor) -> bytes:
    return st_save({"mem": mem.detach().to(torch.float32).contiguous().cpu()})


def blob_to_mem(blob: bytes) -> torch.Tensor:
    return st_load(bytes(blob))["mem"]


def result_row(result, *, key: dict, origin: str = "grid", model_info: dict | None = None,
               source_label: str | None = None, init_from: str | None = None,
               settings: dict | None = None, rank: int = 0) -> dict:
    """A ``runs`` row from a CompressionResult and its job identity ``key`` (the KEY columns)."""
    from cramfast import __version__
    info = model_info or {}
    return dict(
        key, origin=origin, model_label=info.get("label"), source_label=source_label,
        hidden_size=info.get("hidden_size"), vocab_size=info.get("vocab_size"),
        max_cap=info.get("max_cap"), context=info.get("context"),
        n_tokens=len(result.token_ids), token_ids=json.dumps(result.token_ids),
        decoded_ids=json.dumps(result.decoded_ids), text=result.text,
        steps=result.steps, best_step=result.best_step, stop_reason=result.stop_reason,
        accuracy=result.accuracy, accuracy_without_mem=result.accuracy_without_mem,
        exact=int(bool(result.exact)), ce_without_mem=result.ce_without_mem,
        ce_with_mem=result.ce_with_mem, info_gain_nats=result.info_gain_nats,
        info_gain_bits=result.info_gain_bits, token_gain=result.token_gain,
        seconds=result.seconds, error=result.error, mem=mem_to_blob(result.mem),
        mem_shape=json.dumps(list(result.mem.shape)), init_from=init_from,
        settings=json.dumps(settings if settings is not None else result.settings, sort_keys=True),
        cramfast_version=__version__, created_at=time.time(), host=socket.gethostname(), rank=rank)


# ---------------------------------------------------------------------------------------------
# shards and merged reading


def shard_path(path, rank: int) -> Path:
    """``runs.db`` -> ``runs.rank3.db``: the file rank 3 of a torchrun sweep writes."""
    path = Path(path)
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def family(path) -> list[Path]:
    """The DB at ``path`` (if it exists) and its rank shards (sorted by rank)."""
    path = Path(path)
    shards = []
    for p in path.parent.glob(f"{path.stem}.rank*{path.suffix}"):
        tail = p.name[len(path.stem) + 5:len(p.name) - len(path.suffix)]
        if tail.isdigit():
            shards.append((int(tail), p))
    return ([path] if path.is_file() else []) + [p for _, p in sorted(shards)]


def read_runs(paths, with_mem: bool = False, expand: bool = True) -> list[dict]:
    """Rows of several DBs (each with its shards when ``expand``), one per key (first wins)."""
    files: list[Path] = []
    for p in paths:
        found = family(p) if expand else [Path(p)]
        if not found:
            raise CramfastError(f"{p}: no such results database (nor shards {Path(p).stem}.rank*)")
        files += [f for f in found if f not in files]
    seen, rows = set(), []
    for f in files:
        with Store(f, create=False) as store:
            for row in store.rows(with_mem=with_mem):
                key = tuple(row[k] for k in KEY)
                if key not in seen:
                    seen.add(key)
                    rows.append(row)
    return rows


def family_key_values(path, *columns) -> dict[tuple, tuple]:
    """``Store.key_values`` over the DB at ``path`` and its shards (first copy of a key wins)."""
    out: dict[tuple, tuple] = {}
    for f in family(path):
        try:
            store = Store(f, create=False)
        except CramfastError:
            continue  # a shard another rank is creating right now: nothing in it yet
        with store:
            for key, values in store.key_values(*columns).items():
                out.setdefault(key, values)
    return out
