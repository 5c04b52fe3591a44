"""The numbers of ``cramfast.report``: the store's rows grouped by (model, source, n_mem,
settings), each group's Table 1 row (the paper's definitions, see cramfast.report), the per-length
rows behind a capacity, the capacity search's per-text results and the warm-start comparison, and
the published numbers of Kuratov et al. 2025 to put beside models whose name matches."""
from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field

from cramfast.metrics import CAPACITY_THRESHOLD
from cramfast.metrics import capacity as paper_capacity

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

    def capacity(self, threshold=CAPACITY_THRESHOLD):
        lengths = self.complete_lengths()
        cap = paper_capacity([(L, r["accuracy"]) for L, rows in lengths.items() for r in rows],
                             threshold)
        lower_bound = cap is not None and cap == max(lengths)
        refs = [r["ref"] for r in lengths.get(cap, [])]
        return cap, lower_bound, refs

    def gain_rows(self, threshold=CAPACITY_THRESHOLD):
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


def sweep_identity(row) -> dict:
    """What a row's results depend on, from the sweep's record (column ``sweep``)."""
    return json.loads(row["sweep"] or "{}").get("identity", {})


def groups_of(rows) -> list[Group]:
    groups: dict[tuple, Group] = {}
    for r in rows:
        k = (r["model"], r["source"], r["n_mem"], r["settings_hash"])
        if k not in groups:
            groups[k] = Group(r["model"], r["model_label"] or r["model"], r["source"],
                              r["source_label"] or r["source"], r["n_mem"], r["settings_hash"])
        groups[k].rows.append(r)
    return sorted(groups.values(), key=lambda g: (g.model_label, g.source_label, g.n_mem,
                                                  g.settings_hash))


def mean_of(values):
    """The mean of the values that are not None; None if there are none."""
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def table_rows(groups: list[Group], threshold=CAPACITY_THRESHOLD) -> list[dict]:
    """One Table 1 row per group, with the refs of the rows behind its capacity and gain."""
    out = []
    for g in groups:
        d, V, max_cap = g.info("hidden_size"), g.info("vocab_size"), g.info("max_cap")
        cap, lower_bound, cap_refs = g.capacity(threshold)
        gain_rows = g.gain_rows(threshold)
        gain = mean_of([r["token_gain"] for r in gain_rows])
        ce_red = mean_of([r["info_gain_nats"] for r in gain_rows])
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


def per_length_rows(groups: list[Group], threshold=CAPACITY_THRESHOLD) -> list[dict]:
    """Per group and length: what the capacity is decided from."""
    out = []
    for g in groups:
        complete = g.complete_lengths()
        for L, rows in g.per_length().items():
            out.append(dict(model=g.model_label, source=g.source_label, n_mem=g.n_mem,
                            settings=g.settings_hash[:8], length=L, runs=len(rows),
                            complete=L in complete,
                            mean_accuracy=mean_of([r["accuracy"] for r in rows]),
                            passes=mean_of([r["accuracy"] for r in rows]) >= threshold,
                            exact=sum(r["exact"] for r in rows),
                            mean_token_gain=mean_of([r["token_gain"] for r in rows]),
                            mean_ce_reduction_nats=mean_of([r["info_gain_nats"] for r in rows]),
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
