"""``python -m cramfast.report DB [DB...] --out DIR``: the paper's Table 1 and figures, from the store alone.

Rows are grouped by (model, source, n_mem, settings); a DB's rank shards (torchrun) are merged in,
one row per job. For each group:
  d, V, MaxCap   the model's input-embedding width, vocabulary and round(d * 16 / log2 V)
  capacity       the largest length L whose mean accuracy over the group's texts is >= 0.99,
                 counting only lengths every text of the group was run at (the grid's lengths;
                 a search's per-text probes would bias the mean); "≥" marks a capacity that is
                 the longest length run (no length failed)
  token gain     mean over the group's runs with accuracy <= 0.99 (the paper's averaging),
  CE reduction   in tokens and nats
  utilisation    token gain / (MaxCap * n_mem)
  bits/vector    CE reduction in bits / n_mem
Published numbers (Kuratov et al. 2025, Table 1 and Figure 4) are put beside models whose name
matches. Files written: table1.md, table1.csv, per_length.csv (the capacity's inputs),
fig1_capacity.png, fig3_ce.png, fig4_capacity_vs_nmem.png, fig5_theory_vs_measured.png, one CSV
per figure with the plotted points, search.csv (--search runs), warm_start.csv (--warm-start
runs), and report.md embedding it all. Every number carries the refs ("FILE#id") of its rows.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from cramfast import store
from cramfast.errors import CramfastError
from cramfast.metrics import capacity as paper_capacity

THRESHOLD = 0.99

# Kuratov, Arkhipov, Bulatov, Burtsev (2025), arXiv 2502.13063, Table 1 (one vector):
# d, V, MaxCap, PG-19 capacity / token gain / CE reduction, random capacity / gain / CE red.
PAPER_TABLE1 = {
    "Pythia-160M": (768, 50304, 787, 80, 70.9, 396, 65, 61.3, 501),
    "Pythia-410M": (1024, 50304, 1049, 96, 81.3, 431, 72, 76.9, 630),
    "Pythia-1.4B": (2048, 50304, 2098, 160, 158.0, 793, 139, 144.4, 1108),
    "Pythia-2.8B": (2560, 50304, 2623, 128, 150.1, 740, 129, 134.0, 1024),
    "OPT-1.3B": (2048, 50272, 2098, 128, 132.2, 713, 116, 129.3, 1066),
    "OLMo-1B": (2048, 50304, 2098, 384, 406.3, 1901, 249, 257.3, 1852),
    "Sheared-LLaMA-1.3B": (2048, 32000, 2190, 512, 383.6, 1835, 382, 315.1, 1893),
    "Llama-3.2-1B": (2048, 128256, 1931, 512, 426.2, 2120, 316, 294.9, 2265),
    "Llama-3.2-3B": (3072, 128256, 2897, 1024, 720.3, 3292, 460, 456.9, 3383),
    "Llama-3.1-8B": (4096, 128256, 3862, 1568, 1094.1, 4866, 792, 623.2, 4541),
}
# Figure 4, PG-19: capacity in tokens by number of vectors.
PAPER_FIG4 = {
    "Pythia-160M": {1: 80, 2: 192, 4: 384, 8: 640, 16: 1280, 32: 2016},
    "Llama-3.2-1B": {1: 512, 2: 1024, 4: 2048, 8: 4096, 16: 7168},
}

FIGURES = ("fig1_capacity.png", "fig3_ce.png", "fig4_capacity_vs_nmem.png", "fig5_theory_vs_measured.png")


def _norm(name: str) -> str:
    s = re.sub(r"[^a-z0-9.]", "", name.lower().rstrip("/").split("/")[-1])
    return re.sub(r"(hf|deduped)$", "", re.sub(r"^meta(?=llama)", "", s))


def published(model_label: str):
    """The paper's Table 1 entry for a model (matched on its name), or None."""
    target = _norm(model_label)
    for name, values in PAPER_TABLE1.items():
        if _norm(name) == target:
            return name, values
    return None


# ---------------------------------------------------------------------------------------------
# groups and their numbers


@dataclass
class Group:
    model: str
    model_label: str
    source: str
    source_label: str
    n_mem: int
    settings_hash: str
    rows: list = field(default_factory=list)

    @property
    def random(self) -> bool:
        return self.source.startswith("random:")

    def info(self, key):
        return next((r[key] for r in self.rows if r.get(key) is not None), None)

    @property
    def texts(self) -> set:
        return {(r["sample"], r["seed"]) for r in self.rows}

    def per_length(self) -> dict[int, list]:
        by_length = defaultdict(list)
        for r in self.rows:
            by_length[r["length"]].append(r)
        return dict(sorted(by_length.items()))

    def complete_lengths(self) -> dict[int, list]:
        """Lengths at which every text of the group has a row."""
        texts = self.texts
        return {L: rows for L, rows in self.per_length().items()
                if {(r["sample"], r["seed"]) for r in rows} == texts}

    def capacity(self, threshold=THRESHOLD):
        lengths = self.complete_lengths()
        cap = paper_capacity([(L, r["accuracy"]) for L, rows in lengths.items() for r in rows], threshold)
        lower_bound = cap is not None and cap == max(lengths)
        refs = [r["ref"] for r in lengths.get(cap, [])]
        return cap, lower_bound, refs

    def gain_rows(self, threshold=THRESHOLD):
        return [r for r in self.rows if r["accuracy"] <= threshold]

    def search_capacities(self) -> dict:
        """(sample, seed) -> largest lossless length, for texts that a --search probed."""
        searched = {(r["sample"], r["seed"]) for r in self.rows if r["origin"] == "search"}
        out = {}
        for text in sorted(searched):
            lossless = [r["length"] for r in self.rows
                        if (r["sample"], r["seed"]) == text and r["accuracy"] >= 1.0]
            out[text] = max(lossless, default=1)
        return out


def groups_of(rows) -> list[Group]:
    groups: dict[tuple, Group] = {}
    for r in rows:
        k = (r["model"], r["source"], r["n_mem"], r["settings_hash"])
        if k not in groups:
            groups[k] = Group(r["model"], r["model_label"] or r["model"], r["source"],
                              r["source_label"] or r["source"], r["n_mem"], r["settings_hash"])
        groups[k].rows.append(r)
    return sorted(groups.values(), key=lambda g: (g.model_label, g.source_label, g.n_mem, g.settings_hash))


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def table_rows(groups: list[Group], threshold=THRESHOLD) -> list[dict]:
    out = []
    for g in groups:
        d, V, max_cap = g.info("hidden_size"), g.info("vocab_size"), g.info("max_cap")
        cap, lower_bound, cap_refs = g.capacity(threshold)
        gain_rows = g.gain_rows(threshold)
        gain = _mean([r["token_gain"] for r in gain_rows])
        ce_red = _mean([r["info_gain_nats"] for r in gain_rows])
        theory = max_cap * g.n_mem if max_cap else None
        searched = sorted(g.search_capacities().values())
        pub = published(g.model_label)
        row = dict(
            model=g.model_label, source=g.source_label, n_mem=g.n_mem, settings=g.settings_hash[:8],
            d=d, V=V, max_cap=max_cap, texts=len(g.texts), runs=len(g.rows),
            lengths=" ".join(map(str, g.complete_lengths())),
            capacity=cap, capacity_is_lower_bound=lower_bound,
            token_gain=gain, ce_reduction_nats=ce_red,
            utilisation=gain / theory if gain is not None and theory else None,
            bits_per_vector=ce_red / math.log(2) / g.n_mem if ce_red is not None else None,
            gain_runs=len(gain_rows),
            search_capacity_median=searched[len(searched) // 2] if searched else None,
            paper_model=None, paper_capacity=None, paper_token_gain=None, paper_ce_reduction=None,
            capacity_rows=" ".join(cap_refs), gain_rows=" ".join(r["ref"] for r in gain_rows),
            source_id=g.source, model_id=g.model, settings_hash=g.settings_hash)
        if pub and g.n_mem == 1:
            name, v = pub
            row.update(paper_model=name, paper_capacity=v[6] if g.random else v[3],
                       paper_token_gain=v[7] if g.random else v[4],
                       paper_ce_reduction=v[8] if g.random else v[5])
        out.append(row)
    return out


def _fmt(v, digits=1):
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown_table(rows: list[dict], show_settings: bool) -> str:
    head = ["model", "source", "m"] + (["settings"] if show_settings else []) + [
        "d", "V", "MaxCap", "texts", "capacity", "token gain", "CE red. (nats)", "utilisation",
        "bits/vector"]
    has_search = any(r["search_capacity_median"] is not None for r in rows)
    has_paper = any(r["paper_model"] for r in rows)
    if has_search:
        head.append("search: median lossless L")
    if has_paper:
        head += ["paper capacity", "paper gain", "paper CE red."]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cap = "<" + r["lengths"].split()[0] if r["capacity"] is None and r["lengths"] else _fmt(r["capacity"])
        if r["capacity_is_lower_bound"]:
            cap = f"≥ {cap}"
        cells = [r["model"], r["source"], str(r["n_mem"])] + ([r["settings"]] if show_settings else []) + [
            _fmt(r["d"]), _fmt(r["V"]), _fmt(r["max_cap"]), _fmt(r["texts"]), cap,
            _fmt(r["token_gain"]), _fmt(r["ce_reduction_nats"]), _fmt(r["utilisation"], 3),
            _fmt(r["bits_per_vector"])]
        if has_search:
            cells.append(_fmt(r["search_capacity_median"]))
        if has_paper:
            cells += [_fmt(r["paper_capacity"]), _fmt(r["paper_token_gain"]), _fmt(r["paper_ce_reduction"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict], columns=None):
    columns = columns or (list(rows[0]) if rows else ["empty"])
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})


def per_length_rows(groups: list[Group], threshold=THRESHOLD) -> list[dict]:
    out = []
    for g in groups:
        complete = g.complete_lengths()
        for L, rows in g.per_length().items():
            out.append(dict(model=g.model_label, source=g.source_label, n_mem=g.n_mem,
                            settings=g.settings_hash[:8], length=L, runs=len(rows),
                            complete=L in complete,
                            mean_accuracy=_mean([r["accuracy"] for r in rows]),
                            passes=_mean([r["accuracy"] for r in rows]) >= threshold,
                            exact=sum(r["exact"] for r in rows),
                            mean_token_gain=_mean([r["token_gain"] for r in rows]),
                            mean_ce_reduction_nats=_mean([r["info_gain_nats"] for r in rows]),
                            mean_steps=_mean([r["steps"] for r in rows]),
                            rows=" ".join(r["ref"] for r in rows)))
    return out


def search_rows(groups: list[Group]) -> list[dict]:
    out = []
    for g in groups:
        for (sample, seed), cap in g.search_capacities().items():
            probes = [r for r in g.rows if (r["sample"], r["seed"]) == (sample, seed)]
            out.append(dict(model=g.model_label, source=g.source_label, n_mem=g.n_mem, sample=sample,
                            seed=seed, largest_lossless_length=cap, probes=len(probes),
                            probe_lengths=" ".join(str(r["length"]) for r in sorted(probes, key=lambda r: r["length"])),
                            rows=" ".join(r["ref"] for r in probes)))
    return out


def warm_start_rows(groups: list[Group]) -> list[dict]:
    """Steps to the same result with and without --warm-start, per length, where both ran."""
    def identity(g):
        ident = json.loads(g.rows[0]["sweep"] or "{}").get("identity", {})
        return ident
    cold = {}
    for g in groups:
        ident = identity(g)
        if ident and not ident.get("warm_start"):
            cold[(g.model, g.source, g.n_mem, json.dumps(dict(ident, warm_start=True), sort_keys=True))] = g
    out = []
    for g in groups:
        ident = identity(g)
        if not ident.get("warm_start"):
            continue
        twin = cold.get((g.model, g.source, g.n_mem, json.dumps(ident, sort_keys=True)))
        if twin is None:
            continue
        cold_steps = {(r["sample"], r["seed"], r["length"]): r for r in twin.rows}
        by_length = defaultdict(list)
        for r in g.rows:
            c = cold_steps.get((r["sample"], r["seed"], r["length"]))
            if c is not None:
                by_length[r["length"]].append((c, r))
        for L, pairs in sorted(by_length.items()):
            cs, ws = _mean([c["steps"] for c, _ in pairs]), _mean([w["steps"] for _, w in pairs])
            out.append(dict(model=g.model_label, source=g.source_label, n_mem=g.n_mem, length=L,
                            pairs=len(pairs), cold_steps=cs, warm_steps=ws,
                            steps_saved=(cs - ws) / cs if cs else None,
                            cold_accuracy=_mean([c["accuracy"] for c, _ in pairs]),
                            warm_accuracy=_mean([w["accuracy"] for _, w in pairs]),
                            rows=" ".join(f"{c['ref']}/{w['ref']}" for c, w in pairs)))
    return out


# ---------------------------------------------------------------------------------------------
# figures


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _no_data(ax, what):
    ax.text(0.5, 0.5, f"no {what} in the store", ha="center", va="center", transform=ax.transAxes)


def fig1(table: list[dict], out: Path):
    plt = _plt()
    rows = [r for r in table if r["n_mem"] == 1]
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(rows) + 2), 4))
    points = []
    if rows:
        labels = [f"{r['model']}\n{r['source']}" + (f"\n{r['settings']}" if len({x['settings'] for x in rows}) > 1 else "")
                  for r in rows]
        caps = [r["capacity"] or 0 for r in rows]
        gains = [r["token_gain"] or 0 for r in rows]
        x = range(len(rows))
        ax.bar([i - 0.2 for i in x], caps, 0.4, label="capacity (mean acc ≥ 0.99)")
        ax.bar([i + 0.2 for i in x], gains, 0.4, label="token gain (runs with acc ≤ 0.99)")
        for i, r in enumerate(rows):
            if r["paper_capacity"]:
                ax.plot(i - 0.2, r["paper_capacity"], "k_", markersize=18,
                        label="paper capacity" if i == 0 or not any(rr["paper_capacity"] for rr in rows[:i]) else None)
            points.append(dict(model=r["model"], source=r["source"], settings=r["settings"],
                               capacity=r["capacity"], token_gain=r["token_gain"],
                               paper_capacity=r["paper_capacity"], capacity_rows=r["capacity_rows"],
                               gain_rows=r["gain_rows"]))
        ax.set_xticks(list(x), labels, fontsize=8)
        ax.legend(fontsize=8)
    else:
        _no_data(ax, "one-vector runs")
    ax.set_ylabel("tokens")
    ax.set_title("Fig 1: tokens crammed into one vector")
    _save(plt, fig, out / FIGURES[0])
    write_csv(out / "fig1_capacity.csv", points, ["model", "source", "settings", "capacity", "token_gain",
                                                  "paper_capacity", "capacity_rows", "gain_rows"])


def fig3(groups: list[Group], out: Path, threshold=THRESHOLD):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 5))
    points = []
    one = [g for g in groups if g.n_mem == 1]
    for i, g in enumerate(one):
        color = f"C{i % 10}"
        label = f"{g.model_label} / {g.source_label}"
        xs = [r["ce_without_mem"] for r in g.rows]
        ys = [r["ce_with_mem"] for r in g.rows]
        ax.scatter(xs, ys, s=12, color=color, alpha=0.7, label=label)
        lossy = g.gain_rows(threshold)
        b = _mean([r["ce_with_mem"] - r["ce_without_mem"] for r in lossy])
        if b is not None:
            x_hi = max(xs)
            ax.plot([-b, max(x_hi, -b)], [0, max(x_hi, -b) + b], "-", color=color, lw=1,
                    label=f"y = x + b, b = {b:.1f}")
            ax.axvline(-b, color=color, ls="--", lw=0.8)
        for r in g.rows:
            points.append(dict(model=g.model_label, source=g.source_label, ref=r["ref"], length=r["length"],
                               ce_without_mem=r["ce_without_mem"], ce_with_mem=r["ce_with_mem"],
                               accuracy=r["accuracy"], fit_b=b))
    if one:
        ax.legend(fontsize=7)
    else:
        _no_data(ax, "one-vector runs")
    ax.set_xlabel("CE of the text without mem (nats, summed)")
    ax.set_ylabel("CE with mem (nats, summed)")
    ax.set_title("Fig 3: CE with vs without mem\n(solid: y = x + b fit on runs with acc ≤ 0.99; "
                 "dashed: lossless threshold x = -b)", fontsize=9)
    _save(plt, fig, out / FIGURES[1])
    write_csv(out / "fig3_ce.csv", points, ["model", "source", "ref", "length", "ce_without_mem",
                                            "ce_with_mem", "accuracy", "fit_b"])


def fig4(table: list[dict], out: Path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    series = defaultdict(list)
    for r in table:
        if r["capacity"] is not None:
            series[(r["model"], r["source"], r["settings"])].append(r)
    points = []
    for i, ((model, source, settings), rows) in enumerate(sorted(series.items())):
        rows = sorted(rows, key=lambda r: r["n_mem"])
        ax.plot([r["n_mem"] for r in rows], [r["capacity"] for r in rows], "o-", color=f"C{i % 10}",
                label=f"{model} / {source}")
        points += [dict(model=model, source=source, settings=settings, n_mem=r["n_mem"],
                        capacity=r["capacity"], rows=r["capacity_rows"]) for r in rows]
        pub = published(model)
        if pub and pub[0] in PAPER_FIG4 and not source.startswith("random"):
            ref = PAPER_FIG4[pub[0]]
            ax.plot(list(ref), list(ref.values()), "x--", color=f"C{i % 10}", label=f"{pub[0]} (paper)")
    if series:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.legend(fontsize=7)
    else:
        _no_data(ax, "capacities")
    ax.set_xlabel("mem vectors m")
    ax.set_ylabel("capacity (tokens)")
    ax.set_title("Fig 4: capacity vs number of mem vectors")
    _save(plt, fig, out / FIGURES[2])
    write_csv(out / "fig4_capacity_vs_nmem.csv", points, ["model", "source", "settings", "n_mem",
                                                          "capacity", "rows"])


def _save(plt, fig, path: Path):
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fig5(table: list[dict], out: Path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    rows = [r for r in table if r["max_cap"] and (r["capacity"] or r["token_gain"])]
    points = []
    for i, r in enumerate(rows):
        theory = r["max_cap"] * r["n_mem"]
        color = f"C{i % 10}"
        if r["capacity"]:
            ax.scatter(theory, r["capacity"], color=color, marker="o",
                       label=f"{r['model']} / {r['source']} / m={r['n_mem']}")
        if r["token_gain"]:
            ax.scatter(theory, r["token_gain"], color=color, marker="^", facecolors="none")
        points.append(dict(model=r["model"], source=r["source"], n_mem=r["n_mem"], theoretical=theory,
                           capacity=r["capacity"], token_gain=r["token_gain"],
                           capacity_rows=r["capacity_rows"], gain_rows=r["gain_rows"]))
    if rows:
        hi = max(max(p["theoretical"], p["capacity"] or 0, p["token_gain"] or 0) for p in points) * 1.3
        ax.plot([1, hi], [1, hi], "k:", lw=1, label="measured = theoretical")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    else:
        _no_data(ax, "capacities")
    ax.set_xlabel("theoretical capacity MaxCap · m = round(d·16/log2 V) · m")
    ax.set_ylabel("measured tokens (o: capacity, △: token gain)")
    ax.set_title("Fig 5: theoretical vs measured capacity")
    _save(plt, fig, out / FIGURES[3])
    write_csv(out / "fig5_theory_vs_measured.csv", points, ["model", "source", "n_mem", "theoretical",
                                                            "capacity", "token_gain", "capacity_rows",
                                                            "gain_rows"])


# ---------------------------------------------------------------------------------------------
# the whole report


def make_report(dbs, out_dir, threshold: float = THRESHOLD, paper: bool = True) -> dict:
    """Read the DBs (and their shards), write every table and figure into ``out_dir``."""
    rows = store.read_runs(dbs)
    if not rows:
        raise CramfastError(f"{', '.join(map(str, dbs))}: no runs stored yet")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = groups_of(rows)
    table = table_rows(groups, threshold)
    if not paper:
        for r in table:
            r.update(paper_model=None, paper_capacity=None, paper_token_gain=None, paper_ce_reduction=None)
    show_settings = len({r["settings_hash"] for r in table}) > 1
    md = markdown_table(table, show_settings)
    write_csv(out / "table1.csv", table)
    write_csv(out / "per_length.csv", per_length_rows(groups, threshold))
    searches, warm = search_rows(groups), warm_start_rows(groups)
    if searches:
        write_csv(out / "search.csv", searches)
    if warm:
        write_csv(out / "warm_start.csv", warm)
    fig1(table, out)
    fig3(groups, out, threshold)
    fig4(table, out)
    fig5(table, out)
    legend = ("capacity: largest length with mean accuracy ≥ 0.99 over the texts run at every length "
              "(≥: no length failed); token gain and CE reduction: means over runs with accuracy ≤ 0.99; "
              "utilisation = token gain / (MaxCap · m); bits/vector = CE reduction in bits / m. "
              "Inputs of every cell: table1.csv (row refs FILE#id) and per_length.csv.")
    settings_notes = []
    if show_settings:
        for r in table:
            ident = json.loads(next(g.rows[0]["sweep"] for g in groups
                                    if g.settings_hash == r["settings_hash"]) or "{}").get("identity", {})
            settings_notes.append(f"- `{r['settings']}`: {json.dumps(ident, sort_keys=True)}")
    text = ["# cramfast report", "", f"From {len(rows)} runs in {', '.join(map(str, dbs))}.", "",
            "## Table 1", "", md, "", legend, ""]
    if settings_notes:
        text += ["Settings:", ""] + sorted(set(settings_notes)) + [""]
    if searches:
        text += [f"Capacity search: {len(searches)} text(s), per-text results in search.csv.", ""]
    if warm:
        text += ["## Warm start (deviation from the paper: each length starts from the previous "
                 "length's mem)", "", "| model | source | m | L | pairs | cold steps | warm steps | saved |",
                 "|---|---|---|---|---|---|---|---|"]
        text += [f"| {w['model']} | {w['source']} | {w['n_mem']} | {w['length']} | {w['pairs']} | "
                 f"{_fmt(w['cold_steps'])} | {_fmt(w['warm_steps'])} | "
                 f"{_fmt(100 * w['steps_saved'] if w['steps_saved'] is not None else None, 0)}% |" for w in warm]
        text.append("")
    text += ["## Figures", ""] + [f"![{f}]({f})" for f in FIGURES]
    (out / "report.md").write_text("\n".join(text) + "\n")
    return dict(rows=len(rows), groups=len(groups), table=table, markdown=md,
                files=sorted(p.name for p in out.iterdir()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cramfast.report", description=__doc__.split("\n\n")[0])
    p.add_argument("dbs", nargs="+", metavar="DB", help="results file(s) written by cramfast.sweep "
                   "(their .rank*.db shards are merged in)")
    p.add_argument("--out", default="report", help="folder for the tables and figures (default report)")
    p.add_argument("--threshold", type=float, default=THRESHOLD, help="capacity's accuracy threshold")
    p.add_argument("--no-paper", action="store_true", help="leave out the published numbers")
    args = p.parse_args(argv)
    try:
        result = make_report(args.dbs, args.out, args.threshold, paper=not args.no_paper)
    except CramfastError as exc:
        print(f"cramfast.report: error: {exc}", file=sys.stderr)
        return 2
    print(result["markdown"])
    print(f"\ncramfast.report: {result['rows']} runs in {result['groups']} group(s) -> {args.out}/ "
          f"({', '.join(result['files'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
