"""Checkpoints of texts in flight, so that a run killed at any moment loses at most the steps
since its last checkpoint: a rerun on the same inputs resumes each text where it was saved and
ends with the result the uninterrupted run ends with.

A text's checkpoint is one record (a dict of tensors, numbers and strings, stored as the bytes
of ``torch.save``) holding everything its optimization carries: for every attempt running or
queued, its slot's state (mem, AdamW/LAMB moments, step counters, best mem and best step, stall
counters, restarts, per-slot hyperparameters), its restart draws and settings; and the text's
own bookkeeping (attempts started, decode retries, finished attempts' outcomes, steps and
seconds so far). A record is found again by the text's fingerprint: a hash of everything its
result depends on (model, dtype, token ids, n_mem, seed, resolved settings, start mem), so a
changed input never resumes from a stale record.

Where records live is the caller's choice: any object with ``get``, ``put`` and ``delete`` (the
sweep keeps them in its SQLite store); a path means a directory of one file per text.

    compress(texts, checkpoint="ckpt/")            # resumes what ckpt/ holds, saves every 60 s
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Protocol

import torch

from cramfast.errors import CramfastError

FORMAT = 1          # a record's layout; a record of another format is not resumed


class CheckpointStore(Protocol):
    """Where checkpoint records are kept, by fingerprint."""

    def get(self, fingerprints: list[str]) -> dict[str, bytes]: ...

    def put(self, records: dict[str, bytes]) -> None: ...

    def delete(self, fingerprints: list[str]) -> None: ...


class DirectoryCheckpoints:
    """One file per text under ``path``, each written whole and then renamed into place, so a
    kill mid-write leaves the previous record (and a partial ``<fingerprint>.*.tmp``, removed
    with the text's record when it finishes)."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=self.path).close()
        except OSError as exc:
            raise CramfastError(f"{self.path}: cannot keep checkpoints there "
                                f"({exc.strerror or exc})") from None

    def _file(self, fingerprint: str) -> Path:
        return self.path / f"{fingerprint}.pt"

    def get(self, fingerprints):
        found = {}
        for fp in fingerprints:
            with contextlib.suppress(FileNotFoundError):
                found[fp] = self._file(fp).read_bytes()
        return found

    def put(self, records):
        for fp, blob in records.items():
            fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f"{fp}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as out:
                out.write(blob)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self._file(fp))

    def delete(self, fingerprints):
        for fp in fingerprints:
            self._file(fp).unlink(missing_ok=True)
            for partial in self.path.glob(f"{fp}.*.tmp"):   # a write a kill cut short
                partial.unlink(missing_ok=True)


def as_store(checkpoint) -> CheckpointStore | None:
    """None, a CheckpointStore, or a path (a directory of records)."""
    if checkpoint is None or all(hasattr(checkpoint, k) for k in ("get", "put", "delete")):
        return checkpoint
    return DirectoryCheckpoints(checkpoint)


def fingerprint(model: str, dtype: str, token_ids: list[int], n_mem: int, seed: int,
                settings: dict, init_mem: torch.Tensor | None) -> str:
    """A text's identity for resuming: what its optimization depends on."""
    start = (None if init_mem is None else
             hashlib.sha256(init_mem.to(torch.float64).numpy().tobytes()).hexdigest())
    key = json.dumps(dict(format=FORMAT, model=model, dtype=dtype, ids=token_ids, n_mem=n_mem,
                          seed=seed, settings=settings, start=start), sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def pack(record: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(record, buffer)
    return buffer.getvalue()


def unpack(blob: bytes) -> dict | None:
    """A record, or None if it is of another format (or not a record at all)."""
    try:
        record = torch.load(io.BytesIO(blob), weights_only=True)
    except Exception:                   # a truncated or foreign file: start the text afresh
        return None
    return record if isinstance(record, dict) and record.get("format") == FORMAT else None


def progress(record: dict | None) -> dict | None:
    """How far a text in flight has got, from its record: m, its length, the updates run, its
    best so far (the positions right by its margin, over all its attempts, as a fraction of the
    predicted ones: a count that only grows), a floor under its result's accuracy (that best;
    without a margin, one position less: the result's accuracy is the argmax count of the best
    mem's final evaluation, in another batch, which may round a near tie apart), the updates
    its budget leaves at most and, at its pace so far, the seconds they take, and the updates
    left were none of its attempts to beat its best again (each stops at its patience after
    its best, or at its budget). None for an unreadable record or one whose attempts are all
    queued."""
    slots = [a["slot_state"] for a in (record or {}).get("attempts", [])
             if a.get("slot_state") is not None]
    if not slots:
        return None
    n_pred = int(slots[0]["n_pred"])
    steps = max(int(s["steps"]) for s in slots)
    left = max(int(s["max_steps"]) - int(s["steps"]) for s in slots)
    stuck = max(max(min(int(s["max_steps"]), int(s["best_step"]) + int(s["patience"]))
                    - int(s["steps"]), 0) for s in slots)
    # the text's wall seconds so far over its steps: the pace of the batch it ran in
    pace = record["seconds"] / steps if steps and record.get("seconds") else None
    settings = record["attempts"][0].get("settings") or {}
    best = max(max(int(s["best_correct"]) for s in slots), 0)    # -1: not evaluated yet
    rounding = 0 if (settings.get("margin") or 0) > 0 else 1
    return dict(n_mem=int(slots[0]["mem"].shape[0]), length=n_pred + 1, steps=steps,
                best=best / max(n_pred, 1), floor=max(best - rounding, 0) / max(n_pred, 1),
                left=left, seconds_left=None if pace is None else left * pace,
                left_if_stuck=stuck, settings=settings)


class Checkpointer:
    """The engine's side: which texts resume from which record, when the next save is due,
    and the records written and deleted as texts go on and finish."""

    def __init__(self, store: CheckpointStore, fingerprints: dict[int, str], every_s: float,
                 every_steps: int):
        self.store, self.fingerprints = store, fingerprints
        self.every_s, self.every_steps = every_s, every_steps
        self.last_time, self.last_evaluation = time.monotonic(), 0
        self.saves, self.seconds = 0, 0.0   # saves made and the time they took

    def resumed(self, indices: list[int] | None = None) -> dict[int, dict]:
        """Text index -> its record, for the texts (default: all) the store holds a record of."""
        # a snapshot of the keys: Stream.submit may add one from another thread meanwhile
        by_fp = {self.fingerprints[i]: i for i in (list(self.fingerprints) if indices is None
                                                   else indices)}
        found = self.store.get(list(by_fp))
        records = {by_fp[fp]: unpack(blob) for fp, blob in found.items()}
        return {i: r for i, r in records.items() if r is not None}

    def due(self, evaluations: int) -> bool:
        return (time.monotonic() - self.last_time >= self.every_s
                or 0 < self.every_steps <= evaluations - self.last_evaluation)

    def save(self, records: dict[int, dict], evaluations: int):
        """The save that was due: ``records`` (text index -> record) written, the next one
        due ``every_s`` / ``every_steps`` from now."""
        started = time.monotonic()
        self.put(records)
        self.last_time, self.last_evaluation = time.monotonic(), evaluations
        self.saves += 1
        self.seconds += self.last_time - started

    def put(self, records: dict[int, dict]):
        """``records`` (text index -> record) written, whenever the next save is due."""
        if records:
            self.store.put({self.fingerprints[i]: pack(dict(r, format=FORMAT))
                            for i, r in records.items()})

    def finished(self, indices: list[int]):
        """These texts' results were taken by the caller: their records are not needed."""
        self.store.delete([self.fingerprints[i] for i in indices])
