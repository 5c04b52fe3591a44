"""``python -m cramfast compress|decode``: a thin face over the API.

compress streams: each text's row is printed, and its files written (--out), as soon as it
finishes; a progress bar (texts done, text-steps/s, ETA) goes to stderr; Ctrl-C keeps what is
done and says so. Bad input: one line on stderr naming the value and the flag, exit code 2.
"""
from __future__ import annotations

import contextlib
import csv
import json
import sys
import time

from tqdm import tqdm

import cramfast
from cramfast import sources
from cramfast.cli.flags import add_flags, setting_flags
from cramfast.cli.threads import busy_cores, default_threads, set_threads  # noqa: F401 (tests)
from cramfast.cli.tools import Parser, at_least, run
from cramfast.engine.hooks import Hooks
from cramfast.engine.stopping import Stopped, stop_on_signals
from cramfast.errors import CramfastError
from cramfast.presets import DEFAULT_PRESET
from cramfast.results_io import ResultWriter, read_results
from cramfast.settings import parse_settings

COLUMNS = ("#", "text", "tokens", "n_mem", "steps", "stop", "accuracy", "exact", "margin",
           "ce_no_mem", "ce_mem", "gain_bits", "token_gain", "seconds")
WIDTHS = (4, 24, 6, 5, 5, 9, 8, 5, 6, 9, 8, 9, 10, 7)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    return run("cramfast", lambda: args.func(args), flags=args.setting_flags)


def _parser():
    p = Parser(prog="python -m cramfast", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(required=True)
    c = sub.add_parser("compress", help="cram texts into mem vectors and check them by decoding")
    c.add_argument("--text", action="append", help="a text to compress (repeatable)")
    c.add_argument("--file", help="a text file or a folder of .txt files")
    c.add_argument("--encoding", default="utf-8", help="of --file (default utf-8; old Gutenberg "
                   "files: cp1252)")
    c.add_argument("--length", type=at_least(2), help="cut texts to L tokens; with --file, "
                   "sample passages of L tokens")
    c.add_argument("--samples", type=at_least(1), default=1, help="passages per file with --length")
    c.add_argument("--n-mem", type=at_least(1), default=1)
    c.add_argument("--out", help="a new (or empty) folder for the mem vectors (.safetensors) and "
                   "metadata (.json), written as each text finishes")
    c.add_argument("--json", help="write the table as JSON to this file")
    c.add_argument("--csv", help="write the table as CSV to this file")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--checkpoint", metavar="DIR", help="keep the texts in flight in this folder "
                   "(see --checkpoint-every); the same command again resumes each from there")
    add_flags(c, "--model", "--dtype", "--device", "--threads", "--preset", "--max-steps",
              "--patience", "--lr", "--max-slots", "--set", "--backend", "--checkpoint-every",
              defaults={"--preset": DEFAULT_PRESET, "--set": []})
    c.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                   help="on CUDA, launch every kernel eagerly instead of replaying CUDA graphs")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=_compress,
                   setting_flags=dict(setting_flags(c), cuda_graphs="--no-cuda-graphs"))
    d = sub.add_parser("decode", help="regenerate texts from saved mem vectors")
    d.add_argument("path", help="a folder written by compress --out, or one of its files")
    add_flags(d, "--model", "--dtype", "--device",
              model=dict(help="override the model stored with the result"))
    d.set_defaults(func=_decode, setting_flags={})
    return p


def _texts(args, tokenizer) -> list:
    texts = list(args.text or [])
    if args.file:
        for path in sources.text_files(args.file):
            body = sources.read_text_file(path, args.encoding)
            if args.length:
                texts += sources.sample_passages(tokenizer, body, args.length, args.samples,
                                                 args.seed)
            else:
                texts.append(body)
    return texts or list(sources.DEMO_PASSAGES)


def _compress(args) -> int:
    settings = dict(max_steps=args.max_steps, patience=args.patience, lr=args.lr,
                    max_slots=args.max_slots, cuda_graphs=args.cuda_graphs,
                    checkpoint_seconds=args.checkpoint_every, **parse_settings(args.set))
    writer = ResultWriter(args.out) if args.out else None     # checked before any work
    for path in (args.json, args.csv):
        _check_writable(path)
    lm = cramfast.load_model(args.model, dtype=args.dtype, device=args.device)
    texts = _texts(args, lm.tokenizer)
    progress = Progress(args.quiet)
    results = cramfast.compress_iter(           # every text checked here, before any work
        texts, model=lm, n_mem=args.n_mem, max_length=args.length, seed=args.seed,
        backend=args.backend, preset=args.preset, hooks=progress.hooks(),
        checkpoint=args.checkpoint, **{k: v for k, v in settings.items() if v is not None})
    set_threads(args.threads)
    progress.start(len(texts))
    progress.line(_format_row(COLUMNS))
    rows, start = [], time.perf_counter()
    # with --checkpoint, SIGTERM or Ctrl-C first saves every text in flight (engine/stopping.py)
    polite = (stop_on_signals(lambda line: print(f"cramfast: {line}", file=sys.stderr))
              if args.checkpoint else contextlib.nullcontext())
    try:
        with polite:
            for index, res in results:
                rows.append(table_row(index, res))
                if writer:
                    writer.write(index, res)
                progress.done(_format_row(rows[-1].values()))
    except (KeyboardInterrupt, Stopped) as exc:
        progress.close()
        _write_tables(args, rows)
        kept = f", kept in {args.out}" if writer and writer.written else ""
        saved = f"; {exc}, the same command goes on" if isinstance(exc, Stopped) else ""
        print(f"cramfast: interrupted: {len(rows)} of {len(texts)} results done{kept}{saved}",
              file=sys.stderr)
        return 128 + exc.signum if isinstance(exc, Stopped) else 130
    progress.close()
    _write_tables(args, rows)
    wall = time.perf_counter() - start
    exact = [r for r in rows if r["exact"] == "yes"]
    tokens = sum(r["tokens"] for r in exact)
    print(f"\n{lm.name} ({str(lm.dtype)[6:]}, {lm.device.type}): {len(exact)}/{len(rows)} texts "
          f"exact, {tokens} tokens in {wall:.1f} s ({tokens / wall:.1f} lossless tokens/s)")
    if writer:
        print(f"saved {len(writer.written)} result(s) to {args.out}")
    return 0


def table_row(index: int, res) -> dict:
    """One text's row of the printed table (and of --json/--csv)."""
    return dict(zip(COLUMNS, (
        index, res.text.replace("\n", " ")[:WIDTHS[1]], res.n_tokens, res.n_mem, res.steps,
        res.stop_reason, round(res.accuracy, 3), "yes" if res.exact else "no",
        round(res.margin, 2), round(res.ce_without_mem, 2), round(res.ce_with_mem, 2),
        round(res.info_gain_bits, 1), round(res.token_gain, 1), round(res.seconds, 1))))


def _format_row(values) -> str:
    cells = [str(v) for v in values]
    return "  ".join(c.ljust(w) if i == 1 else c.rjust(w)
                     for i, (c, w) in enumerate(zip(cells, WIDTHS)))


class Progress:
    """A tqdm bar on stderr (texts done, text-steps/s from the engine's timings, ETA), the
    table's rows printed above it as texts finish."""

    def __init__(self, quiet: bool):
        self.quiet, self.bar = quiet, None
        self.text_steps, self.seconds = 0, 0.0

    def start(self, total: int):
        self.bar = tqdm(total=total, unit="text", file=sys.stderr, disable=self.quiet,
                        dynamic_ncols=True, leave=False)

    def hooks(self):
        return Hooks(on_timing=self._timing)

    def _timing(self, timing):
        if timing.phase == "steps":
            self.text_steps += timing.texts * timing.steps
            self.seconds += timing.seconds
            self.bar.set_postfix_str(f"{self.text_steps / self.seconds:.1f} text-steps/s")

    def line(self, text: str):
        self.bar.write(text, file=sys.stdout)

    def done(self, text: str):
        self.line(text)
        self.bar.update(1)

    def close(self):
        self.bar.close()


def _check_writable(path):
    if path is None:
        return
    try:
        with open(path, "a"):
            pass
    except OSError as exc:
        raise CramfastError(f"{path}: cannot write there ({exc.strerror})") from None


def _write_tables(args, rows):
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)


def _decode(args) -> int:
    results, problems = read_results(args.path)
    for res in results:
        lm = cramfast.load_model(args.model or res.model, dtype=args.dtype, device=args.device)
        ids, text = cramfast.decode(res, model=lm)
        match = "yes" if ids == res.token_ids else "no"
        print(f"--- {res.n_tokens} tokens, {res.model}, matches stored ids: {match}")
        print(text.replace("\n", "\\n"))   # one line per text: a header never runs into it
    for problem in problems:
        print(f"cramfast: error: {problem}", file=sys.stderr)
    return 2 if problems else 0
