"""Shared set-up of the benchmark suite, and the table printed at the end of `make bench`.

* Collects ``bench_*.py`` files (pytest's default pattern is test_*.py): ``pytest benchmarks``
  runs the whole suite, ``pytest benchmarks/bench_kernels.py`` one file.
* ``CRAMFAST_BENCH_QUICK=1`` (``make bench-quick``) shrinks every suite to a CI-sized check.
* Every measured figure goes into ``benchmark.extra_info`` (saved in the JSON by
  ``--benchmark-autosave``, compared by ``--benchmark-compare``); ``pytest_terminal_summary``
  prints them as one compact table per file, the columns named in ``SUMMARY_COLUMNS``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:           # `import paper_baseline`, `import _common` from any cwd
    sys.path.insert(0, str(HERE))

# Columns of the end-of-session table, per benchmark file (extra_info keys, in order).
SUMMARY_COLUMNS = {
    "bench_end_to_end.py": ["method", "L", "texts", "steps_mean", "lossless", "exact", "seconds",
                            "tok_per_s", "ratio_vs_paper_reload", "ratio_vs_paper_noreload",
                            "time_ratio_vs_paper_noreload", "lossless_minus_paper_reload",
                            "lossless_minus_paper_noreload"],
    "bench_kernels.py": ["op", "impl", "N", "V", "ms", "peak_mib", "time_vs_naive",
                         "mem_vs_naive", "target_met"],
    "bench_roofline.py": ["batch", "tokens", "ms_per_step", "gflop_per_step", "achieved_gflops",
                          "peak_gflops", "fraction", "fraction_exact", "fraction_non_embedding",
                          "target_met"],
    "bench_scheduler.py": ["policy", "sync_every", "ratio_static_over_scheduler",
                           "scheduler_efficiency", "layer", "us_per_plan_report"],
}


def pytest_collect_file(file_path, parent):
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):   # named files are collected anyway
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def quick() -> bool:
    return os.environ.get("CRAMFAST_BENCH_QUICK", "") not in ("", "0")


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 1e5:
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return f"{value:.3g}"
    if isinstance(value, dict):
        return ",".join(f"{k}:{v}" for k, v in value.items())
    return str(value)


@pytest.hookimpl(trylast=True)   # after pytest-benchmark's own table
def pytest_terminal_summary(terminalreporter):
    session = getattr(terminalreporter.config, "_benchmarksession", None)
    benchmarks = [b for b in getattr(session, "benchmarks", []) if b.extra_info]
    if not benchmarks:
        return
    by_file: dict[str, list] = {}
    for bench in benchmarks:
        by_file.setdefault(bench.fullname.split("::")[0].rsplit("/", 1)[-1], []).append(bench)
    write = terminalreporter.write_line
    terminalreporter.section("cramfast benchmark figures (extra_info)"
                             + (" [quick]" if quick() else ""))
    for fname, benches in by_file.items():
        columns = SUMMARY_COLUMNS.get(fname)
        if columns is None:   # a file without a declared layout: its scalar keys
            columns = []
            for b in benches:
                columns += [k for k, v in b.extra_info.items()
                            if k not in columns and isinstance(v, (int, float, str, bool))]
        columns = [c for c in columns if any(c in b.extra_info for b in benches)]
        rows = [[b.name.split("[")[-1].rstrip("]") if "[" in b.name else b.name]
                + [_fmt(b.extra_info[c]) if c in b.extra_info else "-" for c in columns]
                for b in benches]
        header = ["case"] + columns
        widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
        write("")
        write(fname)
        write("  " + "  ".join(h.rjust(w) for h, w in zip(header, widths)))
        for r in rows:
            write("  " + "  ".join(c.rjust(w) for c, w in zip(r, widths)))
        notes = sorted({b.extra_info["note"] for b in benches if b.extra_info.get("note")})
        for note in notes:
            write(f"  note: {note}")
