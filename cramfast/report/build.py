"""``python -m cramfast.report DB [DB...] --out DIR``: the paper's Table 1 and figures, from the
store alone.

Rows are grouped by (model, source, n_mem, settings); a DB's rank shards (torchrun) are merged in,
one row per job. For each group:
  d, V, MaxCap   the model's input-embedding width, vocabulary and round(d * 16 / log2 V)
  capacity       the paper's: the largest length L on the grid whose mean accuracy over the
                 group's texts is >= 0.99; the grid: the lengths a grid mode ran (grid, warm
                 start, climb) and those of the paper's grid that a --search reached for every
                 text (its other probes reach only the texts lossless below them, a biased
                 mean). A length that some texts have not reached yet is decided only when its
                 mean is >= 0.99 (or < 0.99) whatever they do (each at the floor under its
                 result where it is in flight, its checkpoint labelled by the sweep, else at 0;
                 and at 1),
                 else it is open; "≥" marks a lower bound (the longest length counted, or a
                 longer one still open: "(96 open)")
  token gain     mean over the group's runs with accuracy <= 0.99 (the paper's averaging),
  CE reduction   in tokens and nats
  utilisation    token gain / (MaxCap * n_mem)
  bits/vector    CE reduction in bits / n_mem
  search capacity  (--search rows) per text, the largest lossless length; median, min, max
Published numbers (Kuratov et al. 2025, Table 1 and Figure 4) are put beside models whose name
matches. Per length: the mean accuracy with its 95% interval (Student's t over the texts'
accuracies), the texts lossless with theirs (Clopper-Pearson) and the passages it is over. Files
written: table1.csv, per_length.csv (the capacity's inputs, and per length the CE its texts had
to remove by whether they came back: what a vector holds in nats), summary.json (one record per
group: capacity, passages, mean accuracy and texts lossless per length, preset, max_steps, the
search's per-text capacities), fig1_capacity.png, fig3_ce.png, fig4_capacity_vs_nmem.png,
fig5_theory_vs_measured.png, one CSV per figure with the plotted points, search.csv (--search runs),
warm_start.csv (--warm-start runs), controlled.csv (a model and m with several groups: what sets
each apart, its capacity), and report.md embedding it all. Every number carries the refs ("FILE#id")
of its rows.
The groups and what they decide are in cramfast.report.groups, each output's rows in
cramfast.report.records, the figures drawn in cramfast.report.figures.
The output folder is checked writable before the store is read.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from cramfast.cli.tools import Parser, run
from cramfast.errors import CramfastError
from cramfast.metrics import CAPACITY_THRESHOLD
from cramfast.report import tables
from cramfast.report.figures import FIGURES, fig1, fig3, fig4, fig5
from cramfast.report.groups import attach_in_flight, groups_of, sweep_identity
from cramfast.report.records import (
    capacity_label,
    controlled_rows,
    per_length_rows,
    search_rows,
    summary_records,
    table_rows,
    warm_start_rows,
)
from cramfast.sweep import store


def capacity_sentences(threshold: float) -> list[str]:
    """What each of the two capacities means, one sentence each."""
    return [f"**Capacity** (the paper's definition, Kuratov et al. 2025): the largest length L "
            f"on the grid whose mean accuracy over the texts is ≥ {threshold:g}, one number per "
            "model, source and m; a length some texts have not reached yet counts only once "
            "their results cannot change its verdict (else it is open); ≥ marks a lower bound: "
            "the longest length run (none longer failed) or a longer one still open.",
            "**Search capacity** (`--search capacity`): for each text alone, the largest length "
            "it was crammed into losslessly (every token right and decoded back), found by "
            "doubling and "
            "then bisection, off the grid; given as the median, min and max over the texts, with "
            "how many were still lossless at the search's limit (lower bounds)."]


def _fmt(v, digits=1):
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown_table(rows: list[dict], show_settings: bool) -> str:
    """Table 1 in markdown: the search and published columns only where some row has them."""
    head = ["model", "source", "m"] + (["settings"] if show_settings else []) + [
        "d", "V", "MaxCap", "texts", "capacity", "token gain", "CE red. (nats)", "utilisation",
        "bits/vector"]
    has_search = any(r["search_capacity_median"] is not None for r in rows)
    has_paper = any(r["paper_model"] for r in rows)
    if has_search:
        head.append("search: median lossless L")
    if has_paper:
        head += ["paper capacity", "paper gain", "paper CE red."]
    body = []
    for r in rows:
        cap = capacity_label(r)
        cells = [r["model"], r["source"],
                 str(r["n_mem"])] + ([r["settings"]] if show_settings else []) + [
            _fmt(r["d"]), _fmt(r["V"]), _fmt(r["max_cap"]), _fmt(r["texts"]), cap,
            _fmt(r["token_gain"]), _fmt(r["ce_reduction_nats"]), _fmt(r["utilisation"], 3),
            _fmt(r["bits_per_vector"])]
        if has_search:
            cells.append(_fmt(r["search_capacity_median"]))
        if has_paper:
            cells += [_fmt(r["paper_capacity"]), _fmt(r["paper_token_gain"]),
                      _fmt(r["paper_ce_reduction"])]
        body.append(cells)
    return tables.markdown_table(head, body)


def capacity_table(table: list[dict], summary: list[dict], show_settings: bool) -> str:
    """The paper's capacity (column "capacity") and the per-text search capacity side by side,
    one row per group."""
    head = ["model", "source", "m"] + (["settings"] if show_settings else []) + [
        "texts", "capacity", "passages at it", "search: texts", "median", "min", "max",
        "lower bounds"]
    body = []
    for r, rec in zip(table, summary):
        search = rec["search"] or {}
        body.append([r["model"], r["source"], str(r["n_mem"])]
                    + ([r["settings"]] if show_settings else [])
                    + [_fmt(r["texts"]), capacity_label(r), _fmt(r["capacity_passages"])]
                    + [_fmt(search.get(k)) for k in ("texts", "median", "min", "max",
                                                     "lower_bound_texts")])
    return tables.markdown_table(head, body)


def per_length_table(per_length: list[dict], threshold: float, show_settings: bool) -> str:
    """Mean accuracy per group and length with its 95% interval, the texts lossless with the 95%
    interval of their share, and its passages ("3/4": fewer than the length's texts); where fewer,
    the interval the mean over all of them will end in; the verdict (yes, no, open, or not counted:
    a length the paper's capacity is not decided at); the mean steps of its texts (what the length
    cost)."""
    head = ["model", "source", "m"] + (["settings"] if show_settings else []) + [
        "L", "passages", "mean accuracy", "95% interval", "lossless (95% share)", "will end in",
        f"≥ {threshold:g}", "mean steps"]
    body = []
    for p in per_length:
        passages = str(p["passages"]) + (f"/{p['texts']}" if p["passages"] < p["texts"] else "")
        interval = ("–" if p["ci95_low"] is None
                    else f"{p['ci95_low']:.4f} – {p['ci95_high']:.4f}")
        share = (p["lossless_ci95_low"], p["lossless_ci95_high"])
        lossless = "–" if share[0] is None else f"{p['lossless']} ({share[0]:.2f} – {share[1]:.2f})"
        will_end = ("–" if p["passages"] == p["texts"]
                    else f"{p['mean_will_end_low']:.4f} – {p['mean_will_end_high']:.4f}")
        verdict = {"pass": "yes", "fail": "no", "open": "open", None: "not counted"}[
            p["verdict"]]
        body.append([p["model"], p["source"], str(p["n_mem"])]
                    + ([p["settings"]] if show_settings else [])
                    + [str(p["length"]), passages, _fmt(p["mean_accuracy"], 4), interval,
                       lossless, will_end, verdict, _fmt(p["mean_steps"], 0)])
    return tables.markdown_table(head, body)


def ce_table(per_length: list[dict], show_settings: bool) -> str:
    """Per group and length, what its texts had to remove (CE without mem, nats) by whether they
    came back, the most one mem removed, and the CE without mem per predicted token."""
    def span(p, kind):
        low, high = p[f"ce_without_mem_{kind}_min_nats"], p[f"ce_without_mem_{kind}_max_nats"]
        return "–" if low is None else f"{low:.0f}" if round(low) == round(high) \
            else f"{low:.0f}–{high:.0f}"
    head = ["model", "source", "m"] + (["settings"] if show_settings else []) + [
        "L", "lossless", "their CE without mem", "short of it", "their CE without mem",
        "most CE removed", "CE without mem per token"]
    body = []
    for p in (p for p in per_length if p["runs"]):    # a length only in flight has no CE yet
        body.append([p["model"], p["source"], str(p["n_mem"])]
                    + ([p["settings"]] if show_settings else [])
                    + [str(p["length"]), str(p["lossless"]), span(p, "lossless"),
                       str(p["runs"] - p["lossless"]), span(p, "short"),
                       _fmt(p["ce_removed_max_nats"], 0),
                       _fmt(p["mean_ce_without_mem_per_token_nats"], 2)])
    return tables.markdown_table(head, body)


def controlled_table(controlled: list[dict]) -> str:
    """The controlled comparison in markdown: one row per group of a model and m."""
    head = ["model", "m", "text", "preset", "max steps", "changed", "texts", "capacity",
            "mean accuracy by L", "token gain"]
    return tables.markdown_table(head, [
        [c["model"], str(c["n_mem"]), c["text_kind"], _fmt(c["preset"]), _fmt(c["max_steps"]),
         c["changed"] or "–", _fmt(c["texts"]), capacity_label(c), c["mean_accuracy"] or "–",
         _fmt(c["token_gain"])]
        for c in controlled])


def warm_start_table(warm: list[dict]) -> str:
    """Steps per length with and without --warm-start, in markdown."""
    head = ["model", "source", "m", "L", "pairs", "cold steps", "warm steps", "saved"]
    return tables.markdown_table(head, [
        [w["model"], w["source"], str(w["n_mem"]), str(w["length"]), str(w["pairs"]),
         _fmt(w["cold_steps"]), _fmt(w["warm_steps"]),
         f"{_fmt(None if w['steps_saved'] is None else 100 * w['steps_saved'], 0)}%"]
        for w in warm])


def writable_folder(path) -> Path:
    """``path`` made if missing, and a file written and removed in it: a folder this process
    cannot write is refused before any work."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".cramfast-write-probe-"):
            pass
    except OSError as exc:
        raise CramfastError(f"{out}: cannot write the report there "
                            f"({exc.strerror or exc})") from None
    return out


def make_report(dbs, out_dir, threshold: float = CAPACITY_THRESHOLD, paper: bool = True,
                samples: int | None = None) -> dict:
    """Read the DBs (and their shards), write every table and figure into ``out_dir``.
    ``samples``: only the texts of the first this many passages of every source (so that runs
    with more passages compare with runs with fewer on the same texts)."""
    out = writable_folder(out_dir)
    rows = store.read_runs(dbs)
    if samples is not None:
        rows = [r for r in rows if r["sample"] < samples]
    if not rows:
        raise CramfastError(f"{', '.join(map(str, dbs))}: no runs stored yet"
                            + ("" if samples is None else f" for the first {samples} passages"))
    groups = groups_of(rows)
    in_flight = [r for r in store.read_checkpoints(dbs)
                 if samples is None or (r[2] is not None and r[2].sample < samples)]
    running = attach_in_flight(groups, in_flight)
    table = table_rows(groups, threshold)
    if not paper:
        for r in table:
            r.update(paper_model=None, paper_capacity=None, paper_token_gain=None,
                     paper_ce_reduction=None)
    show_settings = len({r["settings_hash"] for r in table}) > 1
    md = markdown_table(table, show_settings)
    tables.write_csv(out / "table1.csv", table)
    per_length = per_length_rows(groups, threshold)
    tables.write_csv(out / "per_length.csv", per_length)
    summary = summary_records(groups, threshold)
    for r, rec in zip(table, summary):   # both in the groups' order
        rec["paper_capacity"] = r["paper_capacity"]
    (out / "summary.json").write_text(json.dumps(dict(
        threshold=threshold, sources=[str(d) for d in dbs],
        capacity=capacity_sentences(threshold)[0].replace("**", ""),
        search_capacity=capacity_sentences(threshold)[1].replace("**", ""),
        mean_accuracy_ci95="Student's t: mean ± t(0.975, n - 1) · sd / sqrt(n) over the texts' "
                           "accuracies (sd with n - 1), clipped to [0, 1]; null below 2 texts",
        lossless_ci95="Clopper-Pearson (exact binomial) interval of the share of the texts "
                      "lossless (every token right and decoded back), from lossless of passages",
        records=summary), indent=1, ensure_ascii=False) + "\n")
    searches, warm = search_rows(groups), warm_start_rows(groups)
    controlled = controlled_rows(groups, threshold)
    if controlled:
        tables.write_csv(out / "controlled.csv", controlled)
    if searches:
        tables.write_csv(out / "search.csv", searches)
    if warm:
        tables.write_csv(out / "warm_start.csv", warm)
    fig1(table, out, threshold)
    fig3(groups, out, threshold)
    fig4(table, out)
    fig5(table, out)
    legend = (f"capacity: largest grid length with mean accuracy ≥ {threshold:g} over its texts "
              "(≥: a lower bound, none longer failed or a longer one is open; (96 open): a "
              "length some texts have not reached, whose verdict they can still change); "
              "token gain and CE reduction: means over runs "
              f"with accuracy ≤ {threshold:g}; "
              "utilisation = token gain / (MaxCap · m); bits/vector = CE reduction in bits / m. "
              "Inputs of every cell: table1.csv (row refs FILE#id) and per_length.csv.")
    settings_notes = []
    if show_settings:
        for r in table:
            ident = sweep_identity(next(g.rows[0] for g in groups
                                        if g.settings_hash == r["settings_hash"]))
            settings_notes.append(f"- `{r['settings']}`: {json.dumps(ident, sort_keys=True)}")
    capacities = capacity_table(table, summary, show_settings)
    origin = f"From {len(rows)} runs in {', '.join(map(str, dbs))}" + (
        f", and {running} text(s) in flight there, each counted at the floor under its result "
        "where a length some texts have not finished is decided (its best so far, less one "
        "position without a margin)." if running else ".")
    text = ["# cramfast report", "", origin, "",
            "## Table 1", "", md, "", legend, "",
            "## Capacity: the paper's and per text", "", capacities, ""]
    text += [f"- {line}" for line in capacity_sentences(threshold)] + [""]
    text += ["## Mean accuracy per length", "",
             per_length_table(per_length, threshold, show_settings), "",
             "95% interval: Student's t over the texts' accuracies (mean ± t(0.975, n − 1) · sd / "
             "√n), none for one text, zero wide when every text has the same accuracy. Lossless: "
             "the texts that came back (every token right, decoded back), with the exact "
             "(Clopper-Pearson) 95% interval of their share, which says something where every "
             "text is lossless (16 of 16: at least 0.79). "
             "Passages \"3/4\": the length was run for fewer than the group's texts; \"will end "
             "in\": its mean over all of them, the others counted at the floor under their "
             "results where they are in flight, else at 0, and at 1. All in "
             "per_length.csv and summary.json.", ""]
    if settings_notes:
        text += ["Settings:", ""] + sorted(set(settings_notes)) + [""]
    text += ["## What a vector removes, in nats", "",
             ce_table(per_length, show_settings), "",
             "CE in nats summed over a text's predicted tokens (the first is given): without "
             "mem, what the text costs the model, and removed, what its mem took off (the most "
             "over the length's texts). Where the texts that came back all start from less CE "
             "than those short of it, what a vector holds is a number of nats rather than of "
             "tokens, and a text kind the model finds more surprising per token (random words "
             "against prose) fits fewer tokens. In per_length.csv.", ""]
    if controlled:
        text += ["## What moves the capacity", "",
                 "Every group of one model and m, side by side: its text kind, preset, budget "
                 "and the settings changed from the preset (what the run was given with --set); "
                 "rows that differ in one of them are a controlled comparison when they ran on "
                 "the same passages (`--samples N`: the first N of every source). Mean accuracy "
                 "by L: over the texts run at L (\"(5)\": fewer than the group's). In "
                 "controlled.csv.", "", controlled_table(controlled), ""]
    if searches:
        text += [f"Capacity search: {len(searches)} text(s), per-text results in search.csv.", ""]
    if warm:
        text += ["## Warm start (deviation from the paper: each length starts from the previous "
                 "length's mem)", "", warm_start_table(warm), ""]
    text += ["## Figures", ""] + [f"![{f}]({f})" for f in FIGURES]
    (out / "report.md").write_text("\n".join(text) + "\n")
    return dict(rows=len(rows), in_flight=running, groups=len(groups), table=table, markdown=md,
                capacities=capacities, summary=summary, sentences=capacity_sentences(threshold),
                files=sorted(p.name for p in out.iterdir()))


def _parser():
    p = Parser(prog="python -m cramfast.report", description=__doc__.split("\n\n")[0])
    p.add_argument("dbs", nargs="+", metavar="DB", help="results file(s) written by cramfast.sweep "
                   "(their .rank*.db shards are merged in)")
    p.add_argument("--out", default="report",
                   help="folder for the tables and figures (default report)")
    p.add_argument("--threshold", type=float, default=CAPACITY_THRESHOLD,
                   help="capacity's accuracy threshold")
    p.add_argument("--no-paper", action="store_true", help="leave out the published numbers")
    p.add_argument("--samples", type=int, metavar="N",
                   help="only the first N passages of each source (runs of more passages "
                        "compared with runs of fewer on the same texts)")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    return run("cramfast.report", lambda: _report_and_print(args))


def _report_and_print(args) -> int:
    if args.samples is not None and args.samples < 1:
        raise CramfastError(f"--samples must be >= 1, got {args.samples}")
    result = make_report(args.dbs, args.out, args.threshold, paper=not args.no_paper,
                         samples=args.samples)
    print(result["markdown"])
    print("\nCapacity, two ways:\n")
    print(result["capacities"])
    print("\n" + "\n".join(f"- {line.replace('**', '')}" for line in result["sentences"]))
    running = f" and {result['in_flight']} text(s) in flight" if result["in_flight"] else ""
    print(f"\ncramfast.report: {result['rows']} runs{running} in {result['groups']} group(s) -> "
          f"{args.out}/ ({', '.join(result['files'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
