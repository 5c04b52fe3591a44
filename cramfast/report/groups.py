"""The store's rows grouped by (model, source, n_mem, settings), and what a group decides: its
texts, the lengths its capacity is decided at, each length's verdict (the paper's definitions, see
cramfast.report), the texts in flight attached to it, and the per-text search's results. The
outputs written from the groups are in cramfast.report.records."""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field

from cramfast.engine.checkpoint import progress, unpack
from cramfast.metrics import CAPACITY_THRESHOLD
from cramfast.settings import StopReason
from cramfast.sweep.grid import CLIMB_PATIENCE, PAPER_LENGTHS, climb_below, mean_at_most


@dataclass
class Group:
    model: str
    model_label: str
    source: str
    source_label: str
    n_mem: int
    settings_hash: str
    rows: list = field(default_factory=list)
    # (sample, seed, length) -> the floor under the result of a text of the group in flight
    # there, its checkpoint labelled with its job (attach_in_flight)
    in_flight: dict = field(default_factory=dict)

    @property
    def random(self) -> bool:
        return self.source.startswith("random:")

    def info(self, key):
        return next((r[key] for r in self.rows if r.get(key) is not None), None)

    @property
    def texts(self) -> set:
        """(sample, seed) of every text the group has a row of or has in flight."""
        return {(r["sample"], r["seed"]) for r in self.rows} | {
            (sample, seed) for sample, seed, _ in self.in_flight}

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

    def grid_texts(self) -> set:
        """(sample, seed) of the texts a grid mode (grid, warm start, climb) runs: those with a
        row of their own that no --search made, and those in flight with no --search row (a
        label does not say which mode a text is of: one that is a search's counts here until
        its first probe lands, which errs towards open)."""
        searched = {(r["sample"], r["seed"]) for r in self.rows if r.get("origin") == "search"}
        return {(r["sample"], r["seed"]) for r in self.rows if r.get("origin") != "search"} | {
            (sample, seed) for sample, seed, _ in self.in_flight
            if (sample, seed) not in searched}

    def capacity_lengths(self) -> dict[int, list]:
        """The lengths the paper's capacity is decided at ("on the grid"), with the rows it is
        decided from: every length a grid mode ran or is running (a length whose texts are
        all in flight has no rows yet), over the rows of its texts (grid_texts), and a length
        of the paper's grid at which --search probes reached every text (its first, doubling
        probes). Other lengths only a search reached, and a search's rows of other texts at a
        grid mode's length, are left out: it sends there just the texts lossless below them,
        so their mean is biased upwards, and its bisection points are off the grid."""
        grid, texts = self.grid_texts(), {(r["sample"], r["seed"]) for r in self.rows}
        lengths = {}
        for L, rows in self.per_length().items():
            if any(r.get("origin") != "search" for r in rows):
                lengths[L] = [r for r in rows if (r["sample"], r["seed"]) in grid]
            elif L in PAPER_LENGTHS and {(r["sample"], r["seed"]) for r in rows} == texts:
                lengths[L] = rows
        lengths.update({L: [] for sample, seed, L in self.in_flight
                        if L not in lengths and (sample, seed) in grid})
        return dict(sorted(lengths.items()))

    def climb_stopped(self, seed: int) -> int | None:
        """The length after which this seed's climb stopped: the second of CLIMB_PATIENCE
        consecutive lengths (of its climb rows, in order) whose mean accuracy is below the
        climb's threshold, decided as the climb decides them (every one of its grid texts
        stored there, or fewer that keep the mean below it: grid.mean_at_most); None while its
        rows show no stop."""
        texts = {t for t in self.grid_texts() if t[1] == seed}
        by_length = defaultdict(list)
        for r in self.rows:
            if r["seed"] == seed and r.get("origin") == "climb":
                by_length[r["length"]].append(r)
        below = 0
        for L, rows in sorted(by_length.items()):
            stored = {(r["sample"], r["seed"]): r["accuracy"] for r in rows}
            high = mean_at_most(list(stored.values()), len(texts))
            if stored.keys() != texts and high >= CAPACITY_THRESHOLD:
                return None                 # a length still open: no stop known past it
            below = climb_below(below, high)
            if below >= CLIMB_PATIENCE:
                return L
        return None

    def expected(self, length: int, rows: list) -> set:
        """The texts the mean at ``length`` is over: at a length only --search probes reached,
        the texts stored there (every text); else the grid texts of every seed but those whose
        climb stopped below ``length`` with none of their texts there (climb_stopped)."""
        if rows and all(r.get("origin") == "search" for r in rows):
            return {(r["sample"], r["seed"]) for r in rows}
        present = {r["seed"] for r in rows} | {seed for _, seed, at in self.in_flight
                                               if at == length}
        grid = self.grid_texts()
        stops = {seed: self.climb_stopped(seed) for seed in {t[1] for t in grid} - present}
        return {t for t in grid if stops.get(t[1]) is None or stops[t[1]] >= length}

    def mean_bounds(self, length: int, rows: list) -> tuple[float, float]:
        """(low, high): where the mean accuracy at ``length`` over its texts (expected) will
        end, from the ``rows`` stored there (capacity_lengths'), whatever the texts not stored
        there yet do: each of them counted at the floor under its result if it is in flight
        there (in_flight), else at 0, for the low end, and at 1 for the high end. One number
        (low == high, the paper's mean) at a length every text has reached."""
        missing = self.expected(length, rows) - {(r["sample"], r["seed"]) for r in rows}
        floor = sum(self.in_flight.get((*text, length), 0.0) for text in missing)
        accuracies, n = [r["accuracy"] for r in rows], len(rows) + len(missing)
        return (sum(accuracies) + floor) / n, mean_at_most(accuracies, n)

    def verdicts(self, threshold=CAPACITY_THRESHOLD) -> dict[int, str]:
        """Per length of capacity_lengths: "pass" (its mean over its texts, expected, is
        >= threshold whatever the texts not stored there yet do: mean_bounds), "fail" (it is
        below threshold whatever they do) or "open". At a length every text has reached: the
        paper's test of its mean (cramfast.metrics.capacity's)."""
        out = {}
        for L, rows in self.capacity_lengths().items():
            low, high = self.mean_bounds(L, rows)
            out[L] = "pass" if low >= threshold else "fail" if high < threshold else "open"
        return out

    def capacity(self, threshold=CAPACITY_THRESHOLD):
        """(capacity, lower bound?, refs of its rows): the paper's capacity, the largest length
        that passes (verdicts: its mean over the group's texts is >= threshold, decided); a lower
        bound when it is the largest length counted (no longer one failed) or a longer length is
        still open. None when no length passes (below the smallest, or every passing candidate
        still open: open_lengths)."""
        lengths, verdicts = self.capacity_lengths(), self.verdicts(threshold)
        cap = max((L for L, v in verdicts.items() if v == "pass"), default=None)
        lower_bound = cap is not None and (cap == max(lengths) or bool(
            self.open_lengths(threshold, above=cap)))
        refs = [r["ref"] for r in lengths.get(cap, [])]
        return cap, lower_bound, refs

    def open_lengths(self, threshold=CAPACITY_THRESHOLD, above: int | None = None) -> dict:
        """Length -> texts stored there, for the lengths still open (verdicts) longer than
        ``above``: the texts still to run there can still lift the capacity to them."""
        lengths = self.capacity_lengths()
        return {length: len({(r["sample"], r["seed"]) for r in lengths[length]})
                for length, v in self.verdicts(threshold).items()
                if v == "open" and (above is None or length > above)}

    def gain_rows(self, threshold=CAPACITY_THRESHOLD):
        return [r for r in self.rows if r["accuracy"] <= threshold]

    def search_capacities(self) -> dict:
        """(sample, seed) -> largest lossless length, for texts that a --search probed."""
        return {text: cap for text, (cap, _) in self.search_results().items()}

    def search_results(self) -> dict:
        """(sample, seed) -> (largest lossless length, whether it is a lower bound: no longer
        probe of the text was lossy, so the search stopped at its limit), for texts that a
        --search probed; 1 when not even its first probe was lossless (the search's start)."""
        searched = {(r["sample"], r["seed"]) for r in self.rows if r.get("origin") == "search"}
        out = {}
        for text in sorted(searched):
            rows = [r for r in self.rows if (r["sample"], r["seed"]) == text]
            cap = max((r["length"] for r in rows if is_lossless(r)), default=1)
            out[text] = (cap, not any(r["length"] > cap for r in rows))
        return out


def sweep_identity(row) -> dict:
    """What a row's results depend on, from the sweep's record (column ``sweep``)."""
    return sweep_record(row).get("identity", {})


def sweep_record(row) -> dict:
    """The sweep's record of a row (column ``sweep``: preset, optim, identity, ...), {} if none."""
    return json.loads(row.get("sweep") or "{}")


def text_kind(source: str) -> str:
    """What a source's texts are, from its canonical name (the store's column ``source``):
    "random" for random words, "prose" for a file, a folder or PG-19."""
    kind = source.partition(":")[0]
    return "random" if kind == "random" else "prose" if kind in ("file", "dir", "pg19") \
        else "unknown"


def is_lossless(row) -> bool:
    """A row whose text came back: every token right and decoded back (its stop reason), as
    ``sweep.status`` counts them and a --search probes (a text can have every token right in the
    training forward and still not decode back: its accuracy is 1.0, its stop reason not)."""
    return row.get("stop_reason") == StopReason.LOSSLESS.label


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


def attach_in_flight(groups: list[Group], records) -> int:
    """Each text in flight whose checkpoint the sweep labelled with its job (records:
    cramfast.sweep.store.read_checkpoints) given to its group with the floor under its result
    (Group.in_flight; cramfast.engine.checkpoint.progress); of several records of one job (a
    stale one in another shard), the newest. Returns how many texts were attached."""
    by_key = {(g.model, g.source, g.n_mem, g.settings_hash): g for g in groups}
    newest = {}
    for blob, saved_at, job in records:
        if job is not None and (job not in newest or saved_at > newest[job][0]):
            newest[job] = (saved_at, blob)
    attached = 0
    for job, (_, blob) in newest.items():
        g = by_key.get((job.model, job.source, job.n_mem, job.settings_hash))
        text = None if g is None else progress(unpack(blob))
        if text is not None:
            g.in_flight[(job.sample, job.seed, job.length)] = text["floor"]
            attached += 1
    return attached


def mean_of(values):
    """The mean of the values that are not None; None if there are none."""
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None
