"""The capacity search, or the length climb, with and without rounds: slot occupancy and wall
time of ``--search capacity`` (or ``--climb``) on the same texts, the engine's job stream (each
text's next probe, or the lengths a decided length lets run, join the running batch at once)
against rounds (everything next waits for the round's slowest text: what a compress_iter that
takes no more texts gives, as before).

    .venv/bin/python benchmarks/rounds_occupancy.py --out FILE.json
    .venv/bin/python benchmarks/rounds_occupancy.py --climb --out FILE.json
    .venv/bin/python benchmarks/rounds_occupancy.py --climb --early --out FILE.json

With ``--early`` (a climb), both runs use the job stream, and what differs is a length decided
below before its texts ended: ``--climb-finish`` runs them to their end, the default takes them
out of the batch once the stored rows keep the length's mean below 0.99.

The shipped tiny model (tests/data/tiny-llama-trained, fp64), prose in its own distribution
(the tests' corpus rotated, a passage per text), `fast` without parallel attempts (fill_slots
0: they depend on the batch, and the two runs must agree); the search per text between 8
tokens and --cap, the climb over --climb-lengths. Figures: ``wall_s`` (the sweep, model
loaded), ``occupancy`` (the busy share of the batch's slots over its steps: sum over syncs of
busy slots x steps / (max_slots x steps)), ``calls`` (batched compress calls), ``steps``
(device steps, each a batch forward/backward), ``text_steps`` (the busy slots' steps, summed).
On a CPU a step costs its rows, so the wall
time follows the text-steps, not the occupancy; on a GPU a step of a small model costs about
the same at any occupancy, and the steps are what the wall time follows.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def run(stream: bool, args, folder: Path, finish: bool = False) -> dict:
    import cramfast
    from cramfast.engine import Hooks
    from cramfast.sweep import grid
    from cramfast.sweep import runner as sweep
    timings, calls = [], []

    def compress_iter(texts, **kw):
        calls.append(len(texts))
        kw.pop("checkpoint", None)
        results = cramfast.compress_iter(texts, hooks=Hooks(on_timing=timings.append), **kw)
        return results if stream else (item for item in results)   # no submit: rounds

    mode = ("stream" if stream else "rounds") + (", every text" if finish else "")
    db = folder / f"{mode}.db"
    plan = (["--lengths", args.climb_lengths, "--climb"] + (["--climb-finish"] if finish else [])
            if args.climb
            else ["--lengths", f"8,{args.cap}", "--search", "capacity"])
    flags = ["--model", str(ROOT / "tests/data/tiny-llama-trained"), "--source",
             str(folder / "corpus.txt"), *plan, "--samples",
             str(args.texts), "--dtype", "fp64", "--max-slots",
             str(args.slots), "--max-steps", str(args.max_steps), "--preset", "fast",
             "--set", "fill_slots=0", "--db",
             str(db), "--quiet"]
    start = time.perf_counter()
    summary = sweep.run_sweep(grid.build_grid(sweep._parser().parse_args(flags)), quiet=True,
                              compress_iter=compress_iter, rank=0, world=1)
    wall = time.perf_counter() - start
    steps = [t for t in timings if t.phase == "steps"]
    busy = sum(t.texts * t.steps for t in steps)
    total = sum(t.steps for t in steps)
    return dict(mode=mode, wall_s=round(wall, 2),
                occupancy=round(busy / (total * args.slots), 3), calls=len(calls),
                steps=total, text_steps=busy, capacities=sorted(summary.search.values()),
                climb=sorted(map(list, summary.climb.values())))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--texts", type=int, default=12)
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--cap", type=int, default=96)
    p.add_argument("--max-steps", type=int, default=600)
    p.add_argument("--climb", action="store_true", help="the climb instead of the search")
    p.add_argument("--climb-lengths", default="8,16,24,32,40,48,56,64,80,96")
    p.add_argument("--early", action="store_true",
                   help="with --climb: lengths decided early against --climb-finish, both "
                        "streamed")
    p.add_argument("--out")
    args = p.parse_args(argv)
    import torch

    from conftest import CORPUS
    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp())
    if args.climb:                  # one passage per text: the corpus rotated sentence by
        # sentence, without the one the tiny model cannot hold even at 8 tokens (every climb
        # would stop there)
        sentences = [s.strip() + "." for s in CORPUS.split(". ")
                     if s.strip() and "quick brown fox" not in s]
        paragraphs = [" ".join((sentences[k:] + sentences[:k]) * 2) for k in range(args.texts)]
    else:                           # ... or word by word
        words = CORPUS.split()
        paragraphs = [" ".join(words[3 * k:] + words[:3 * k]) for k in range(args.texts)]
    (folder / "corpus.txt").write_text("\n\n".join(paragraphs))
    runs = ([run(True, args, folder, finish=True), run(True, args, folder)]
            if args.climb and args.early else [run(False, args, folder), run(True, args, folder)])
    for r in runs:
        print(r)
    for figure in ("capacities", "climb"):
        assert runs[0][figure] == runs[1][figure], f"the two runs' {figure} differ"
    record = dict(machine=platform.processor() or platform.machine(), threads=1,
                  settings=vars(args), runs=runs, date=time.strftime("%Y-%m-%d"))
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
