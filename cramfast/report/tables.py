"""Tables as the tools write them: markdown (a header row, a rule, one row per line) and CSV
(a header, empty cells for None)."""
from __future__ import annotations

import csv
from pathlib import Path


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    """A markdown table of ``head`` and ``rows``, whose cells are already formatted."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict], columns=None):
    """``rows`` as CSV, columns ``columns`` (default: the first row's keys; other keys left out)."""
    columns = columns or (list(rows[0]) if rows else ["empty"])
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
