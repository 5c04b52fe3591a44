"""The rows of each output of ``cramfast.report``, from the groups (cramfast.report.groups):
each group's Table 1 row with the published numbers beside it (cramfast.report.published), the
per-length rows behind a capacity (mean accuracy and the texts lossless, each with its 95%
interval (cramfast.report.intervals), the passages it is over, the CE its texts had to remove),
the capacity search's per-text results, the warm-start comparison, the controlled comparison
and the records of summary.json; and how a row's capacity is labelled."""
from __future__ import annotations

import json
import math
from collections import defaultdict

from cramfast.metrics import CAPACITY_THRESHOLD
from cramfast.presets import PRESETS
from cramfast.report.groups import (
    Group,
    is_lossless,
    mean_of,
    sweep_identity,
    sweep_record,
    text_kind,
)
from cramfast.report.intervals import binomial_interval, mean_interval
from cramfast.report.published import published
from cramfast.settings import RESULT_SETTINGS, preset_settings


def below_smallest(row: dict) -> bool:
    """Whether a Table 1 row's capacity is below the smallest length counted: none passed and
    none is still open."""
    return row["capacity"] is None and bool(row["lengths"]) and not row.get("open_lengths")


def capacity_label(row: dict) -> str:
    """A Table 1 row's capacity as the tables and figures show it: "≥ 80" a lower bound, "<16"
    below the smallest length counted, "(96 open)" the lengths still open above it, "?" where
    none has passed and one is open, "(3/4)" decided over fewer than the group's texts."""
    if row["capacity"] is None:
        label = "<" + row["lengths"].split()[0] if below_smallest(row) else \
            "?" if row.get("open_lengths") else "–"
    else:
        label = ("≥ " if row["capacity_is_lower_bound"] else "") + str(row["capacity"])
        passages = row.get("capacity_passages")
        if passages is not None and passages < row["texts"]:
            label += f" ({passages}/{row['texts']})"
    if row.get("open_lengths"):
        label += f" ({', '.join(row['open_lengths'].split())} open)"
    return label


def table_rows(groups: list[Group], threshold=CAPACITY_THRESHOLD) -> list[dict]:
    """One Table 1 row per group, with the refs of the rows behind its capacity and gain."""
    out = []
    for g in groups:
        d, V, max_cap = g.info("hidden_size"), g.info("vocab_size"), g.info("max_cap")
        cap, lower_bound, cap_refs = g.capacity(threshold)
        counted = g.capacity_lengths()
        gain_rows = g.gain_rows(threshold)
        gain = mean_of([r["token_gain"] for r in gain_rows])
        ce_red = mean_of([r["info_gain_nats"] for r in gain_rows])
        theory = max_cap * g.n_mem if max_cap else None
        searched = sorted(g.search_capacities().values())
        pub = published(g.model_label)
        row = dict(
            model=g.model_label, source=g.source_label, n_mem=g.n_mem, settings=settings_label(g),
            preset=_one([sweep_record(r).get("preset") for r in g.rows]),
            d=d, V=V, max_cap=max_cap, texts=len(g.texts), runs=len(g.rows),
            lengths=" ".join(map(str, counted)),
            capacity=cap, capacity_is_lower_bound=lower_bound,
            capacity_passages=len(counted[cap]) if cap is not None else None,
            open_lengths=" ".join(map(str, g.open_lengths(threshold, above=cap))),
            min_passages=min(map(len, counted.values()), default=None),
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


def length_figures(rows) -> dict:
    """What one length's rows say, each with its 95% interval (cramfast.report.intervals): the
    mean accuracy (``mean``, ``mean_ci95``: Student's t, None below 2 rows) and the texts
    lossless (``lossless``, ``lossless_ci95``: Clopper-Pearson, None without rows)."""
    accuracies = [r["accuracy"] for r in rows]
    lossless = sum(map(is_lossless, rows))
    return dict(mean=mean_of(accuracies), mean_ci95=mean_interval(accuracies),
                lossless=lossless, lossless_ci95=binomial_interval(lossless, len(rows)))


def ce_figures(rows) -> dict:
    """What one length's texts had to remove and what a mem removed there, in nats (CE summed
    over a text's predicted tokens, the first token given): the CE without mem of the texts
    lossless and of those short of it (min and max of each: where the lossless ones stay below
    what the others start from, the vector holds a number of nats rather than of tokens), the
    most CE one mem removed, and the mean CE without mem per predicted token (how surprising
    the text kind is to the model). None where no row gives it."""
    def span(values):
        values = [v for v in values if v is not None]
        return (min(values), max(values)) if values else (None, None)
    lossless = span(r["ce_without_mem"] for r in rows if is_lossless(r))
    short = span(r["ce_without_mem"] for r in rows if not is_lossless(r))
    per_token = [r["ce_without_mem"] / (r["length"] - 1) for r in rows
                 if r["ce_without_mem"] is not None and r["length"] > 1]
    return dict(ce_without_mem_lossless_min_nats=lossless[0],
                ce_without_mem_lossless_max_nats=lossless[1],
                ce_without_mem_short_min_nats=short[0], ce_without_mem_short_max_nats=short[1],
                ce_removed_max_nats=span(r["info_gain_nats"] for r in rows)[1],
                mean_ce_without_mem_per_token_nats=mean_of(per_token))


def _listed(interval):
    """An interval as summary.json holds it: [low, high], or None."""
    return list(interval) if interval else None


def per_length_rows(groups: list[Group], threshold=CAPACITY_THRESHOLD) -> list[dict]:
    """Per group and length: what the capacity is decided from (the mean over the texts stored there
    with its 95% interval, the texts lossless there with theirs, the interval the mean over the
    group's texts will end in, the length's verdict; verdict None at a length not counted for the
    capacity)."""
    out = []
    for g in groups:
        complete, counted = g.complete_lengths(), g.capacity_lengths()
        verdicts, stored, label = g.verdicts(threshold), g.per_length(), settings_label(g)
        for L in sorted(set(stored) | set(counted)):
            rows = counted[L] if L in counted else stored[L]
            figures = length_figures(rows)
            interval = figures["mean_ci95"] or (None, None)
            share = figures["lossless_ci95"] or (None, None)
            low, high = g.mean_bounds(L, rows)
            out.append(dict(model=g.model_label, source=g.source_label, n_mem=g.n_mem,
                            settings=label, length=L, runs=len(rows),
                            passages=len(rows), texts=len(g.expected(L, rows)),
                            complete=L in complete, counted=L in counted,
                            mean_accuracy=figures["mean"],
                            ci95_low=interval[0], ci95_high=interval[1],
                            mean_will_end_low=low, mean_will_end_high=high,
                            verdict=verdicts.get(L),
                            lossless=figures["lossless"], lossless_ci95_low=share[0],
                            lossless_ci95_high=share[1],
                            exact=sum(r["exact"] for r in rows),
                            mean_token_gain=mean_of([r["token_gain"] for r in rows]),
                            mean_ce_reduction_nats=mean_of([r["info_gain_nats"] for r in rows]),
                            **ce_figures(rows),
                            mean_steps=mean_of([r["steps"] for r in rows]),
                            rows=" ".join(r["ref"] for r in rows)))
    return out


def search_rows(groups: list[Group]) -> list[dict]:
    """Per text that a --search probed: its largest lossless length and the probes."""
    out = []
    for g in groups:
        for (sample, seed), cap in g.search_capacities().items():
            probes = [r for r in g.rows if (r["sample"], r["seed"]) == (sample, seed)]
            out.append(dict(model=g.model_label, source=g.source_label, n_mem=g.n_mem,
                            sample=sample,
                            seed=seed, largest_lossless_length=cap, probes=len(probes),
                            probe_lengths=" ".join(str(r["length"]) for r in
                                                   sorted(probes, key=lambda r: r["length"])),
                            rows=" ".join(r["ref"] for r in probes)))
    return out


def warm_start_rows(groups: list[Group]) -> list[dict]:
    """Steps to the same result with and without --warm-start, per length, where both ran."""
    cold = {}
    for g in groups:
        ident = sweep_identity(g.rows[0])
        if ident and not ident.get("warm_start"):
            cold[(g.model, g.source, g.n_mem, json.dumps(dict(ident, warm_start=True),
                                                         sort_keys=True))] = g
    out = []
    for g in groups:
        ident = sweep_identity(g.rows[0])
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
            cs = mean_of([c["steps"] for c, _ in pairs])
            ws = mean_of([w["steps"] for _, w in pairs])
            out.append(dict(model=g.model_label, source=g.source_label, n_mem=g.n_mem, length=L,
                            pairs=len(pairs), cold_steps=cs, warm_steps=ws,
                            steps_saved=(cs - ws) / cs if cs else None,
                            cold_accuracy=mean_of([c["accuracy"] for c, _ in pairs]),
                            warm_accuracy=mean_of([w["accuracy"] for _, w in pairs]),
                            rows=" ".join(f"{c['ref']}/{w['ref']}" for c, w in pairs)))
    return out


def overrides(g: Group) -> dict:
    """The result settings a group ran with that differ from its preset's as it is now (what
    its run was given with --set, --max-steps, ...), from the sweep's record; {} without one."""
    record = sweep_record(g.rows[0])
    preset, optim = record.get("preset"), record.get("optim")
    if preset not in PRESETS or not optim:
        return {}
    own = preset_settings(preset)
    return {k: optim[k] for k in RESULT_SETTINGS if k in optim and optim[k] != own.get(k)}


def settings_label(g: Group) -> str:
    """What a group's settings are, to read in a table: its preset, its budget and the settings
    changed from the preset (from the sweep's record), then the first 8 characters of its
    settings hash, e.g. "fast, 5000 steps [a735f528]"; only the hash for rows no sweep wrote."""
    record = sweep_record(g.rows[0])
    budget = (record.get("optim") or {}).get("max_steps")
    if record.get("preset") is None and budget is None:
        return g.settings_hash[:8]
    changed = {k: v for k, v in overrides(g).items() if k != "max_steps"}
    what = ", ".join([record.get("preset") or "?", f"{budget or '?'} steps"]
                     + [f"{k}={v}" for k, v in sorted(changed.items())])
    return f"{what} [{g.settings_hash[:8]}]"


def controlled_rows(groups: list[Group], threshold=CAPACITY_THRESHOLD) -> list[dict]:
    """The controlled comparison: per model and n_mem that has more than one group (other
    settings or another text kind over the same model), one row per group with what sets it
    apart (text kind, preset, the settings changed from the preset), its capacity and the mean
    accuracy at each length it was decided from. Rows of one model and m are sorted by text
    kind, preset and changes, so that one factor's rows sit together."""
    by_model = defaultdict(list)
    for g in groups:
        by_model[(g.model_label, g.n_mem)].append(g)
    out = []
    for (model, n_mem), members in sorted(by_model.items()):
        if len(members) < 2:
            continue
        rows = []
        for g in members:
            cap, lower_bound, _ = g.capacity(threshold)
            counted = g.capacity_lengths()
            changed = overrides(g)
            record = sweep_record(g.rows[0])
            max_steps = _one([sweep_record(r).get("optim", {}).get("max_steps") for r in g.rows])
            gains = g.gain_rows(threshold)
            rows.append(dict(
                model=model, n_mem=n_mem, text_kind=text_kind(g.source), source=g.source_label,
                preset=record.get("preset"), max_steps=max_steps,
                changed=", ".join(f"{k}={v}" for k, v in sorted(changed.items()) if
                                  k != "max_steps"),
                texts=len(g.texts), capacity=cap, capacity_is_lower_bound=lower_bound,
                capacity_passages=len(counted[cap]) if cap is not None else None,
                open_lengths=" ".join(map(str, g.open_lengths(threshold, above=cap))),
                lengths=" ".join(map(str, counted)),
                mean_accuracy=" ".join(
                    f"{L}:{mean_of([r['accuracy'] for r in rs]):.3f}" + (
                        f"({len(rs)})" if len(rs) < len(g.texts) else "")
                    for L, rs in counted.items() if rs),
                token_gain=mean_of([r["token_gain"] for r in gains]),
                settings_hash=g.settings_hash))
        out += sorted(rows, key=_controlled_order)
    return out


def _controlled_order(r: dict):
    """Text kind, preset, the larger budget first, then the changed settings."""
    steps = r["max_steps"] if isinstance(r["max_steps"], int) else 0
    return r["text_kind"], str(r["preset"]), -steps, r["changed"]


def _one(values):
    """The value all of ``values`` share (None ignored); several: sorted and joined by ","."""
    found = {v for v in values if v is not None}
    if len(found) > 1:
        return ",".join(sorted(map(str, found)))
    return found.pop() if found else None


def search_summary(g: Group) -> dict | None:
    """The per-text search capacity of a group's --search texts: their count, median, mean,
    min and max, how many are lower bounds (lossless up to the search's limit), and per text."""
    results = g.search_results()
    if not results:
        return None
    caps = sorted(cap for cap, _ in results.values())
    return dict(texts=len(caps), median=caps[len(caps) // 2], mean=sum(caps) / len(caps),
                min=caps[0], max=caps[-1],
                lower_bound_texts=sum(bound for _, bound in results.values()),
                per_text=[dict(sample=sample, seed=seed, largest_lossless_length=cap,
                               lower_bound=bound)
                          for (sample, seed), (cap, bound) in results.items()])


def summary_records(groups: list[Group], threshold=CAPACITY_THRESHOLD) -> list[dict]:
    """One record per group for summary.json: the paper's capacity and what it is decided from
    (passages, mean accuracy and texts lossless per length, each with its 95% interval; each
    length's verdict and the interval its mean over all its texts will end in; the open lengths
    above the capacity),
    the per-text search capacity where the group has --search rows, and the settings the rows
    ran with (preset and max_steps from the sweep's record, column ``sweep``, else the result's
    own settings, ``settings``; settings_changed: those that differ from the preset's,
    overrides())."""
    out = []
    for g in groups:
        cap, lower_bound, _ = g.capacity(threshold)
        counted = g.capacity_lengths()
        records = [sweep_record(r) for r in g.rows]
        own = [json.loads(r.get("settings") or "{}") for r in g.rows]
        max_steps = _one([rec.get("optim", {}).get("max_steps") for rec in records])
        if max_steps is None:   # rows of another writer than the sweep: the result's settings
            max_steps = _one([s.get("max_steps") for s in own])
        passages = {str(L): len(rows) for L, rows in counted.items()}
        bounds = {str(L): list(g.mean_bounds(L, rows)) for L, rows in counted.items()}
        open_lengths = g.open_lengths(threshold, above=cap)
        note = None
        if not counted:
            note = "no length to decide it at: only --search probes in the store"
        elif cap is None and not open_lengths:
            note = f"below the smallest length tried ({min(counted)}): no length reaches " \
                   f"{threshold:g}"
        elif cap is None:
            note = "undecided: no length has passed yet"
        elif lower_bound and cap == max(counted):
            note = f"lower bound: {cap} is the largest length tried and none failed"
        if open_lengths:
            note = (note + "; " if note else "") + ", ".join(
                f"{L} still open ({n} of its {len(g.expected(L, counted[L]))} texts stored, the "
                f"mean will end in {bounds[str(L)][0]:.4f}–{bounds[str(L)][1]:.4f})"
                for L, n in open_lengths.items())
        if cap is not None and len(counted[cap]) < len(g.texts):
            note = (note + "; " if note else "") + \
                f"decided over {len(counted[cap])} of the group's {len(g.texts)} texts"
        figures = {str(L): length_figures(rows) for L, rows in counted.items()}
        gain_rows = g.gain_rows(threshold)
        out.append(dict(
            model=g.model_label, model_id=g.model, source=g.source_label, source_id=g.source,
            text_kind=text_kind(g.source), preset=_one([rec.get("preset") for rec in records]),
            max_steps=max_steps, settings_changed=overrides(g), settings_hash=g.settings_hash,
            n_mem=g.n_mem,
            d=g.info("hidden_size"), V=g.info("vocab_size"), max_cap=g.info("max_cap"),
            texts=len(g.texts), runs=len(g.rows),
            capacity=cap, capacity_is_lower_bound=lower_bound, capacity_note=note,
            open_lengths=list(open_lengths),
            lengths=list(counted), passages=passages,
            min_passages=min(passages.values(), default=None),
            mean_accuracy={L: f["mean"] for L, f in figures.items()},
            mean_accuracy_ci95={L: _listed(f["mean_ci95"]) for L, f in figures.items()},
            mean_accuracy_will_end_in=bounds,
            lossless={L: f["lossless"] for L, f in figures.items()},
            lossless_ci95={L: _listed(f["lossless_ci95"]) for L, f in figures.items()},
            verdicts={str(L): v for L, v in g.verdicts(threshold).items()},
            token_gain=mean_of([r["token_gain"] for r in gain_rows]),
            ce_reduction_nats=mean_of([r["info_gain_nats"] for r in gain_rows]),
            gain_runs=len(gain_rows), search=search_summary(g)))
    return out
