"""Results on disk: per text, ``cram-NNNN.safetensors`` (the mem vectors) beside
``cram-NNNN.json`` (model, token ids, settings, metrics, dtype and device, the cramfast version).

One folder holds one run: writing into a folder that already holds anything is refused, so two
runs never mix. A ResultWriter writes each result as soon as it exists (``compress --out``
streams), every file atomically (written aside, then renamed), so a killed run leaves only whole
results. Reading a folder takes every readable result, names each broken one, and ignores
files that are not cramfast results.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_file, save_file

from cramfast.errors import CramfastError
from cramfast.metrics import CompressionResult
from cramfast.version import __version__

FORMAT_VERSION = 2
PREFIX = "cram"


class ResultWriter:
    """Writes results one by one into a new or empty folder."""

    def __init__(self, out_dir, prefix: str = PREFIX):
        self.out, self.prefix, self.written = Path(out_dir), prefix, []
        if self.out.exists() and not self.out.is_dir():
            raise CramfastError(f"{self.out}: exists and is not a folder")
        if self.out.is_dir() and any(self.out.iterdir()):
            raise CramfastError(f"{self.out}: folder is not empty (results of one run per folder, "
                                "so that runs never mix); choose a new folder")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / ".cramfast-write-probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise CramfastError(f"{self.out}: cannot write there ({exc.strerror})") from None

    def write(self, index: int, result: CompressionResult) -> Path:
        """``result`` as PREFIX-INDEX.{safetensors,json}; returns the JSON path."""
        stem = self.out / f"{self.prefix}-{index:04d}"
        mem_path = stem.with_suffix(".safetensors")
        _atomic(mem_path, lambda p: save_file(
            {"mem": result.mem.detach().float().contiguous().cpu()}, str(p)))
        meta = dict(result.metadata(), format_version=FORMAT_VERSION, cramfast_version=__version__,
                    tokenizer=result.model, mem_file=mem_path.name)
        _atomic(stem.with_suffix(".json"), lambda p: p.write_text(json.dumps(meta, indent=1)))
        self.written.append(stem.with_suffix(".json"))
        return stem.with_suffix(".json")


def save(results, out_dir, prefix: str = PREFIX) -> list[Path]:
    """Write results (one or a list, numbered in order) into a new or empty folder; returns the
    JSON paths."""
    if isinstance(results, CompressionResult):
        results = [results]
    writer = ResultWriter(out_dir, prefix)
    return [writer.write(i, res) for i, res in enumerate(results)]


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    # safetensors creates its file owner-only: give every file the mode the umask gives a new one
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def read_results(path) -> tuple[list[CompressionResult], list[str]]:
    """(results, problems) from a folder written by ``save``/``compress --out`` or one of its
    files: every readable result, in name order, and one line per broken one. Files that are not
    cramfast results (no ``mem_file`` entry, no sibling .safetensors) are ignored."""
    path = Path(path)
    if path.is_dir():
        metas = sorted(p for p in path.glob("*.json") if _is_result(p))
        if not metas:
            raise CramfastError(f"{path} holds no cramfast results (*.json with a mem file)")
    elif path.suffix in (".json", ".safetensors") and path.exists():
        metas = [path.with_suffix(".json")]
    else:
        raise CramfastError(f"{path}: not a cramfast results folder, .json or .safetensors file")
    results, problems = [], []
    for meta in metas:
        try:
            results.append(_load_one(meta))
        except CramfastError as exc:
            problems.append(str(exc))
    return results, problems


def load_results(path) -> list[CompressionResult]:
    """The results of a folder or file (see read_results); a broken one raises CramfastError."""
    results, problems = read_results(path)
    if problems:
        raise CramfastError(problems[0] + (f" (and {len(problems) - 1} more)"
                                           if len(problems) > 1 else ""))
    return results


def _is_result(meta_path: Path) -> bool:
    if meta_path.with_suffix(".safetensors").exists():
        return True
    try:
        return "mem_file" in json.loads(meta_path.read_text())
    except (OSError, ValueError, TypeError):
        return False


def _load_one(meta_path: Path) -> CompressionResult:
    try:
        meta = json.loads(meta_path.read_text())
        mem = load_file(str(meta_path.with_name(meta["mem_file"])))["mem"]
    except Exception as exc:  # OSError, bad JSON, a missing key, a cut safetensors file, ...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CramfastError(f"{meta_path}: not a readable cramfast result ({reason})") from None
    known = {k: v for k, v in meta.items() if k in CompressionResult.__dataclass_fields__}
    return CompressionResult(mem=mem, **known)
