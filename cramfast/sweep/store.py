"""The results store of ``cramfast.sweep``: one SQLite file, table ``runs``, one row per finished
job.

A job is identified by KEY = (model, source, sample, length, n_mem, seed, settings_hash) (a
``JobKey``), a UNIQUE constraint: a job is stored once whatever happens. Each row is written in its
own transaction (WAL journal, synchronous=FULL), so a process killed at any moment (kill -9
included) leaves every committed row intact and none half-written; rerunning the sweep skips the
jobs whose key is present.

The columns besides the key are derived, not listed: every field of CompressionResult (its type
hint gives the SQL type: int and bool INTEGER, float REAL, str TEXT, list and dict JSON TEXT, the
mem tensor safetensors bytes), ``n_tokens`` and ``mem_shape``, and what the sweep records beside
the result (PROVENANCE: origin, labels, the model's d / V / MaxCap / context, init_from, the
sweep's record in ``sweep``, the cramfast version, when and where it ran). A database made by an
older cramfast is brought up to date when opened: every missing column is added (NULL in its
rows); see ``Store._migrate`` for what else a version changed.

Sharded runs (torchrun) write ``NAME.rank{r}.db`` beside ``NAME.db``; ``family(path)`` lists a DB
and its shards, ``read_runs(paths)`` reads and merges them (first copy of a key wins) and tags
each row with ``ref`` = "FILE#id" so every reported number can be traced to its row.
"""
from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import time
import typing
from dataclasses import asdict, astuple, dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from cramfast.errors import CramfastError
from cramfast.metrics import CompressionResult
from cramfast.version import __version__

SCHEMA_VERSION = 2


@dataclass(frozen=True, order=True)
class JobKey:
    """One job's identity, the table's UNIQUE key, in column order."""
    model: str              # a model folder's absolute path, else the name as given
    source: str             # the source's canonical name (what its texts depend on)
    sample: int
    length: int
    n_mem: int
    seed: int
    settings_hash: str      # the settings that change results, hashed

    @property
    def key(self) -> tuple:
        return astuple(self)

    def as_dict(self) -> dict:
        return asdict(self)


KEY = tuple(f.name for f in fields(JobKey))

# What a sweep records beside the result (``result_row`` fills it).
PROVENANCE = dict(
    origin=str,             # grid | search | warm: which sweep mode asked for the job
    model_label=str, source_label=str,
    hidden_size=int, vocab_size=int, max_cap=int, context=int,
    init_from=str,          # warm start: ref of the row whose mem was the init
    sweep=dict,             # the sweep's record: preset, optim, identity, chunking, search, ...
    cramfast_version=str, created_at=float, host=str, rank=int)
# Read from the result, stored for queries that should not decode JSON or blobs.
DERIVED = dict(n_tokens=int, mem_shape=list)

_SQL_TYPES = {int: "INTEGER", float: "REAL", bool: "INTEGER", str: "TEXT", list: "TEXT",
              dict: "TEXT", torch.Tensor: "BLOB"}


def _column_kind(hint) -> type:
    """The Python type a column holds: ``hint`` without Optional and without its parameters."""
    args = typing.get_args(hint)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else hint
    kind = typing.get_origin(hint) or hint
    if kind not in _SQL_TYPES:
        raise TypeError(f"cramfast.store: no SQL column type for {hint!r} (known: "
                        f"{', '.join(t.__name__ for t in _SQL_TYPES)})")
    return kind


def _result_columns() -> dict[str, type]:
    """Every CompressionResult field but those the key holds (model id, n_mem, seed)."""
    hints = typing.get_type_hints(CompressionResult)
    columns = {f.name: _column_kind(hints[f.name]) for f in fields(CompressionResult)
               if f.name not in KEY}
    clash = set(columns) & (set(PROVENANCE) | set(DERIVED))
    if clash:
        raise TypeError(f"cramfast.store: result field(s) {sorted(clash)} clash with the sweep's "
                        "columns")
    return columns


_KEY_KINDS = {name: _column_kind(hint) for name, hint in typing.get_type_hints(JobKey).items()}
RESULT_COLUMNS = _result_columns()
COLUMN_KINDS = dict(_KEY_KINDS, **PROVENANCE, **RESULT_COLUMNS, **DERIVED)
COLUMNS = list(COLUMN_KINDS)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY, "
    + ", ".join(f"{n} {_SQL_TYPES[k]}{' NOT NULL' if n in KEY else ''}"
                for n, k in COLUMN_KINDS.items())
    + f", UNIQUE ({', '.join(KEY)}));"
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);"
)
# texts in flight, by fingerprint (cramfast.engine.checkpoint): a killed sweep's rerun resumes them
_CHECKPOINTS = ("CREATE TABLE IF NOT EXISTS checkpoints (fingerprint TEXT PRIMARY KEY, "
                "record BLOB NOT NULL, saved_at REAL NOT NULL)")
# which job each fingerprint is (a checkpoint's record does not say), for reading the texts in
# flight by job: the sweep labels a text when it hands it to the engine
_CHECKPOINT_JOBS = ("CREATE TABLE IF NOT EXISTS checkpoint_jobs (fingerprint TEXT PRIMARY KEY, "
                    + ", ".join(f"{n} {_SQL_TYPES[_KEY_KINDS[n]]} NOT NULL" for n in KEY) + ")")
# sqlite errors that mean "this process cannot write here", not "this is no results database"
_CANNOT_WRITE = ("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_IOERR", "SQLITE_FULL",
                 "SQLITE_AUTH", "SQLITE_BUSY", "SQLITE_LOCKED")


class Store:
    """One SQLite results file, opened for reading and appending. With ``create`` (writing), the
    file and its folder are made if missing and a committed write is tried at once, so that a
    database this process cannot write is refused before any work."""

    def __init__(self, path, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise CramfastError(f"{self.path}: no such results database")
        if create:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CramfastError(f"{self.path}: cannot create its folder {self.path.parent} "
                                    f"({exc.strerror or exc})") from None
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self._init_schema(create)
            if create:
                self.conn.execute(_CHECKPOINTS)
                self.conn.execute(_CHECKPOINT_JOBS)
                self._write_probe()
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorname", "").startswith(_CANNOT_WRITE):
                raise CramfastError(f"{self.path}: cannot write the results database "
                                    f"({exc})") from None
            raise CramfastError(f"{self.path}: not a cramfast results database ({exc})") from None

    def _init_schema(self, create: bool):
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE "
                                                  "type='table'")}
        if "runs" not in tables:
            if not create:
                raise CramfastError(f"{self.path}: no table 'runs': not a cramfast results "
                                    "database")
            self.conn.executescript("BEGIN;" + _SCHEMA +
                                    f"INSERT OR IGNORE INTO meta VALUES ('schema_version', "
                                    f"'{SCHEMA_VERSION}');"
                                    "COMMIT;")
        version = self._version()
        if version > SCHEMA_VERSION:
            raise CramfastError(f"{self.path}: results schema {version} is newer than this "
                                f"cramfast reads ({SCHEMA_VERSION}); upgrade cramfast")
        if version < SCHEMA_VERSION or self._missing_columns():
            self._migrate()

    def _version(self) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            raise CramfastError(f"{self.path}: no schema version: not a cramfast results database")
        return int(row[0])

    def _missing_columns(self) -> list[str]:
        have = {r[1] for r in self.conn.execute("PRAGMA table_info(runs)")}
        return [name for name in COLUMNS if name not in have]

    def _migrate(self):
        """Bring an older database up to SCHEMA_VERSION in one transaction: every column it lacks
        is added (NULL in the rows it holds). Version 1 kept the sweep's record in ``settings``:
        it moves to ``sweep``, and ``settings`` gets the record's optimizer settings (what the
        result's own settings hold). Another process may have migrated it meanwhile: both are
        decided again under the write lock."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            version = self._version()
            for name in self._missing_columns():
                self.conn.execute(f"ALTER TABLE runs ADD COLUMN {name} "
                                  f"{_SQL_TYPES[COLUMN_KINDS[name]]}")
            if version < 2:
                self._move_sweep_records()
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
                              (str(max(version, SCHEMA_VERSION)),))
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise CramfastError(f"{self.path}: cannot upgrade the results database to schema "
                                f"{SCHEMA_VERSION} ({exc})") from None
        except BaseException:
            self._rollback()
            raise

    def _move_sweep_records(self):
        moved = []
        for row_id, text in self.conn.execute("SELECT id, settings FROM runs").fetchall():
            record = json.loads(text) if text else None
            if isinstance(record, dict) and ("optim" in record or "identity" in record):
                optim = record.get("optim")
                moved.append((text, None if optim is None else json.dumps(optim, sort_keys=True),
                              row_id))
        self.conn.executemany("UPDATE runs SET sweep = ?, settings = ? WHERE id = ?", moved)

    def _write_probe(self):
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('opened_for_writing_at', ?)",
                              (repr(time.time()),))
            self.conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _rollback(self):
        if self.conn.in_transaction:
            # the transaction may be gone with the failure that got us here
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")

    def close(self):
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def add(self, row: dict) -> bool:
        """Insert one finished job in its own transaction; False if its key is already stored.
        An sqlite failure is one line naming this database; the rows committed before it stay."""
        names = [c for c in COLUMNS if c in row]
        missing = [k for k in KEY if k not in row]
        if missing:
            raise ValueError(f"row lacks key column(s) {missing}")
        sql = (f"INSERT OR IGNORE INTO runs ({', '.join(names)}) "
               f"VALUES ({', '.join('?' * len(names))})")
        cur = self._transaction("store a finished job",
                                lambda: self.conn.execute(sql, [row[c] for c in names]))
        return cur.rowcount == 1

    def _transaction(self, what: str, write):
        """``write()`` in one transaction; an sqlite failure is one line naming this database
        and what could not be done, the rows committed before it staying."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            result = write()
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise CramfastError(f"{self.path}: cannot {what} ({exc}); the rows stored before "
                                "it stay") from None
        except BaseException:
            self._rollback()
            raise
        return result

    def keys(self) -> set[tuple]:
        return {tuple(r) for r in self.conn.execute(f"SELECT {', '.join(KEY)} FROM runs")}

    def rows(self, with_mem: bool = False, where: str = "", params=()) -> list[dict]:
        """All rows (optionally filtered by an SQL ``where`` clause) as dicts, ``ref`` added."""
        cols = ["id"] + [c for c in COLUMNS if with_mem or c != "mem"]
        clause = f"WHERE {where} " if where else ""
        cur = self.conn.execute(f"SELECT {', '.join(cols)} FROM runs {clause}ORDER BY id", params)
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

    # a CheckpointStore (cramfast.engine.checkpoint): the sweep's texts in flight
    def get(self, fingerprints: list[str]) -> dict[str, bytes]:
        found = {}
        for fp in fingerprints:
            row = self.conn.execute("SELECT record FROM checkpoints WHERE fingerprint = ?",
                                    (fp,)).fetchone()
            if row is not None:
                found[fp] = row[0]
        return found

    def put(self, records: dict[str, bytes]) -> None:
        """Every record in one transaction: a kill keeps all of the last save or all of this."""
        self._checkpoint_transaction(
            "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?)",
            [(fp, blob, time.time()) for fp, blob in records.items()])

    def delete(self, fingerprints: list[str]) -> None:
        """The records and their labels, in one transaction."""
        keys = [(fp,) for fp in fingerprints]
        if keys:
            self._transaction("delete checkpoints", lambda: [
                self.conn.executemany(f"DELETE FROM {table} WHERE fingerprint = ?", keys)
                for table in ("checkpoints", "checkpoint_jobs")])

    def label_checkpoints(self, jobs: dict[str, JobKey]) -> None:
        """Which job each fingerprint's text is (kept until its checkpoint is deleted)."""
        self._checkpoint_transaction(
            f"INSERT OR REPLACE INTO checkpoint_jobs VALUES (?, {', '.join('?' * len(KEY))})",
            [(fp, *job.key) for fp, job in jobs.items()])

    def checkpoints(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0]

    def checkpoint_records(self) -> list[tuple[bytes, float, JobKey | None]]:
        """Every text in flight: (its record, when it was saved, as time.time(), its job where
        the sweep labelled it, else None); none in a store made before checkpoints were kept."""
        try:
            tables = {r[0] for r in self.conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")}
            if "checkpoints" not in tables:
                return []
            if "checkpoint_jobs" not in tables:     # a store made before the labels
                return [(blob, saved_at, None) for blob, saved_at in self.conn.execute(
                    "SELECT record, saved_at FROM checkpoints")]
            found = self.conn.execute(
                f"SELECT record, saved_at, {', '.join('j.' + n for n in KEY)} FROM checkpoints "
                "LEFT JOIN checkpoint_jobs AS j USING (fingerprint)").fetchall()
        except sqlite3.Error as exc:
            raise CramfastError(f"{self.path}: cannot read its checkpoints ({exc})") from None
        return [(blob, saved_at, None if key[0] is None else JobKey(*key))
                for blob, saved_at, *key in found]

    def _checkpoint_transaction(self, sql: str, rows: list[tuple]):
        if rows:
            self._transaction("save checkpoints", lambda: self.conn.executemany(sql, rows))


# ---------------------------------------------------------------------------------------------
# rows from results, mem blobs


def mem_to_blob(mem: torch.Tensor) -> bytes:
    return st_save({"mem": mem.detach().to(torch.float32).contiguous().cpu()})


def blob_to_mem(blob: bytes) -> torch.Tensor:
    return st_load(bytes(blob))["mem"]


def _sql_value(value, kind: type):
    if value is None:
        return None
    if kind in (list, dict):
        return json.dumps(value, sort_keys=True)
    if kind is bool:
        return int(bool(value))
    if kind is torch.Tensor:
        return mem_to_blob(value)
    return value


def result_row(result, *, key: dict, origin: str = "grid", model_info: dict | None = None,
               source_label: str | None = None, init_from: str | None = None,
               sweep: dict | None = None, rank: int = 0) -> dict:
    """A ``runs`` row from a CompressionResult, its job identity ``key`` (the KEY columns) and
    what the sweep records beside it (``sweep``: its record of the run's settings)."""
    info = model_info or {}
    provenance = dict(
        origin=origin, model_label=info.get("label"), source_label=source_label,
        hidden_size=info.get("hidden_size"), vocab_size=info.get("vocab_size"),
        max_cap=info.get("max_cap"), context=info.get("context"), init_from=init_from, sweep=sweep,
        cramfast_version=__version__, created_at=time.time(), host=socket.gethostname(), rank=rank)
    values = dict({name: getattr(result, name) for name in RESULT_COLUMNS}, **provenance,
                  n_tokens=len(result.token_ids), mem_shape=list(result.mem.shape))
    return dict(key, **{name: _sql_value(v, COLUMN_KINDS[name]) for name, v in values.items()})


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


def read_checkpoints(paths, expand: bool = True) -> list[tuple[bytes, float, JobKey | None]]:
    """Store.checkpoint_records of several DBs (each with its shards when ``expand``)."""
    files: list[Path] = []
    for p in paths:
        files += [f for f in (family(p) if expand else [Path(p)]) if f not in files]
    out = []
    for f in files:
        with Store(f, create=False) as s:
            out += s.checkpoint_records()
    return out


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
