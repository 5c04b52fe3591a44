"""Results on disk: per text, ``NAME.safetensors`` (the mem vectors) beside ``NAME.json``
(model, tokenizer, token ids, settings, metrics). ``load_results`` reads a folder or a file."""
from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_file, save_file

from cramfast.errors import CramfastError
from cramfast.metrics import CompressionResult

FORMAT_VERSION = 1


def save(results, out_dir, prefix: str = "cram", tokenizer_path: str | None = None) -> list[Path]:
    """Write each result as PREFIX-NNNN.{safetensors,json}; returns the JSON paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(results, CompressionResult):
        results = [results]
    paths = []
    for i, res in enumerate(results):
        stem = out / f"{prefix}-{i:04d}"
        _atomic(stem.with_suffix(".safetensors"),
                lambda p: save_file({"mem": res.mem.detach().float().contiguous().cpu()}, str(p)))
        meta = dict(res.metadata(), format_version=FORMAT_VERSION, tokenizer=tokenizer_path,
                    mem_file=stem.with_suffix(".safetensors").name)
        _atomic(stem.with_suffix(".json"), lambda p: p.write_text(json.dumps(meta, indent=1)))
        paths.append(stem.with_suffix(".json"))
    return paths


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def load_results(path) -> list[CompressionResult]:
    """Results from a folder written by ``save``, or from one of its .json/.safetensors files."""
    path = Path(path)
    if path.is_dir():
        metas = sorted(path.glob("*.json"))
        if not metas:
            raise CramfastError(f"{path} holds no cramfast results (*.json)")
    elif path.suffix in (".json", ".safetensors") and path.exists():
        metas = [path.with_suffix(".json")]
    else:
        raise CramfastError(f"{path}: not a cramfast results folder, .json or .safetensors file")
    return [_load_one(p) for p in metas]


def _load_one(meta_path: Path) -> CompressionResult:
    try:
        meta = json.loads(meta_path.read_text())
        mem = load_file(str(meta_path.with_name(meta["mem_file"])))["mem"]
    except (OSError, ValueError, KeyError) as exc:
        raise CramfastError(f"{meta_path}: not a readable cramfast result ({exc})") from None
    known = {k: v for k, v in meta.items() if k in CompressionResult.__dataclass_fields__}
    return CompressionResult(mem=mem, **known)
