"""cramfast.report: Table 1 numbers from hand-made rows (the paper's definitions), shards merged,
published rows matched, four PNGs; and end to end from a real tiny sweep."""
import csv
import json
import math
import subprocess
import sys

import pytest
import torch

from cramfast.engine import checkpoint
from cramfast.report import build as report
from cramfast.report import figures as report_figures
from cramfast.report import groups as report_groups
from cramfast.report import intervals
from cramfast.report import published as report_published
from cramfast.report import records as report_records
from cramfast.sweep import grid, store
from cramfast.sweep import runner as sweep

from conftest import CORPUS, bound_by_permissions, env, fake_compressor, one_line_failure

SETTINGS = json.dumps({"identity": {"lr": 0.01, "warm_start": False}})


def row(sample, length, acc, n_mem=1, origin="grid", gain=None, ce0=None, source="pg19:test?x"):
    ce0 = ce0 if ce0 is not None else 3.0 * length
    ce1 = 0.0 if acc >= 1 else ce0 - 2.0 * length * acc
    return dict(model="EleutherAI/pythia-160m", source=source, sample=sample, length=length,
                n_mem=n_mem, seed=0, settings_hash="h1", origin=origin,
                model_label="EleutherAI/pythia-160m",
                source_label="pg19", hidden_size=768, vocab_size=50304, max_cap=787, context=2048,
                accuracy=acc, token_gain=gain if gain is not None else acc * (length - 1) - 1,
                info_gain_nats=ce0 - ce1, info_gain_bits=(ce0 - ce1) / 0.6931471805599453,
                ce_without_mem=ce0, ce_with_mem=ce1, exact=int(acc >= 1), steps=10 * length,
                stop_reason="lossless" if acc >= 1 else "stalled", sweep=SETTINGS)


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "runs.db"
    with store.Store(path) as s:
        for r in [row(0, 8, 1.0), row(1, 8, 1.0), row(0, 16, 1.0), row(1, 16, 0.985, gain=10.0),
                  row(0, 32, 0.9, gain=20.0), row(1, 32, 0.8, gain=30.0),
                  row(0, 64, 1.0, origin="search")]:       # one text only: must not count
            s.add(r)
    with store.Store(store.shard_path(path, 1)) as s:     # a torchrun shard: merged in
        for r in [row(0, 16, 1.0, n_mem=2), row(0, 32, 1.0, n_mem=2), row(0, 64, 0.5, n_mem=2,
                                                                          gain=25.0)]:
            s.add(r)
    return path


def test_table1_follows_the_papers_definitions(db, tmp_path):
    out = tmp_path / "rep"
    result = report.make_report([db], out)
    assert result["rows"] == 10
    by_m = {r["n_mem"]: r for r in result["table"]}
    one = by_m[1]
    assert (one["d"], one["V"], one["max_cap"]) == (768, 50304, 787)
    # mean acc at 16 = 0.9925
    assert one["capacity"] == 16 and not one["capacity_is_lower_bound"]
    # 64: probed for one text
    assert one["lengths"] == "8 16 32"
    assert one["token_gain"] == pytest.approx(20.0)                          # runs with acc <= 0.99
    assert one["gain_runs"] == 3 and one["utilisation"] == pytest.approx(20.0 / 787)
    ce = [3.0 * L - (3.0 * L - 2.0 * L * a) for L, a in ((16, 0.985), (32, 0.9), (32, 0.8))]
    assert one["ce_reduction_nats"] == pytest.approx(sum(ce) / 3)
    assert one["bits_per_vector"] == pytest.approx(sum(ce) / 3 / 0.6931471805599453)
    assert one["capacity_rows"] == "runs.db#3 runs.db#4"
    assert one["paper_model"] == "Pythia-160M" and one["paper_capacity"] == 80
    assert one["search_capacity_median"] == 64
    two = by_m[2]
    assert two["capacity"] == 32 and two["utilisation"] == pytest.approx(25.0 / (2 * 787))
    assert two["capacity_rows"] == "runs.rank1.db#2" and two["paper_capacity"] is None
    for name in report_figures.FIGURES:
        assert (out / name).stat().st_size > 5000 and (out / name).read_bytes()[:4] == b"\x89PNG"
    with open(out / "fig4_capacity_vs_nmem.csv") as f:          # Fig 4's points, bounds marked
        fig4 = {r["n_mem"]: (r["capacity"], r["lower_bound"]) for r in csv.DictReader(f)}
    assert fig4 == {"1": ("16", "False"), "2": ("32", "False")}
    with open(out / "table1.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["capacity"] == "16" and rows[0]["paper_capacity"] == "80"
    md = (out / "report.md").read_text()
    assert "| EleutherAI/pythia-160m | pg19 | 1 |" in md and "fig3_ce.png" in md
    with open(out / "per_length.csv") as f:
        per_length = list(csv.DictReader(f))
    assert {(r["length"], r["complete"]) for r in per_length if r["n_mem"] == "1"} == {
        ("8", "True"), ("16", "True"), ("32", "True"), ("64", "False")}


def test_report_cli_errors_and_output(db, tmp_path, capsys):
    assert report.main([str(tmp_path / "none.db"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cramfast.report: error:") and "\n" not in err
    assert report.main([str(db), "--out", str(tmp_path / "r2"), "--no-paper"]) == 0
    printed = capsys.readouterr().out
    assert "| capacity |" in printed and "paper capacity" not in printed


def test_the_first_passages_alone_compare_runs_on_the_same_texts(db, tmp_path, capsys):
    """--samples N keeps the texts of the first N passages: here passage 0 alone, lossless at
    8, 16 and (its search probe, now over every text of the group) 64, at 0.9 at 32; a bad N
    is one line, exit 2."""
    result = report.make_report([db], tmp_path / "first", samples=1)
    one = {r["n_mem"]: r for r in result["table"]}[1]
    assert result["rows"] == 7 and one["capacity"] == 64 and one["lengths"] == "8 16 32 64"
    record = next(r for r in result["summary"] if r["n_mem"] == 1)
    assert set(record["passages"].values()) == {1}
    assert report.main([str(db), "--out", str(tmp_path / "none"), "--samples", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--samples must be >= 1" in err and "\n" not in err


def test_published_names_match():
    assert report_published.published("meta-llama/Llama-3.2-1B")[0] == "Llama-3.2-1B"
    assert report_published.published("allenai/OLMo-1B-hf")[0] == "OLMo-1B"
    assert report_published.published("facebook/opt-1.3b")[0] == "OPT-1.3B"
    assert report_published.published("smollm2-135m-q4") is None


def test_sweep_then_report_end_to_end(trained_path, tmp_path):
    src = tmp_path / "book.txt"
    sentences = ["the quick brown fox jumps over the lazy dog.",
                 "a cat sat on the mat and looked at the sky.",
                 "numbers one two three four five six seven eight nine ten."]
    src.write_text("\n\n".join(" ".join((sentences[k:] + sentences[:k]) * 2) for k in range(3)))
    db = tmp_path / "e2e.db"
    g = grid.build_grid(sweep._parser().parse_args([
        "--model", trained_path, "--source", str(src), "--lengths", "8,16", "--n-mem", "1,2",
        "--samples", "2", "--lr", "0.03", "--max-steps", "60", "--db", str(db)]))
    summary = sweep.run_sweep(g, quiet=True)
    assert summary.ran == 8 and summary.total == 8
    result = report.make_report([db], tmp_path / "rep")
    assert {r["n_mem"] for r in result["table"]} == {1, 2}
    for r in result["table"]:
        assert r["d"] == 32 and r["V"] == 300 and r["max_cap"] == round(32 * 16 / 8.228818690495881)
        assert r["texts"] == 2 and r["runs"] == 4
    for name in report_figures.FIGURES:
        assert (tmp_path / "rep" / name).is_file()


def test_unwritable_out_refused_before_reading(db, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    try:
        for out in (locked, locked / "sub", blocker / "rep"):
            # an absent DB: the folder is checked first, so its error is the one reported
            run = subprocess.run(bound_by_permissions([sys.executable, "-m", "cramfast.report",
                                                       str(tmp_path / "absent.db"), "--out",
                                                       str(out)]),
                                 cwd=tmp_path, env=env(), capture_output=True, text=True,
                                 timeout=120)
            err = one_line_failure(run, "cramfast.report")
            assert f"{out}: cannot write the report there" in err, err
    finally:
        locked.chmod(0o755)
    assert list(locked.iterdir()) == []


def test_tables_keep_their_layout():
    warm = [dict(model="m", source="s", n_mem=1, length=16, pairs=2, cold_steps=40.0,
                 warm_steps=30.0,
                 steps_saved=0.25), dict(model="m", source="s", n_mem=1, length=32, pairs=1,
                                         cold_steps=None, warm_steps=5.0, steps_saved=None)]
    assert report.warm_start_table(warm) == (
        "| model | source | m | L | pairs | cold steps | warm steps | saved |\n"
        "|---|---|---|---|---|---|---|---|\n"
        "| m | s | 1 | 16 | 2 | 40.0 | 30.0 | 25% |\n"
        "| m | s | 1 | 32 | 1 | – | 5.0 | –% |")
    table = report_records.table_rows(report_groups.groups_of([dict(
        row(0, 8, 1.0), id=1, ref="r.db#1")]))
    assert report.markdown_table(table, show_settings=False).splitlines() == [
        "| model | source | m | d | V | MaxCap | texts | capacity | token gain | CE red. (nats) | "
        "utilisation | bits/vector | paper capacity | paper gain | paper CE red. |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        "| EleutherAI/pythia-160m | pg19 | 1 | 768 | 50304 | 787 | 1 | ≥ 8 | – | – | – | – | "
        "80 | 70.9 | 396 |"]


def test_fig1_labels_every_capacity_and_keeps_the_legend_off_the_bars(tmp_path, monkeypatch):
    """A capacity below the smallest length tried shows as an open bar up to that length,
    labelled "<8"; every bar has its value; the legend sits outside the axes."""
    shown = {}
    monkeypatch.setattr(report_figures, "_save", lambda plt, fig, *rest: shown.update(fig=fig))
    base = dict(n_mem=1, model="m", settings="a", lengths="8 16", capacity_rows="", gain_rows="")
    rows = [dict(base, source="low", capacity=None, capacity_is_lower_bound=False,
                 token_gain=5.0, paper_capacity=None),
            dict(base, source="high", capacity=16, capacity_is_lower_bound=True,
                 token_gain=None, paper_capacity=80)]
    report_figures.fig1(rows, tmp_path)
    fig = shown["fig"]
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.texts]
    assert "<8" in labels and "≥ 16" in labels and "5.0" in labels
    assert any(p.get_hatch() == "//" and p.get_height() == 8 for p in ax.patches)
    fig.canvas.draw()
    assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1
    assert ax.get_ylim()[1] > 80


# ---------------------------------------------------------------------------------------------
# the two capacities side by side, passages, the 95% interval, summary.json


def test_summary_json_from_a_climb_and_a_search(trained_path, tmp_path, capsys):
    """A store made with the stand-in compressor (lossless up to 20 tokens): a climb over prose
    and random words, then a --search over the prose texts into the same store."""
    book = tmp_path / "book.txt"
    sentences = [s.strip() + "." for s in CORPUS.split(". ") if s.strip()][:4]
    book.write_text("\n\n".join(" ".join((sentences[k:] + sentences[:k]) * 2) for k in range(4)))
    words = tmp_path / "words.txt"
    words.write_text("cat\ndog\nsky\nmat\nfox\nsun\n")
    db = tmp_path / "climb.db"
    common = ["--model", trained_path, "--samples", "3", "--max-steps", "77", "--db", str(db),
              "--vocab-file", str(words)]
    climb = grid.build_grid(sweep._parser().parse_args(common + [
        "--source", str(book), "--source", "random", "--lengths", "8,16,24,32,40", "--climb"]))
    sweep.run_sweep(climb, quiet=True, compress_iter=fake_compressor(lambda ids: 20))
    search = grid.build_grid(sweep._parser().parse_args(common + [
        "--source", str(book), "--lengths", "8,40", "--search", "capacity"]))
    found = sweep.run_sweep(search, quiet=True, compress_iter=fake_compressor(lambda ids: 20))
    assert set(found.search.values()) == {20}            # its probes: 20, 21, 22 off the grid
    out = tmp_path / "rep"
    assert report.main([str(db), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Capacity, two ways:" in printed and "- Capacity (the paper's definition" in printed
    assert "- Search capacity (`--search capacity`): for each text alone" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["threshold"] == 0.99 and "Student's t" in summary["mean_accuracy_ci95"]
    assert "Clopper-Pearson" in summary["lossless_ci95"]
    by_kind = {r["text_kind"]: r for r in summary["records"]}
    assert set(by_kind) == {"prose", "random"}
    for r in by_kind.values():
        assert (r["preset"], r["max_steps"], r["n_mem"]) == ("paper", 77, 1)
        assert r["capacity"] == 16 and not r["capacity_is_lower_bound"]
        assert r["capacity_note"] is None
        # the climb stopped after 24 and 32 failed: 40 never ran; the search's 20-22 not counted
        assert r["lengths"] == [8, 16, 24, 32]
        assert r["passages"] == {"8": 3, "16": 3, "24": 3, "32": 3} and r["min_passages"] == 3
        assert r["mean_accuracy"] == pytest.approx({"8": 1.0, "16": 1.0, "24": 11 / 23,
                                                    "32": 15 / 31})
        assert r["mean_accuracy_ci95"]["24"] == pytest.approx([11 / 23, 11 / 23])
        # 3 of 3 lossless at 8: the share is at least 0.025 ** (1 / 3); none at 24: at most 1 - it
        assert r["lossless"] == {"8": 3, "16": 3, "24": 0, "32": 0}
        assert r["lossless_ci95"]["8"] == pytest.approx([0.025 ** (1 / 3), 1.0])
        assert r["lossless_ci95"]["24"] == pytest.approx([0.0, 1 - 0.025 ** (1 / 3)])
    prose, rnd = by_kind["prose"], by_kind["random"]
    assert prose["source_id"].startswith("file:") and rnd["source_id"].startswith("random:")
    assert rnd["search"] is None
    assert {k: prose["search"][k] for k in ("texts", "median", "min", "max",
                                            "lower_bound_texts")} == dict(
        texts=3, median=20, min=20, max=20, lower_bound_texts=0)
    assert [t["largest_lossless_length"] for t in prose["search"]["per_text"]] == [20, 20, 20]
    md = (out / "report.md").read_text()
    assert "## Capacity: the paper's and per text" in md and "## Mean accuracy per length" in md
    with open(out / "per_length.csv") as f:
        per_length = {(r["source"], r["length"]): r for r in csv.DictReader(f)}
    assert per_length[("book.txt", "20")]["counted"] == "False"
    assert per_length[("book.txt", "24")]["counted"] == "True"


def test_a_length_some_texts_have_not_reached_is_open_until_they_cannot_change_it():
    rows = [dict(row(s, 8, 1.0), id=s, ref=f"r.db#{s}") for s in range(3)] + [
        dict(row(s, 16, 1.0), id=10 + s, ref=f"r.db#{10 + s}") for s in range(2)]  # 2 of 3 texts
    rows += [dict(row(s, L, 0.5, n_mem=2), id=20 + s + L, ref="r.db#x") for s in range(2)
             for L in (8, 16)]
    groups = report_groups.groups_of(rows)
    one, two = report_records.summary_records(groups)
    # 16's mean over the 3 texts will end in [2/3, 1]: open, so 8 is all that is decided
    assert one["capacity"] == 8 and one["capacity_is_lower_bound"]
    assert one["verdicts"] == {"8": "pass", "16": "open"} and one["open_lengths"] == [16]
    assert one["mean_accuracy_will_end_in"] == {"8": [1.0, 1.0], "16": [2 / 3, 1.0]}
    assert one["passages"] == {"8": 3, "16": 2} and one["min_passages"] == 2
    assert one["capacity_note"] == ("16 still open (2 of its 3 texts stored, the mean will end "
                                    "in 0.6667–1.0000)")
    assert one["mean_accuracy_ci95"] == {"8": [1.0, 1.0], "16": [1.0, 1.0]}
    assert two["capacity"] is None and two["verdicts"] == {"8": "fail", "16": "fail"}
    assert two["capacity_note"] == "below the smallest length tried (8): no length reaches 0.99"
    assert one["preset"] is None and one["max_steps"] is None and one["text_kind"] == "prose"
    table = report_records.table_rows(groups)
    assert report_records.capacity_label(table[0]) == "≥ 8 (16 open)"
    assert report_records.capacity_label(table[1]) == "<8"
    per_length = report_records.per_length_rows(groups)
    lines = report.per_length_table(per_length, 0.99, show_settings=False).splitlines()
    assert lines[3] == "| EleutherAI/pythia-160m | pg19 | 1 | 16 | 2/3 | 1.0000 | " \
        "1.0000 – 1.0000 | 2 (0.16 – 1.00) | 0.6667 – 1.0000 | open | 160 |"  # 10 steps/token
    assert per_length[1]["lossless_ci95_low"] == pytest.approx(0.025 ** 0.5)   # 2 of 2 lossless
    with_settings = report.per_length_table(per_length, 0.99, show_settings=True).splitlines()
    assert with_settings[0].startswith("| model | source | m | settings | L |")
    assert with_settings[3].startswith("| EleutherAI/pythia-160m | pg19 | 1 | h1 | 16 | 2/3 |")
    # at a threshold the missing text cannot miss (2 of 3 lossless >= 0.6 whatever it does),
    # 16 is decided over 2 texts
    one, _ = report_records.summary_records(groups, threshold=0.6)
    assert one["capacity"] == 16 and one["capacity_is_lower_bound"] and one["open_lengths"] == []
    assert one["capacity_note"] == ("lower bound: 16 is the largest length tried and none failed; "
                                    "decided over 2 of the group's 3 texts")
    assert report_records.capacity_label(report_records.table_rows(groups, 0.6)[0]) == "≥ 16 (2/3)"


def checkpoint_blob(n_pred: int, best_correct: int, margin: float = 0.0) -> bytes:
    """A checkpoint record of one text in flight, as the engine packs it (the fields
    cramfast.engine.checkpoint.progress reads)."""
    slot = dict(n_pred=n_pred, steps=300, max_steps=5000, best_correct=best_correct,
                best_step=250, patience=2000, mem=torch.zeros(1, 4))
    return checkpoint.pack(dict(attempts=[dict(slot_state=slot, settings=dict(margin=margin))],
                                seconds=60.0, format=checkpoint.FORMAT))


def in_flight_store(path, stored, in_flight):
    """A store of ``stored`` rows and texts in flight, ``in_flight``: (fingerprint, blob, job
    key changes from the first row's key, or None for no label)."""
    with store.Store(path) as s:
        for r in stored:
            s.add(r)
        first = store.JobKey(*(s.rows()[0][k] for k in store.KEY))
        s.put({fp: blob for fp, blob, _ in in_flight})
        s.label_checkpoints({fp: store.JobKey(**dict(first.as_dict(), **changes))
                             for fp, _, changes in in_flight if changes is not None})
    groups = report_groups.groups_of(store.read_runs([path]))
    attached = report_groups.attach_in_flight(groups, store.read_checkpoints([path]))
    return groups, attached


def test_a_text_in_flight_counts_at_the_floor_under_its_result_where_the_sweep_labelled_it(
        tmp_path):
    path = tmp_path / "runs.db"
    stored = [row(sample, 8, 1.0) for sample in range(3)] + [row(sample, 16, 1.0)
                                                             for sample in range(2)]
    [g], attached = in_flight_store(path, stored, [
        ("fp-in-flight", checkpoint_blob(15, 14), dict(sample=2, length=16)),
        ("fp-unlabelled", checkpoint_blob(15, 0), None),
        ("fp-other-group", checkpoint_blob(15, 0), dict(sample=2, length=16,
                                                         settings_hash="h2"))])
    assert attached == 1
    # 14 of 15 right so far, without a margin: one position less for the final evaluation
    assert g.in_flight == {(2, 0, 16): 13 / 15}
    assert g.mean_bounds(16, g.per_length()[16]) == pytest.approx(((2 + 13 / 15) / 3, 1.0))
    result = report.make_report([path], tmp_path / "rep", threshold=0.95)
    assert result["in_flight"] == 1
    assert "and 1 text(s) in flight there" in (tmp_path / "rep" / "report.md").read_text()
    [record] = result["summary"]
    assert record["verdicts"] == {"8": "pass", "16": "pass"} and record["capacity"] == 16
    # without it, 16 would still be open at 0.95: the third text counted at 0
    [g] = report_groups.groups_of(store.read_runs([path]))
    assert g.verdicts(0.95) == {8: "pass", 16: "open"}
    # with a margin asked, the count in flight is the floor itself
    [g], _ = in_flight_store(tmp_path / "margin.db", stored, [
        ("fp", checkpoint_blob(15, 14, margin=1.0), dict(sample=2, length=16))])
    assert g.in_flight == {(2, 0, 16): 14 / 15}
    # --samples 2 leaves out the third text's rows and its text in flight alike
    [record] = report.make_report([path], tmp_path / "rep2", threshold=0.95,
                                  samples=2)["summary"]
    assert record["texts"] == 2 and record["verdicts"] == {"8": "pass", "16": "pass"}


def test_a_text_or_length_only_in_flight_still_counts(tmp_path):
    stored = [row(sample, 8, 1.0) for sample in range(3)]
    # a fourth text, in flight at 8 with nothing right yet: 8 is over 4 texts, open
    [g], _ = in_flight_store(tmp_path / "a.db", stored, [
        ("fp", checkpoint_blob(7, -1), dict(sample=3))])
    assert g.in_flight == {(3, 0, 8): 0.0} and len(g.texts) == 4
    assert g.verdicts() == {8: "open"} and g.capacity() == (None, False, [])
    # every text of 16 in flight, none stored: 16 is open, 8 a lower bound
    [g], _ = in_flight_store(tmp_path / "b.db", stored, [
        (f"fp{s}", checkpoint_blob(15, 14), dict(sample=s, length=16)) for s in range(3)])
    assert g.verdicts() == {8: "pass", 16: "open"}
    [rec] = report_records.summary_records([g])
    assert rec["capacity"] == 8 and rec["capacity_is_lower_bound"] and rec["open_lengths"] == [16]
    assert rec["passages"] == {"8": 3, "16": 0}
    assert report_records.capacity_label(report_records.table_rows([g])[0]) == "≥ 8 (16 open)"
    lines = report.per_length_table(report_records.per_length_rows([g]), 0.99, False).splitlines()
    assert lines[-1].startswith("| EleutherAI/pythia-160m | pg19 | 1 | 16 | 0/3 | – | – | – | "
                                f"{13 / 15:.4f} – 1.0000 | open |")


def seeded(seed, sample, length, acc, origin="climb"):
    return dict(row(sample, length, acc, origin=origin), seed=seed,
                id=1000 * seed + 100 * sample + length, ref=f"r#{seed}.{sample}.{length}")


def test_a_seed_whose_climb_stopped_below_a_length_is_not_waited_for_there():
    # seed 0's climb: 16 and 24 below 0.99, so it stopped after 24; seed 1 goes on to 32
    rows = [seeded(seed, sample, L, acc)
            for seed, lengths in ((0, {8: 1.0, 16: 0.5, 24: 0.5}),
                                  (1, {8: 1.0, 16: 1.0, 24: 1.0, 32: 1.0}))
            for L, acc in lengths.items() for sample in range(2)]
    [g] = report_groups.groups_of(rows)
    assert g.climb_stopped(0) == 24 and g.climb_stopped(1) is None
    assert g.expected(32, g.per_length()[32]) == {(0, 1), (1, 1)}
    assert g.verdicts() == {8: "pass", 16: "fail", 24: "fail", 32: "pass"}
    assert g.capacity()[:2] == (32, True)
    assert report_records.capacity_label(report_records.table_rows([g])[0]) == "≥ 32 (2/4)"


def test_a_seed_not_yet_at_a_length_is_waited_for_there():
    # both seeds lossless at 8, seed 0 at 16 too, seed 1's 16 still queued: 16 is open
    rows = [seeded(seed, sample, 8, 1.0) for seed in (0, 1) for sample in range(2)]
    rows += [seeded(0, sample, 16, 1.0) for sample in range(2)]
    [g] = report_groups.groups_of(rows)
    assert g.climb_stopped(1) is None and len(g.expected(16, g.per_length()[16])) == 4
    assert g.verdicts() == {8: "pass", 16: "open"}


def test_a_search_probe_of_another_text_at_a_grid_length_is_left_out():
    rows = [seeded(0, sample, L, 1.0, origin="grid") for sample in (0, 1) for L in (16, 32)]
    rows += [seeded(0, 2, 16, 1.0, origin="search"), seeded(0, 2, 32, 0.5, origin="search")]
    [g] = report_groups.groups_of(rows)
    assert g.grid_texts() == {(0, 0), (1, 0)}
    assert [len(g.capacity_lengths()[L]) for L in (16, 32)] == [2, 2]
    assert g.verdicts() == {16: "pass", 32: "pass"}
    per_length = {p["length"]: p for p in report_records.per_length_rows([g])}
    assert (per_length[32]["passages"], per_length[32]["mean_accuracy"]) == (2, 1.0)


def test_a_store_without_labels_gives_its_checkpoints_no_job(tmp_path):
    path = tmp_path / "old.db"
    with store.Store(path) as s:
        s.add(row(0, 8, 1.0))
        s.conn.execute("DROP TABLE checkpoint_jobs")
        s.put({"fp": checkpoint_blob(7, 3)})
    with store.Store(path, create=False) as s:
        [(blob, _, job)] = s.checkpoint_records()
    assert job is None and checkpoint.progress(checkpoint.unpack(blob))["best"] == 3 / 7


def test_a_partial_length_below_the_threshold_whatever_the_rest_do_fails():
    # 3 texts at 8, lossless; at 16 one text stored at 0.5: the mean ends <= (0.5 + 2) / 3 < 0.99
    rows = [dict(row(s, 8, 1.0), id=s, ref=f"r.db#{s}") for s in range(3)]
    rows.append(dict(row(0, 16, 0.5), id=10, ref="r.db#10"))
    [g] = report_groups.groups_of(rows)
    assert g.verdicts() == {8: "pass", 16: "fail"}
    assert g.capacity() == (8, False, ["r.db#0", "r.db#1", "r.db#2"])
    # none passed yet and the smallest is open: undecided, not "below the smallest"
    [g] = report_groups.groups_of(rows[:1] + [dict(row(1, 16, 1.0), id=11, ref="r.db#11")])
    [record] = report_records.summary_records([g])
    assert record["capacity"] is None and record["verdicts"] == {"8": "open", "16": "open"}
    assert record["capacity_note"].startswith("undecided: no length has passed yet; 8 still open")
    assert report_records.capacity_label(report_records.table_rows([g])[0]) == "? (8, 16 open)"


def test_what_a_vector_removes_per_length_by_whether_its_texts_came_back():
    """Per length, the CE without mem (nats) of the texts lossless and of those short of it,
    the most one mem removed and the CE per predicted token, in per_length.csv and report.md."""
    rows = [dict(r, ref=f"r.db#{i}") for i, r in enumerate([
        row(0, 11, 1.0, ce0=30.0), row(1, 11, 1.0, ce0=40.0), row(2, 11, 0.9, ce0=55.0),
        row(3, 11, 0.8, ce0=60.0), row(0, 21, 1.0, ce0=70.0)])]
    rows[1]["stop_reason"] = "max_steps"      # every token right, not decoded back: short of it
    per_length = report_records.per_length_rows(report_groups.groups_of(rows))
    at = {p["length"]: p for p in per_length}
    assert (at[11]["lossless"], at[11]["ce_without_mem_lossless_min_nats"],
            at[11]["ce_without_mem_lossless_max_nats"]) == (1, 30.0, 30.0)
    assert (at[11]["ce_without_mem_short_min_nats"],
            at[11]["ce_without_mem_short_max_nats"]) == (40.0, 60.0)
    # removed: ce0 - ce1 with ce1 = ce0 - 2 L acc below 1, all of ce0 at 1
    assert at[11]["ce_removed_max_nats"] == pytest.approx(max(30.0, 40.0, 2 * 11 * 0.9))
    assert at[11]["mean_ce_without_mem_per_token_nats"] == pytest.approx(185.0 / 4 / 10)
    assert at[21]["ce_without_mem_short_min_nats"] is None
    lines = report.ce_table(per_length, show_settings=False).splitlines()
    assert lines[2] == "| EleutherAI/pythia-160m | pg19 | 1 | 11 | 1 | 30 | 3 | 40–60 | 40 | 4.62 |"
    assert lines[3] == "| EleutherAI/pythia-160m | pg19 | 1 | 21 | 1 | 70 | 0 | – | 70 | 3.50 |"


def test_mean_interval_is_students_t_over_texts():
    low, high = intervals.mean_interval([1.0, 0.985])
    half = 12.7062 * (0.015 / 2 ** 0.5) / 2 ** 0.5     # t(0.975, 1); sd of two: |a - b| / sqrt(2)
    assert low == pytest.approx(0.9925 - half, abs=1e-4) and high == 1.0     # clipped at 1
    assert intervals.mean_interval([0.5]) is None
    assert intervals.mean_interval([0.5] * 8) == (0.5, 0.5)      # zero wide: all the same
    assert intervals.mean_interval([0.4, 0.5, 0.6]) == pytest.approx(
        (0.5 - 4.3027 * 0.1 / 3 ** 0.5, 0.5 + 4.3027 * 0.1 / 3 ** 0.5), abs=1e-4)


# two-sided 97.5% points of Student's t (standard tables): 8 and 16 passages, the paper's 50
@pytest.mark.parametrize("df,t", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (7, 2.3646),
                                  (15, 2.1314), (30, 2.0423), (49, 2.0096), (1000, 1.9623)])
def test_t_quantile_matches_the_tables(df, t):
    assert intervals.t_quantile(df) == pytest.approx(t, abs=5e-5)
    assert intervals.t_two_sided_probability(t, df) == pytest.approx(0.95, abs=1e-4)


def test_binomial_interval_is_clopper_pearson():
    # the closed forms at the ends: k = n gives [(alpha/2)^(1/n), 1], k = 0 its mirror
    assert intervals.binomial_interval(16, 16) == pytest.approx((0.025 ** (1 / 16), 1.0))
    assert intervals.binomial_interval(0, 8) == pytest.approx((0.0, 1 - 0.025 ** (1 / 8)))
    # inside, the endpoints solve the binomial tails (published values: R's binom.test)
    assert intervals.binomial_interval(14, 16) == pytest.approx((0.6165, 0.9845), abs=1e-4)
    assert intervals.binomial_interval(1, 8) == pytest.approx((0.0032, 0.5265), abs=1e-4)
    low, high = intervals.binomial_interval(30, 50)
    tail = lambda k, p: sum(math.comb(50, i) * p ** i * (1 - p) ** (50 - i)
                            for i in range(k, 51))
    assert tail(30, low) == pytest.approx(0.025) and 1 - tail(31, high) == pytest.approx(0.025)
    assert intervals.binomial_interval(0, 0) is None
    with pytest.raises(ValueError):
        intervals.binomial_interval(3, 2)


def test_text_kind_is_read_from_the_source_name():
    assert [report_groups.text_kind(s) for s in ("random:wordfreq-x?sample_seed=0",
                                                 "file:/b.txt?c", "dir:/books?c", "pg19:test?c",
                                                 "other")] == [
        "random", "prose", "prose", "prose", "unknown"]


def test_search_only_lengths_off_the_grid_do_not_decide_the_capacity():
    """A search's bisection length reached by every text (12) is off the paper's grid: left
    out; its doubling probes on the grid that every text reached (8, 16) count."""
    rows = [dict(row(s, L, acc, origin="search"), id=i, ref=f"r.db#{i}")
            for i, (s, L, acc) in enumerate([(0, 8, 1.0), (1, 8, 1.0), (0, 12, 1.0),
                                             (1, 12, 1.0), (0, 16, 0.5), (1, 16, 0.5)])]
    g = report_groups.groups_of(rows)[0]
    assert list(g.capacity_lengths()) == [8, 16]
    assert g.capacity()[:2] == (8, False)


def test_controlled_comparison_names_what_sets_each_group_apart(tmp_path):
    """Groups of one model and m that differ in budget or one setting are set side by side, each
    with what it changed from its preset and its capacity; a lone group gets no comparison."""
    from cramfast.settings import preset_settings

    def run(sample, length, acc, settings_hash, source="pg19:test?x", n_mem=1, **changed):
        optim = dict(preset_settings("fast"), **changed)
        r = row(sample, length, acc, n_mem=n_mem, source=source)
        r.update(settings_hash=settings_hash, sweep=json.dumps(
            {"preset": "fast", "optim": optim, "identity": dict(changed, warm_start=False)}))
        return r
    path = tmp_path / "controls.db"
    with store.Store(path) as s:
        for sample in (0, 1):
            s.add(run(sample, 16, 1.0, "base"))
            s.add(run(sample, 32, 1.0, "base"))
            s.add(run(sample, 16, 1.0, "short", max_steps=600))
            s.add(run(sample, 32, 0.9, "short", max_steps=600))
            s.add(run(sample, 16, 0.95, "sink", mem_position="after_bos"))
            s.add(run(sample, 16, 1.0, "random", source="random:x"))
            s.add(run(sample, 16, 1.0, "alone", n_mem=2))
    result = report.make_report([path], tmp_path / "rep")
    with open(tmp_path / "rep" / "controlled.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["text_kind"], r["max_steps"], r["changed"], r["capacity"]) for r in rows] == [
        ("prose", "5000", "", "32"), ("prose", "5000", "mem_position=after_bos", ""),
        ("prose", "600", "", "16"), ("random", "5000", "", "16")]
    assert all(r["n_mem"] == "1" for r in rows)
    assert rows[0]["mean_accuracy"] == "16:1.000 32:1.000"
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## What moves the capacity" in md
    assert "| 600 | – | 2 | 16 | 16:1.000 32:0.900 | 26.9 |" in md   # 0.9 · 31 − 1
    changed = {rec["settings_hash"]: rec["settings_changed"] for rec in result["summary"]}
    assert changed["short"] == {"max_steps": 600} and changed["base"] == {}
    assert changed["sink"] == {"mem_position": "after_bos"}
    # Table 1 names each group's settings as a reader tells them apart: preset, budget, changes
    table1 = md.split("## Table 1")[1].split("## ")[0]
    assert "| pg19 | 1 | fast, 600 steps [short] | 768 |" in table1
    assert "| pg19 | 1 | fast, 5000 steps, mem_position=after_bos [sink] | 768 |" in table1
    # so do the figures' points: Fig 3's, each marked by whether its text came back
    with open(tmp_path / "rep" / "fig3_ce.csv") as f:
        fig3 = list(csv.DictReader(f))
    assert {(r["settings"], r["length"], r["lossless"]) for r in fig3} >= {
        ("fast, 600 steps [short]", "32", "False"), ("fast, 600 steps [short]", "16", "True"),
        ("fast, 5000 steps, mem_position=after_bos [sink]", "16", "False")}
    with open(tmp_path / "rep" / "fig5_theory_vs_measured.csv") as f:
        assert "fast, 600 steps [short]" in {r["settings"] for r in csv.DictReader(f)}


def test_tables_and_figures_label_a_capacity_alike():
    row = dict(capacity=96, capacity_is_lower_bound=True, capacity_passages=3, texts=16,
               lengths="16 32 64 80 96")
    assert report_records.capacity_label(row) == "≥ 96 (3/16)"
    assert report_records.capacity_label(dict(row, capacity_passages=16)) == "≥ 96"
    assert report_records.capacity_label(dict(row, capacity=None)) == "<16"
    assert report_records.capacity_label(dict(row, capacity=80, capacity_passages=16,
                                             open_lengths="96")) == "≥ 80 (96 open)"
