"""``python -m cramfast.sweep.status DB [DB...]``: where a sweep stands, read from its store while
it runs (or after it was stopped).

For every group of stored rows (model, source, m and settings, as the report groups them: the
preset, the budget and the settings changed from the preset named), per length: the rows
stored, how many are lossless, their mean accuracy and mean steps. Then the texts in flight,
from the store's checkpoints: per m, length and group, how many, the steps they have run, their
best teacher-forced accuracy so far, the steps their budget leaves at most (an upper bound on
what they still cost), the fewest and most steps each has left were none of its running
attempts to beat its best again (each stops at its patience after its best: when the first of
them will end, unless it improves; attempts started later in idle slots are not counted) and,
where their group is known, the interval the length's mean accuracy
will end in (from the stored rows with the floors under the running texts' results: their best
so far, a best that only grows, less the final evaluation's rounding; to every running text
lossless), marked where even its top is below the capacity threshold (a climb has decided that
length and leaves its texts unfinished: they are not counted in the time left); when the newest
of them was saved (a sweep that has saved nothing for long is not running); the time they need
at most at the pace so far: each text's budget left times its seconds per step until now (texts
in flight share a batch, whose steps only get cheaper as texts leave it; the lengths a climb
has not started are not in it). A text's group is known where the sweep labelled its checkpoint
with its job (the sweep does so as it hands the text to the engine); a checkpoint alone says
only its text's length, m and settings, so an unlabelled one is taken to be of the one group of
stored rows of its m whose optimizer and budget it has, if there is one.
"""
from __future__ import annotations

import sys
import time
from collections import defaultdict

from cramfast.cli.tools import Parser, run
from cramfast.engine.checkpoint import progress, unpack
from cramfast.metrics import CAPACITY_THRESHOLD
from cramfast.report.groups import (
    attach_in_flight,
    groups_of,
    is_lossless,
    mean_of,
    sweep_record,
)
from cramfast.report.records import settings_label
from cramfast.report.tables import markdown_table
from cramfast.sweep import store
from cramfast.sweep.grid import mean_at_most


def stored_table(rows: list[dict]) -> str:
    """Per group and length: rows, lossless ones, mean accuracy, mean steps."""
    body = []
    for g in groups_of(rows):
        what = settings_label(g)
        for length, at in g.per_length().items():
            lossless = sum(map(is_lossless, at))
            body.append([g.model_label, g.source_label, str(g.n_mem), what, str(length),
                         str(len(at)), str(lossless),
                         f"{mean_of([r['accuracy'] for r in at]):.4f}",
                         f"{mean_of([r['steps'] for r in at]):.0f}"])
    return markdown_table(["model", "source", "m", "settings", "L", "stored", "lossless",
                           "mean accuracy", "mean steps"], body)


def in_flight(records: list[tuple]) -> list[dict]:
    """One entry per text in flight (Store.checkpoint_records): m, L, steps run, best accuracy
    so far, budget, when saved, its job where the sweep labelled it (cramfast.engine.checkpoint
    .progress; texts whose record cannot be read, or whose attempts are all queued, are counted
    apart)."""
    out = []
    for blob, saved_at, job in records:
        record = unpack(blob)
        text = progress(record)
        if text is None:
            out.append(dict(readable=record is not None, saved_at=saved_at, job=job))
            continue
        settings = text.pop("settings")
        out.append(dict(text, readable=True, saved_at=saved_at, job=job,
                        budget={k: settings.get(k) for k in BUDGET_KEYS}))
    return out


# What a checkpoint's settings and a group's record both hold that tells a preset or budget
# apart (a factor the checkpoint does not record, such as mem_position, it cannot tell apart)
BUDGET_KEYS = ("optimizer", "init", "max_steps", "patience", "lr_std", "focal_gamma")


def runs_in(optim: dict, text: dict) -> bool:
    """Whether a text in flight can be of the group whose optimizer settings are ``optim``: the
    same optimizer, init and budget."""
    return all(optim.get(k) == v for k, v in text["budget"].items() if k in optim)


def time_left(texts: list[dict], decided: int = 0) -> str:
    """The wall time the texts in flight need at most at the pace so far, in words; ``decided``
    more are at lengths decided below the threshold, which a climb does not run on."""
    bounds = [t["seconds_left"] for t in texts if t.get("seconds_left") is not None]
    left_out = (f"; {decided} at lengths decided below {CAPACITY_THRESHOLD:g} not counted: "
                "a climb leaves them" if decided else "")
    if not bounds:
        return "no pace recorded yet" + left_out
    waiting = sum("length" not in t for t in texts)
    hours = max(bounds) / 3600
    return (f"at most {hours:.1f} h more at the pace so far (the texts running; "
            + (f"{waiting} not started and " if waiting else "")
            + "a climb's later lengths not counted" + left_out + ")")


def mean_bounds(stored: list[float], floors: list[float]) -> tuple[float, float]:
    """Where a length's mean accuracy will end, from its stored rows' accuracies and the floors
    under its running texts' results (cramfast.engine.checkpoint.progress: the best so far,
    which only grows, less the final evaluation's rounding): from their mean as they stand to
    their mean were every running text to end lossless."""
    n = len(stored) + len(floors)
    return (sum(stored) + sum(floors)) / n, mean_at_most(stored, n)


def in_flight_groups(texts: list[dict], rows: list[dict], records=()) -> list[tuple]:
    """The texts in flight (``texts``: in_flight of ``records``, the store's checkpoint records)
    per m, length and group: (m, L, settings hash or "?", the texts, (low, high) where the
    length's mean accuracy will end, or None where that is not known). A text the sweep
    labelled with its job is its group's (settings: the group's hash), and the bounds are the
    report's (cramfast.report.groups.Group.mean_bounds: over every text of the length, queued
    ones at 0); of the others, where the stored rows of that m form one group whose optimizer
    and budget they have, they are taken to be its (a checkpoint alone does not say), and the
    bounds are over the stored rows and the texts in flight."""
    groups = defaultdict(list)
    for t in texts:
        if "length" in t:
            job = t.get("job")
            group = None if job is None else (job.model, job.source, job.settings_hash)
            groups[(t["n_mem"], t["length"], group)].append(t)
    stored = groups_of(rows)
    attach_in_flight(stored, records)
    by_key = {(g.model, g.source, g.n_mem, g.settings_hash): g for g in stored}
    of_m = defaultdict(list)          # m -> [(group, its optimizer settings)]
    for g in stored:
        of_m[g.n_mem].append((g, sweep_record(g.rows[0]).get("optim") or {}))
    out = []
    for (n_mem, length, group), at in sorted(groups.items(), key=lambda kv: (
            kv[0][0], kv[0][1], kv[0][2] or ())):
        floors = [t["floor"] for t in at]
        bounds, of = None, "?"
        if group is not None:
            of = group[2][:8]
            g = by_key.get((group[0], group[1], n_mem, group[2]))
            counted = {} if g is None else g.capacity_lengths()
            if length in counted:       # over every text of the length (Group.mean_bounds)
                bounds = g.mean_bounds(length, counted[length])
            else:                       # not a length the report counts (yet)
                bounds = mean_bounds([], floors)
        elif len(of_m[n_mem]) <= 1 and all(runs_in(o, t) for _, o in of_m[n_mem] for t in at):
            accuracies = [r["accuracy"] for g, _ in of_m[n_mem]
                          for r in g.per_length().get(length, [])]
            bounds = mean_bounds(accuracies, floors)
        out.append((n_mem, length, of, at, bounds))
    return out


def in_flight_table(texts: list[dict], rows: list[dict], records=(), groups=None) -> str:
    """Per m, length and group (``groups``: in_flight_groups of the others, unless given), the
    texts in flight: how many, the steps run, their best so far, the steps left at most, the
    fewest and most steps a text has left were it not to beat its best again, and the interval
    the length's mean accuracy will end in, marked where it ends below the capacity threshold
    whatever they do (a climb leaves such texts unfinished)."""
    body = []
    for n_mem, length, of, at, bounds in (groups if groups is not None
                                          else in_flight_groups(texts, rows, records)):
        steps, best = [t["steps"] for t in at], [t["best"] for t in at]
        stuck = [t["left_if_stuck"] for t in at]
        ends = "–" if bounds is None else "{:.4f}–{:.4f}".format(*bounds) + (
            f" (below {CAPACITY_THRESHOLD:g})" if bounds[1] < CAPACITY_THRESHOLD else "")
        body.append([str(n_mem), str(length), of, str(len(at)), f"{min(steps)}–{max(steps)}",
                     f"{min(best):.3f}–{max(best):.3f}", f"{sum(t['left'] for t in at):,}",
                     f"{min(stuck)}–{max(stuck)}", ends])
    return markdown_table(["m", "L", "settings", "in flight", "steps run", "best accuracy so far",
                           "steps left at most", "steps left each if its best holds",
                           "mean accuracy at L will end in"], body)


def status(path) -> str:
    """The status of one store (with its rank shards) as text."""
    files = store.family(path)
    rows = store.read_runs([path])      # refuses a path that holds no store, in one line
    records = []
    for f in files:
        with store.Store(f, create=False) as s:
            records += s.checkpoint_records()
    lines = [f"{path}: {len(rows)} row(s) stored, {len(records)} text(s) in flight", ""]
    if rows:
        lines += [stored_table(rows), ""]
    if records:
        texts = in_flight(records)
        ago = (time.time() - max(t["saved_at"] for t in texts)) / 60
        unplaced = sum("length" not in t for t in texts)
        groups = in_flight_groups(texts, rows, records)
        below = {id(t) for *_, at, bounds in groups
                 if bounds is not None and bounds[1] < CAPACITY_THRESHOLD for t in at}
        lines += [in_flight_table(texts, rows, records, groups), "",
                  f"newest save {ago:.0f} min ago"
                  + (f"; {unplaced} record(s) unreadable or not started" if unplaced else ""),
                  time_left([t for t in texts if id(t) not in below], len(below)), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = Parser(prog="python -m cramfast.sweep.status", description=__doc__.split("\n\n")[0])
    p.add_argument("dbs", nargs="+", metavar="DB", help="stores written by cramfast.sweep")
    args = p.parse_args(argv)

    def show() -> int:
        for path in args.dbs:
            print(status(path))
        return 0
    return run("cramfast.sweep.status", show)


if __name__ == "__main__":
    sys.exit(main())
