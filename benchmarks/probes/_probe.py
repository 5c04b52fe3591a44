"""What the probes share: the options that name the model and the texts, the two ways they
sample passages, and running as a command line (bad input: one line on stderr, exit 2)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # benchmarks/, for _common
from cramfast import sources
from cramfast.cli import tools
from cramfast.cli.tools import csv_ints  # noqa: F401  (the probes' list flags)
from cramfast.errors import CramfastError
from cramfast.settings import RESULT_SETTINGS

import _common

# How a probe draws its passages: the end-to-end benchmark's (spread over the books) or the
# optimizer study's (one text of all the books, as `python -m cramfast.study` samples).
FILE_HELP = {
    "bench": "the books the end-to-end benchmark samples its passages from (a folder, "
             "default %(default)s), or one text file",
    "study": "a text file, or a folder of .txt files joined into one text, to sample passages "
             "from as the optimizer study does (default %(default)s)",
}


def parser(doc: str, sampling: str) -> argparse.ArgumentParser:
    """The probe's parser: its docstring as help, --model and --file."""
    p = tools.Parser(prog=Path(sys.argv[0]).name, description=doc,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="a model name or folder (default: the embedded SmolLM2-135M)")
    p.add_argument("--file", default=str(_common.BOOKS), help=FILE_HELP[sampling])
    return p


def bench_passages(tokenizer, path, length: int, k: int, seed: int = 0) -> list[list[int]]:
    """The end-to-end benchmark's passages (_common.bench_texts: k passages of ``length``
    tokens, seeded, spread evenly over the books) of the books' folder, or of one file, where
    they are what bench_texts draws from a folder holding that one book."""
    path = Path(path)
    if path.is_file():
        return sources.sample_passages(tokenizer, sources.read_text_file(path), length, k, seed)
    if not path.is_dir():
        raise CramfastError(f"{path}: no such file or directory")
    if path.resolve() != _common.BOOKS.resolve():
        raise CramfastError(f"{path}: give one text file, or the benchmark's books "
                            f"({_common.BOOKS}; CRAMFAST_BENCH_BOOKS names another folder)")
    if not _common.book_files():
        raise CramfastError(f"{path}: no .txt books there")
    return _common.bench_texts(tokenizer, length, k, seed)


def study_passages(tokenizer, path, length: int, k: int, seed: int = 0) -> list[list[int]]:
    """The optimizer study's passages: ``k`` of ``length`` tokens, seeded, from the text of
    every file at ``path`` joined."""
    text = sources.joined_text(path)
    return sources.sample_passages(tokenizer, text, length, k, seed)


def seconds_per_step(lm, texts, evaluations: int, drop_stopped=None) -> float:
    """Stepping seconds per evaluation of ``texts`` in one batch (Hooks.on_timing, the
    stepping alone): preset `paper` at lr 1e-9 so that nothing stops, every text evaluated
    ``evaluations`` times in one stretch between host syncs; ``drop_stopped`` as Hooks'."""
    from cramfast.engine import Hooks, compress
    timings = []
    compress(texts, model=lm, preset="paper", lr=1e-9, max_steps=evaluations - 1,
             patience=1000, max_slots=len(texts), sync_every=evaluations,
             hooks=Hooks(on_timing=timings.append, drop_stopped=drop_stopped))
    stepping = [t for t in timings if t.phase == "steps"]
    return sum(t.seconds for t in stepping) / sum(t.steps for t in stepping)


def run(main: Callable[[argparse.Namespace], None], args: argparse.Namespace) -> None:
    """Run a probe's ``main(args)`` as a command line and exit with its status."""
    def command() -> int:
        sources.text_files(args.file)       # a path that holds no text fails before the model loads
        main(args)
        return 0
    # a bad setting is named as the probes take settings: key=value
    flags = {name: f"{name}=VALUE" for name in RESULT_SETTINGS}
    sys.exit(tools.run(Path(sys.argv[0]).name, command, flags=flags))
