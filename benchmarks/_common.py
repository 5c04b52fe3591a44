"""Helpers shared by the benchmark files: quick mode, the texts, the device and the model."""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

from cramfast import sources

HERE = Path(__file__).resolve().parent
# The books of ../shared/data (relative to the repository root); CRAMFAST_BENCH_BOOKS overrides.
BOOKS = Path(os.environ.get("CRAMFAST_BENCH_BOOKS",
                            HERE.parent.parent / "shared" / "data" / "books"))


def quick() -> bool:
    """CRAMFAST_BENCH_QUICK=1 (make bench-quick): CI-sized runs, the whole suite in < 3 min."""
    return os.environ.get("CRAMFAST_BENCH_QUICK", "") not in ("", "0")


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(dev=None):
    if (dev or device()).type == "cuda":
        torch.cuda.synchronize()


def machine() -> str:
    if device().type == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def book_files() -> list[Path]:
    if not BOOKS.is_dir():
        return []
    return [p for p in sorted(BOOKS.glob("*.txt")) if not p.name.upper().startswith("LICENSE")]


def texts_source() -> str:
    files = book_files()
    return f"books:{','.join(p.name for p in files)}" if files else "fallback:DEFAULT_PASSAGE"


def bench_texts(tokenizer, length: int, k: int, seed: int = 0) -> list[list[int]]:
    """``k`` token lists of exactly ``length`` tokens: seeded passages of the books (spread
    evenly over them, sources.sample_passages), or, where the books are absent, the bundled
    DEFAULT_PASSAGE with its words rotated (text i starts at word i), repeated to length."""
    files = book_files()
    if files:
        out = []
        for i, path in enumerate(files):
            share = k // len(files) + (i < k % len(files))
            if share:
                out += sources.sample_passages(tokenizer, sources.read_text_file(path), length,
                                               share, seed)
        return out
    words = sources.DEFAULT_PASSAGE.split()
    out = []
    for i in range(k):
        rotated = " ".join(words[i % len(words):] + words[:i % len(words)])
        ids = tokenizer(" ".join([rotated] * (length // 8 + 2)))["input_ids"]
        out.append(ids[:length])
    return out


class Timer:
    def __enter__(self):
        sync()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        sync()
        self.seconds = time.perf_counter() - self.start
