"""The figures of ``cramfast.report``, each a PNG beside a CSV of its plotted points (with the
refs "FILE#id" of the rows behind each): Fig 1 capacity and token gain per model, Fig 3 CE with vs
without mem, Fig 4 capacity vs number of mem vectors, Fig 5 theoretical vs measured capacity."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from cramfast.metrics import CAPACITY_THRESHOLD
from cramfast.report.groups import Group, is_lossless, mean_of
from cramfast.report.published import PAPER_FIG4
from cramfast.report.records import below_smallest, capacity_label, settings_label
from cramfast.report.tables import write_csv

FIGURES = ("fig1_capacity.png", "fig3_ce.png", "fig4_capacity_vs_nmem.png",
           "fig5_theory_vs_measured.png")


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _no_data(ax, what):
    ax.text(0.5, 0.5, f"no {what} in the store", ha="center", va="center", transform=ax.transAxes)


def _save(plt, fig, path: Path, points: list[dict], columns: list[str]):
    """The figure as ``path`` (PNG) and its plotted points beside it (the same name, .csv)."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    write_csv(path.with_suffix(".csv"), points, columns)


def fig1(table: list[dict], out: Path, threshold=CAPACITY_THRESHOLD):
    plt = _plt()
    rows = [r for r in table if r["n_mem"] == 1]
    several = len({x["settings"] for x in rows}) > 1
    # a bar pair's width in inches: wide enough for its tick label, the settings on two lines
    fig, ax = plt.subplots(figsize=(max(5, (2.0 if several else 1.4) * len(rows) + 3), 4))
    points = []
    if rows:
        labels = ["\n".join([r["model"], r["source"]]
                             + ([r["settings"].replace(" [", "\n[")] if several else []))
                  for r in rows]
        caps = [r["capacity"] or 0 for r in rows]
        gains = [r["token_gain"] or 0 for r in rows]
        x = range(len(rows))
        bars = ax.bar([i - 0.2 for i in x], caps, 0.4, label=f"capacity (mean acc ≥ {threshold:g})")
        ax.bar_label(bars, [capacity_label(r) for r in rows], fontsize=8)
        below = [(i, int(r["lengths"].split()[0])) for i, r in enumerate(rows)
                 if below_smallest(r)]
        if below:   # below the smallest length tried: an open bar up to that length
            ax.bar([i - 0.2 for i, _ in below], [L for _, L in below], 0.4, fill=False,
                   hatch="//", edgecolor="C0", label="capacity below the smallest length tried")
        gain_bars = ax.bar([i + 0.2 for i in x], gains, 0.4,
                           label=f"token gain (runs with acc ≤ {threshold:g})")
        ax.bar_label(gain_bars, [f"{g:.1f}" if g else "" for g in gains], fontsize=8)
        for i, r in enumerate(rows):
            if r["paper_capacity"]:
                ax.plot(i - 0.2, r["paper_capacity"], "k_", markersize=18,
                        label=None if i and any(rr["paper_capacity"] for rr in rows[:i])
                        else "paper capacity")
            points.append(dict(model=r["model"], source=r["source"], settings=r["settings"],
                               capacity=r["capacity"], token_gain=r["token_gain"],
                               paper_capacity=r["paper_capacity"], capacity_rows=r["capacity_rows"],
                               gain_rows=r["gain_rows"]))
        ax.set_xticks(list(x), labels, fontsize=8)
        tallest = max(caps + gains + [L for _, L in below]
                      + [r["paper_capacity"] or 0 for r in rows])
        ax.set_ylim(0, 1.15 * tallest or 1)
        # outside the axes: inside, the legend covered the top of the tallest bar
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        _no_data(ax, "one-vector runs")
    ax.set_ylabel("tokens")
    ax.set_title("Fig 1: tokens crammed into one vector")
    _save(plt, fig, out / FIGURES[0], points, ["model", "source", "settings", "capacity",
                                               "token_gain",
                                               "paper_capacity", "capacity_rows", "gain_rows"])


def fig3(groups: list[Group], out: Path, threshold=CAPACITY_THRESHOLD):
    """CE with vs without mem per one-vector run, filled where the text came back (lossless),
    open where it fell short; per group the paper's fit y = x + b on its runs with accuracy <=
    threshold, whose x = -b is the CE a vector removes."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 5))
    points = []
    one = [g for g in groups if g.n_mem == 1]
    several = len({g.settings_hash for g in one}) > 1
    for i, g in enumerate(one):
        color = f"C{i % 10}"
        settings = settings_label(g)
        label = f"{g.model_label} / {g.source_label}" + (f" / {settings}" if several else "")
        xs = [r["ce_without_mem"] for r in g.rows]
        ys = [r["ce_with_mem"] for r in g.rows]
        came_back = [is_lossless(r) for r in g.rows]
        ax.scatter([x for x, ok in zip(xs, came_back) if ok],
                   [y for y, ok in zip(ys, came_back) if ok], s=12, color=color, alpha=0.7,
                   label=label)
        ax.scatter([x for x, ok in zip(xs, came_back) if not ok],
                   [y for y, ok in zip(ys, came_back) if not ok], s=14, facecolors="none",
                   edgecolors=color, alpha=0.9)
        lossy = g.gain_rows(threshold)
        b = mean_of([r["ce_with_mem"] - r["ce_without_mem"] for r in lossy])
        if b is not None:
            x_hi = max(xs)
            ax.plot([-b, max(x_hi, -b)], [0, max(x_hi, -b) + b], "-", color=color, lw=1,
                    label=f"y = x + b, b = {b:.1f}")
            ax.axvline(-b, color=color, ls="--", lw=0.8)
        for r, ok in zip(g.rows, came_back):
            points.append(dict(model=g.model_label, source=g.source_label, settings=settings,
                               ref=r["ref"], length=r["length"],
                               ce_without_mem=r["ce_without_mem"], ce_with_mem=r["ce_with_mem"],
                               accuracy=r["accuracy"], lossless=ok, fit_b=b))
    if one:
        ax.legend(fontsize=7)
    else:
        _no_data(ax, "one-vector runs")
    ax.set_xlabel("CE of the text without mem (nats, summed)")
    ax.set_ylabel("CE with mem (nats, summed)")
    ax.set_title(f"Fig 3: CE with vs without mem (filled: lossless, open: short of it)\n"
                 f"(solid: y = x + b fit on runs with acc ≤ {threshold:g}; "
                 "dashed: lossless threshold x = -b)", fontsize=9)
    _save(plt, fig, out / FIGURES[1], points, ["model", "source", "settings", "ref", "length",
                                               "ce_without_mem", "ce_with_mem", "accuracy",
                                               "lossless", "fit_b"])


def fig4(table: list[dict], out: Path):
    """Capacity vs m per (model, source, settings), a capacity that is a lower bound (no longer
    length failed) drawn as an open triangle pointing up; beside them the paper's PG-19 curves
    (Pythia-160M, Llama-3.2-1B), dashed, wherever a prose series is drawn."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    series = defaultdict(list)
    for r in table:
        if r["capacity"] is not None:
            series[(r["model"], r["source"], r["settings"])].append(r)
    several = len({settings for _, _, settings in series}) > 1
    points = []
    for i, ((model, source, settings), rows) in enumerate(sorted(series.items())):
        rows = sorted(rows, key=lambda r: r["n_mem"])
        color = f"C{i % 10}"
        tag = rows[0].get("preset") or (settings if several else None)
        label = f"{model} / {source}" + (f" / {tag}" if tag else "")
        ax.plot([r["n_mem"] for r in rows], [r["capacity"] for r in rows], "-", color=color,
                label=label)
        for r in rows:
            bound = r["capacity_is_lower_bound"]
            ax.plot(r["n_mem"], r["capacity"], "^" if bound else "o", color=color,
                    markerfacecolor="none" if bound else color, markersize=7)
            ax.annotate(capacity_label(r), (r["n_mem"], r["capacity"]),
                        textcoords="offset points", xytext=(6, -10), fontsize=7, color=color)
        points += [dict(model=model, source=source, settings=settings, n_mem=r["n_mem"],
                        capacity=r["capacity"], lower_bound=r["capacity_is_lower_bound"],
                        rows=r["capacity_rows"]) for r in rows]
    if any(not source.startswith("random") for _, source, _ in series):
        for j, (name, ref) in enumerate(PAPER_FIG4.items()):
            ax.plot(list(ref), list(ref.values()), "x--", color=f"{0.25 + 0.3 * j:.2f}",
                    label=f"{name} (paper, PG-19)")
    if series:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.legend(fontsize=7)
    else:
        _no_data(ax, "capacities")
    ax.set(xlabel="mem vectors m", ylabel="capacity (tokens)",
           title="Fig 4: capacity vs number of mem vectors")
    _save(plt, fig, out / FIGURES[2], points, ["model", "source", "settings", "n_mem", "capacity",
                                               "lower_bound", "rows"])


def fig5(table: list[dict], out: Path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    rows = [r for r in table if r["max_cap"] and (r["capacity"] or r["token_gain"])]
    several = len({r["settings"] for r in rows}) > 1
    points = []
    for i, r in enumerate(rows):
        theory = r["max_cap"] * r["n_mem"]
        color = f"C{i % 10}"
        label = f"{r['model']} / {r['source']} / m={r['n_mem']}" + (
            f" / {r['settings']}" if several else "")
        if r["capacity"]:
            ax.scatter(theory, r["capacity"], color=color, marker="o", label=label)
        if r["token_gain"]:     # the legend names the group here where it has no capacity
            ax.scatter(theory, r["token_gain"], color=color, marker="^", facecolors="none",
                       label=None if r["capacity"] else label)
        points.append(dict(model=r["model"], source=r["source"], settings=r["settings"],
                           n_mem=r["n_mem"], theoretical=theory,
                           capacity=r["capacity"], token_gain=r["token_gain"],
                           capacity_rows=r["capacity_rows"], gain_rows=r["gain_rows"]))
    if rows:
        hi = max(max(p["theoretical"], p["capacity"] or 0,
                     p["token_gain"] or 0) for p in points) * 1.3
        ax.plot([1, hi], [1, hi], "k:", lw=1, label="measured = theoretical")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    else:
        _no_data(ax, "capacities")
    ax.set(xlabel="theoretical capacity MaxCap · m = round(d·16/log2 V) · m",
           ylabel="measured tokens (o: capacity, △: token gain)",
           title="Fig 5: theoretical vs measured capacity")
    _save(plt, fig, out / FIGURES[3], points, ["model", "source", "settings", "n_mem",
                                               "theoretical", "capacity", "token_gain",
                                               "capacity_rows", "gain_rows"])
