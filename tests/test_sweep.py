"""cramfast.sweep: grids from flags and TOML, text sources, resume after kill -9, torchrun
shards, capacity search and warm start (the last two with a stand-in compressor: fast)."""
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cramfast import sources
from cramfast.errors import CramfastError
from cramfast.sweep import grid, store
from cramfast.sweep import runner as sweep

from conftest import CORPUS, bound_by_permissions, env, fake_compressor, one_line_failure

REPO = Path(__file__).resolve().parents[1]
SENTENCES = [s.strip() + "." for s in CORPUS.split(". ") if s.strip()][:4]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    """Paragraphs in the tiny model's own distribution (rotations of its corpus)."""
    path = tmp_path_factory.mktemp("src") / "corpus.txt"
    paras = [" ".join((SENTENCES[k:] + SENTENCES[:k]) * 2) for k in range(4)]
    path.write_text("*** START OF THE PROJECT GUTENBERG EBOOK X ***\n\n" + "\n\n".join(paras)
                    + "\n\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\nlicence text\n")
    return path


def grid_args(*extra):
    return grid.build_grid(sweep._parser().parse_args(list(extra)))


def rows_of(db):
    return store.read_runs([db])


# ---------------------------------------------------------------------------------------------
# grids, sources, bad input (no model work)


def test_grid_from_toml_and_flags(tmp_path):
    cfg = tmp_path / "g.toml"
    cfg.write_text('model = "m1"\nsources = ["random"]\nlengths = [32, 8, 16, 8]\nn_mem = "1,2"\n'
                   'samples = 3\nseeds = [0, 1]\nmax_steps = 100\npreset = "fast"\n')
    g = grid_args("--config", str(cfg), "--samples", "5", "--lr", "0.5")
    assert g.models == ["m1"] and g.sources == ["random"] and g.lengths == [8, 16, 32]
    assert g.n_mem == [1, 2] and g.samples == 5 and g.seeds == [0, 1]
    assert g.optim == {"max_steps": 100, "lr": 0.5} and g.settings()["lr"] == 0.5
    # the key hashes what changes results, not batching knobs
    h = g.settings_hash()
    assert grid_args("--config", str(cfg), "--samples", "5", "--lr", "0.5", "--max-slots",
                     "3").settings_hash() == h
    assert grid_args("--config", str(cfg), "--lr", "0.4").settings_hash() != h
    # parallel attempts change results: hashed, though a batch-wide setting
    assert grid_args("--config", str(cfg), "--samples", "5", "--lr", "0.5",
                     "--set", "fill_slots=2").settings_hash() != h
    # only settings off the published protocol are hashed: one added later, at its neutral
    # default, keeps the keys of stores made before it
    paper = grid_args("--config", str(cfg), "--preset", "paper")
    assert "focal_gamma" not in paper.identity() and paper.identity()["max_steps"] == 100
    assert grid_args("--config", str(cfg), "--preset", "paper",
                     "--set", "focal_gamma=0").settings_hash() == paper.settings_hash()
    assert g.identity()["focal_gamma"] == 1.0
    for shipped in sorted(grid.GRIDS_DIR.glob("*.toml")):
        g = grid_args("--config", shipped.stem, "--source", "random")
        assert g.lengths and g.n_mem and g.samples >= 1
    paper = grid.load_config("paper-pg19")
    assert tuple(paper["lengths"]) == grid.PAPER_LENGTHS


def test_the_capacity_runs_script_names_grids_that_build(tmp_path):
    """docs/capacity/run_all.sh: every sweep it runs builds its grid (shipped config, preset,
    factor flags), the controls' factors give groups of their own (the search shares the
    grid's at its budget), and bash reads the script."""
    import shlex
    import subprocess
    script = REPO / "docs" / "capacity" / "run_all.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    factors, hashes = [""], {}
    for line in map(str.strip, script.read_text().splitlines()):
        if line.startswith("for factor in"):
            factors = shlex.split(line.removeprefix("for factor in").split("; do")[0])
        elif line == "done":
            factors = [""]
        elif line.startswith("sweep --config"):
            for factor in factors:
                args = (line.removeprefix("sweep ").replace('"$BOOKS"', "random")
                        .replace("$OUT", str(tmp_path)).replace("$factor", factor))
                g = grid_args(*shlex.split(args))
                assert (g.climb or g.search) and g.optim["max_steps"] in (600, 5000)
                hashes.setdefault(g.db, set()).add(g.settings_hash())
    assert len(hashes) == 6 and len(hashes[str(tmp_path / "controls.db")]) == 9


def test_sources_seeded_prefix_stable(corpus_file, trained_path, tmp_path):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(trained_path)
    src = sources.open_source(str(corpus_file))
    assert src.canonical.startswith("file:/") and "sample_seed=0" in src.canonical
    texts = [src.tokens(tok, i, 40) for i in range(4)]
    assert len({tuple(t) for t in texts}) == 4                       # distinct starts
    for i in range(4):
        assert src.tokens(tok, i, 12) == texts[i][:12]              # L is a prefix of 2L
        assert "GUTENBERG" not in tok.decode(texts[i])
    assert sources.open_source(str(corpus_file)).tokens(tok, 2, 40) == texts[2]       # seeded
    other = sources.open_source(str(corpus_file), sample_seed=1)
    assert [other.tokens(tok, i, 40) for i in range(4)] != texts
    with pytest.raises(CramfastError, match="4 distinct passages, 5 samples"):
        src.check(5)
    paper = sources.open_source(str(corpus_file), chunking="paper")
    assert len(paper.tokens(tok, 0, 30)) == 30 and "chunking=paper" in paper.canonical
    vocab = tmp_path / "words.txt"
    vocab.write_text("cat\ndog\nsky\nmat\nfox\n")
    rnd = sources.open_source("random", vocab_file=str(vocab))
    ids = rnd.tokens(tok, 0, 20)
    assert len(ids) == 20 and rnd.tokens(tok, 0, 10) == ids[:10] and rnd.tokens(tok, 1, 20) != ids
    assert set(tok.decode(ids).split()) <= {"cat", "dog", "sky", "mat", "fox"}


def test_random_source_uses_wordfreq_top_100k(trained_path):
    pytest.importorskip("wordfreq")
    from transformers import AutoTokenizer
    src = sources.open_source("random", sample_seed=3)
    assert len(src.vocab) == 100_000 and src.canonical.startswith("random:wordfreq-en-100k-")
    assert src.canonical.endswith("?sample_seed=3")
    ids = src.tokens(AutoTokenizer.from_pretrained(trained_path), 0, 16)
    assert len(ids) == 16


def one_line_error(capsys, argv):
    try:
        code = sweep.main(argv)
    except SystemExit as exit_:            # a flag refused by the parser itself
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("cramfast.sweep: error:") and "\n" not in err, err
    return err


def test_bad_input_one_line_exit_2_nothing_lost(tmp_path, capsys, corpus_file, trained_path):
    db = tmp_path / "keep.db"
    with store.Store(db) as s:
        s.add(dict(model="m", source="s", sample=0, length=8, n_mem=1, seed=0, settings_hash="h"))
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("lengths = [8, 16\n")
    unknown_key = tmp_path / "k.toml"
    unknown_key.write_text("lenghts = [8]\n")
    base = ["--db", str(db), "--quiet"]
    assert "unknown model" in one_line_error(capsys, base + ["--model", str(tmp_path / "nope"),
                                                             "--source", str(corpus_file)])
    assert "no such file" in one_line_error(capsys, base + ["--model", trained_path,
                                                            "--source", str(tmp_path / "none.txt")])
    assert "empty grid" in one_line_error(capsys, base + ["--model", trained_path, "--source",
                                                          str(corpus_file), "--lengths", ""])
    assert "empty grid" in one_line_error(capsys, base + ["--model", trained_path, "--source",
                                                          str(corpus_file), "--lengths", "500"])
    assert "bad TOML" in one_line_error(capsys, base + ["--config", str(bad_toml)])
    assert "unknown key" in one_line_error(capsys, base + ["--config", str(unknown_key)])
    assert "no source" in one_line_error(capsys, base + ["--model", trained_path])
    assert "--preset: invalid choice" in one_line_error(capsys, base + ["--source", "random",
                                                                         "--preset", "x"])
    unknown_preset = tmp_path / "p.toml"
    unknown_preset.write_text('preset = "x"\nsources = ["random"]\n')
    assert "unknown preset" in one_line_error(capsys, base + ["--config", str(unknown_preset)])
    assert "--dtype: invalid choice" in one_line_error(capsys, base + ["--source", "random",
                                                                        "--dtype", "int8"])
    assert "expected key=value" in one_line_error(capsys, base + ["--source", "random", "--set",
                                                                  "x"])
    assert store.Store(db).count() == 1


# ---------------------------------------------------------------------------------------------
# capacity search and warm start, with a stand-in compressor


def test_search_capacity_doubling_then_bisection(trained_path, corpus_file, tmp_path):
    def cap(ids):
        return 9 + sum(ids[:3]) % 30          # a per-text capacity, the same for every prefix
    db = tmp_path / "search.db"
    g = grid_args("--model", trained_path, "--source", str(corpus_file), "--samples", "3",
                  "--search", "capacity", "--db", str(db))
    fake = fake_compressor(cap)
    summary = sweep.run_sweep(g, quiet=True, compress_iter=fake)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(trained_path)
    src = sources.open_source(str(corpus_file))
    expected = {i: cap(src.tokens(tok, i, 3)) for i in range(3)}
    found = {unit[2]: L for unit, L in summary.search.items()}
    assert found == expected
    assert fake.calls[0]["lengths"] == [8, 8, 8]                    # one batched call per round
    rows = rows_of(db)
    assert {r["origin"] for r in rows} == {"search"} and summary.ran == len(rows)
    for i in range(3):
        lengths = sorted(r["length"] for r in rows if r["sample"] == i)
        assert lengths[0] == 8 and expected[i] in lengths and expected[i] + 1 in lengths
    # rerun: every probe replayed from the store, nothing computed or written again
    again = fake_compressor(cap)
    summary2 = sweep.run_sweep(g, quiet=True, compress_iter=again)
    assert again.calls == [] and summary2.ran == 0 and summary2.search == summary.search


def test_search_counts_a_probe_lossless_by_its_stop_reason(trained_path, corpus_file, tmp_path):
    """A probe with every token right in the training forward that does not decode back
    (accuracy 1.0, stop reason max_steps) is lossy: the search bisects below it, and the
    report's per-text capacity says the same."""
    def cap(ids):
        return 9 + sum(ids[:3]) % 30
    db = tmp_path / "search.db"
    g = grid_args("--model", trained_path, "--source", str(corpus_file), "--samples", "3",
                  "--search", "capacity", "--db", str(db))
    summary = sweep.run_sweep(g, quiet=True,
                              compress_iter=fake_compressor(cap, right_but_not_back=True))
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(trained_path)
    src = sources.open_source(str(corpus_file))
    expected = {i: cap(src.tokens(tok, i, 3)) for i in range(3)}
    assert {unit[2]: L for unit, L in summary.search.items()} == expected
    rows = rows_of(db)
    assert any(r["accuracy"] == 1.0 and r["stop_reason"] != "lossless" for r in rows)
    (group,) = report_groups(db)
    assert {text[0]: L for text, L in group.search_capacities().items()} == expected


def stream_or_rounds(stream: bool, calls: dict):
    """cramfast.compress_iter, its calls counted in calls[stream]; with stream False its results
    come through a plain generator, which takes no more texts (so the sweep runs in rounds)."""
    import cramfast

    def compress_iter(texts, **kw):
        calls[stream] += 1
        results = cramfast.compress_iter(texts, **kw)
        return results if stream else (item for item in results)
    return compress_iter


def test_search_without_rounds_stores_what_rounds_store(trained_path, corpus_file, tmp_path):
    """The real search: each text's next probe joins the running batch (the engine's Stream),
    in one batched call; through a compress_iter that takes no more texts it runs in rounds.
    Both store the same rows (fp64, no parallel attempts) and find the same capacities."""
    calls = {True: 0, False: 0}
    counted = lambda stream: stream_or_rounds(stream, calls)

    found = {}
    for stream in (True, False):
        g = grid_args("--model", trained_path, "--source", str(corpus_file), "--samples", "3",
                      "--lengths", "8,40", "--dtype", "fp64", "--search", "capacity",
                      "--max-steps", "150", "--set", "fill_slots=0", "--db",
                      str(tmp_path / f"{stream}.db"))
        found[stream] = sweep.run_sweep(g, quiet=True, compress_iter=counted(stream)).search
    assert found[True] == found[False] and calls[True] == 1 and calls[False] > 2
    key = lambda r: (r["sample"], r["length"])
    rows = {stream: {key(r): r for r in rows_of(tmp_path / f"{stream}.db")} for stream in found}
    assert rows[True].keys() == rows[False].keys()
    for k, row in rows[False].items():
        assert (rows[True][k]["steps"], rows[True][k]["stop_reason"]) == (row["steps"],
                                                                         row["stop_reason"])


def test_warm_start_chains_lengths(trained_path, corpus_file, tmp_path):
    db = tmp_path / "warm.db"
    g = grid_args("--model", trained_path, "--source", str(corpus_file), "--samples", "2",
                  "--lengths", "8,16,24", "--warm-start", "--db", str(db))
    fake = fake_compressor(lambda ids: 100, accept_init=True)
    sweep.run_sweep(g, quiet=True, compress_iter=fake)
    # one round per length
    assert [c["lengths"] for c in fake.calls] == [[8, 8], [16, 16], [24, 24]]
    assert fake.calls[0]["init_mems"] == [None, None]
    assert all(torch.equal(m, torch.full((1, 32), 8.0)) for m in fake.calls[1]["init_mems"])
    assert all(torch.equal(m, torch.full((1, 32), 16.0)) for m in fake.calls[2]["init_mems"])
    rows = {(r["sample"], r["length"]): r for r in rows_of(db)}
    assert rows[(0, 16)]["init_from"] == rows[(0, 8)]["ref"] and rows[(0, 8)]["init_from"] is None
    cold = grid_args("--model", trained_path, "--source", str(corpus_file), "--samples", "2",
                     "--lengths", "8,16,24", "--db", str(db))
    assert cold.settings_hash() != g.settings_hash()                # stored apart from cold runs


def test_warm_start_with_the_real_compressor(trained_path, corpus_file, tmp_path):
    db = tmp_path / "real_warm.db"
    g = grid_args("--model", trained_path, "--source", str(corpus_file), "--samples", "1",
                  "--lengths", "8,12", "--warm-start", "--lr", "0.03", "--max-steps", "150",
                  "--db", str(db))
    sweep.run_sweep(g, quiet=True)
    rows = {r["length"]: r for r in rows_of(db)}
    assert set(rows) == {8, 12} and rows[12]["init_from"] == rows[8]["ref"]
    assert rows[8]["init_from"] is None


def test_next_probe():
    seq, lo, hi = [], 1, None
    while (L := sweep.next_probe(lo, hi, 8, 127, 1)) is not None:
        seq.append(L)
        lo, hi = (L, hi) if L <= 45 else (lo, L)
    assert seq == [8, 16, 32, 64, 48, 40, 44, 46, 45] and lo == 45
    assert sweep.next_probe(100, None, 8, 100, 1) is None            # reached the cap
    assert sweep.next_probe(1, 8, 8, 100, 1) == 4                    # the start itself failed


# ---------------------------------------------------------------------------------------------
# real runs: kill -9 and resume; torchrun with two ranks


def test_kill_9_then_resume_completes_without_duplicates(trained_path, corpus_file, tmp_path,
                                                         capsys):
    db = tmp_path / "kill.db"
    args = ["--model", trained_path, "--source", str(corpus_file), "--lengths", "8,16,24",
            "--samples", "2",
            "--lr", "0.03", "--max-steps", "80", "--max-slots", "3", "--db", str(db), "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "cramfast.sweep", *args], cwd=tmp_path,
                            env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None:
        try:
            if sqlite3.connect(db).execute("SELECT COUNT(*) FROM runs").fetchone()[0] >= 1:
                break
        except sqlite3.OperationalError:  # not created yet
            pass
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = len(rows_of(db))
    assert 1 <= killed_at < 6
    # the same command again (in this process: the same code path, without a second start-up)
    assert sweep.main(args) == 0
    said = capsys.readouterr().out
    assert f"6 jobs, {killed_at} already stored, {6 - killed_at} rows written" in said
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    keys = conn.execute("SELECT sample, length FROM runs").fetchall()
    # complete, no duplicate
    assert sorted(keys) == [(s, L) for s in range(2) for L in (8, 16, 24)]
    assert sum(r["stop_reason"] == "lossless" for r in rows_of(db)) >= 3


def test_torchrun_two_ranks_shard_and_merge(trained_path, corpus_file, tmp_path, capsys):
    db = tmp_path / "dist.db"
    args = ["--model", trained_path, "--source", str(corpus_file), "--lengths", "8,16", "--samples",
            "2",
            "--lr", "0.03", "--max-steps", "40", "--db", str(db), "--quiet"]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2", "-m", "cramfast.sweep", *args], cwd=tmp_path,
                          env=env(),
                         capture_output=True, text=True, timeout=150)
    assert run.returncode == 0, run.stderr[-2000:]
    shards = store.family(db)
    assert [p.name for p in shards] == ["dist.rank0.db", "dist.rank1.db"]
    per_rank = [{(r["sample"], r["length"]) for r in store.Store(p).rows()} for p in shards]
    assert len(per_rank[0]) == len(per_rank[1]) == 2 and not per_rank[0] & per_rank[1]
    assert {r["rank"] for r in rows_of(db)} == {0, 1} and len(rows_of(db)) == 4
    # a single-process rerun finds every job in the shards: nothing to do
    assert sweep.main(args) == 0
    assert "4 jobs, 4 already stored, 0 rows written" in capsys.readouterr().out


def test_sweep_keeps_one_model_in_memory(tiny_models, corpus_file, tmp_path):
    from cramfast import models
    names = [tiny_models["llama"], tiny_models["gpt2"]]
    g = grid_args("--model", names[0], "--model", names[1], "--source", str(corpus_file),
                  "--samples", "1", "--lengths", "8", "--db", str(tmp_path / "two.db"))
    models._loaded.clear()
    fake = fake_compressor(lambda ids: 100)
    sweep.run_sweep(g, quiet=True, compress_iter=fake)
    assert len(fake.calls) == 2 and len(rows_of(tmp_path / "two.db")) == 2
    assert [key[0] for key in models._loaded] == [names[1]]     # the first one was let go


# ---------------------------------------------------------------------------------------------
# a database that cannot be written: refused before any work; a failed store: one line


def test_unwritable_db_refused_before_any_work(trained_path, corpus_file, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    kept = tmp_path / "kept"
    kept.mkdir()
    stored = kept / "stored.db"
    with store.Store(stored) as s:
        s.add(dict(model="m", source="s", sample=0, length=8, n_mem=1, seed=0, settings_hash="h"))
    stored.chmod(0o444)        # a read-only results file in a folder that can be written
    locked.chmod(0o555)
    grid_flags = ["--model", trained_path, "--source", str(corpus_file), "--lengths", "8",
                  "--samples", "1", "--max-steps", "20", "--quiet"]
    try:
        for db, why in ((locked / "new.db", "cannot write the results database"),
                        (locked / "sub" / "new.db", "cannot create its folder"),
                        (stored, "cannot write the results database")):
            run = subprocess.run(bound_by_permissions([sys.executable, "-m", "cramfast.sweep",
                                                       *grid_flags,
                                                       "--db", str(db)]),
                                 cwd=tmp_path, env=env(), capture_output=True, text=True,
                                 timeout=120)
            # no "job(s) to run" line before it
            err = one_line_failure(run, "cramfast.sweep")
            assert str(db) in err and why in err, err
    finally:
        locked.chmod(0o755)
    assert not (locked / "new.db").exists()
    assert [r["sample"] for r in store.read_runs([stored])] == [0]  # untouched


def test_a_place_no_process_can_write_is_refused(trained_path, corpus_file, tmp_path):
    run = subprocess.run([sys.executable, "-m", "cramfast.sweep", "--model", trained_path,
                          "--source",
                          str(corpus_file), "--lengths", "8", "--samples", "1", "--quiet",
                          "--db", "/proc/cramfast-sweep.db"],
                         cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120)
    assert "/proc/cramfast-sweep.db: cannot write" in one_line_failure(run, "cramfast.sweep")


def test_store_failure_mid_sweep_is_one_line_and_keeps_rows(trained_path, corpus_file, tmp_path):
    db = tmp_path / "refuse.db"
    with store.Store(db) as s:   # stands in for a disk that fails after the sweep started
        s.conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON runs WHEN NEW.sample = 1 "
                       "BEGIN SELECT RAISE(ABORT, 'disk refused the row'); END")
    run = subprocess.run([sys.executable, "-m", "cramfast.sweep", "--model", trained_path,
                          "--source",
                          str(corpus_file), "--lengths", "8", "--samples", "2", "--max-slots", "1",
                          "--lr", "0.03", "--max-steps", "20", "--db", str(db), "--quiet"],
                         cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120)
    err = run.stderr.strip().splitlines()[-1]
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert err.startswith(f"cramfast.sweep: error: {db}: cannot store a finished job (disk refused")
    assert [r["sample"] for r in rows_of(db)] == [0]              # the job stored before stays


def test_ctrl_c_says_how_to_resume(monkeypatch, capsys):
    def interrupted(grid, quiet=False, **_):
        raise KeyboardInterrupt
    monkeypatch.setattr(sweep, "run_sweep", interrupted)
    assert sweep.main(["--source", "random", "--quiet"]) == 130
    assert capsys.readouterr().err.strip() == \
        "cramfast.sweep: interrupted; rerun the same command to resume"


def test_bad_setting_names_its_flag(capsys):
    err = one_line_error(capsys, ["--source", "random", "--lr", "-1", "--quiet"])
    assert err.endswith("(flag --lr)"), err


# ---------------------------------------------------------------------------------------------
# --climb: the grid's lengths in order, a group stopped after two lengths below 0.99


def climb_grid(trained_path, corpus_file, db, *extra):
    return grid_args("--model", trained_path, "--source", str(corpus_file), "--samples", "3",
                     "--lengths", "8,16,24,32,40,48", "--climb", "--db", str(db), *extra)


def test_climb_stops_after_two_lengths_below_threshold(trained_path, corpus_file, tmp_path,
                                                       capsys):
    db = tmp_path / "climb.db"
    g = climb_grid(trained_path, corpus_file, db)
    fake = fake_compressor(lambda ids: 20)           # lossless up to 20 tokens: 24, 32 fail
    summary = sweep.run_sweep(g, quiet=True, compress_iter=fake)
    # the lengths in increasing order, none past the second failure; each call takes the next
    # length too where it runs whatever the current one's mean is (none failed before it)
    assert [c["lengths"] for c in fake.calls] == [[8] * 3 + [16] * 3, [24] * 3 + [32] * 3]
    assert sorted({r["length"] for r in rows_of(db)}) == [8, 16, 24, 32]
    assert {r["origin"] for r in rows_of(db)} == {"climb"}
    assert summary.ran == 12 and summary.total == 18
    assert (summary.climb_lengths, summary.climb_jobs) == (2, 6)
    assert list(summary.climb.values()) == [(32, "stopped")]
    assert "2 length(s) past the climb's stop skipped (6 jobs)" in summary.line()
    # the rows are the grid's: a plain grid run of the same lengths finds them stored
    plain = grid_args("--model", trained_path, "--source", str(corpus_file), "--samples", "3",
                      "--lengths", "8,16,24,32", "--db", str(db))
    assert plain.settings_hash() == g.settings_hash()
    again = fake_compressor(lambda ids: 20)
    assert sweep.run_sweep(plain, quiet=True, compress_iter=again).ran == 0 and again.calls == []


def test_climb_without_rounds_stores_what_rounds_store(trained_path, corpus_file, tmp_path):
    """The real climb in one process: a length is decided the moment its last row is stored
    and the lengths that then run join the running batch (the engine's Stream), in one batched
    call; through a compress_iter that takes no more texts it runs in rounds. Both store the
    same rows (fp64, no parallel attempts) and stop at the same length."""
    calls = {True: 0, False: 0}
    counted = lambda stream: stream_or_rounds(stream, calls)

    summaries = {}
    for stream in (True, False):
        g = climb_grid(trained_path, corpus_file, tmp_path / f"{stream}.db", "--dtype", "fp64",
                       "--samples", "2", "--preset", "fast", "--max-steps", "200",
                       "--set", "fill_slots=0")
        summaries[stream] = sweep.run_sweep(g, quiet=True, compress_iter=counted(stream))
    assert summaries[True].climb == summaries[False].climb
    assert calls[True] == 1 and calls[False] >= 2
    key = lambda r: (r["sample"], r["length"])
    rows = {stream: {key(r): r for r in rows_of(tmp_path / f"{stream}.db")} for stream in calls}
    assert rows[True].keys() == rows[False].keys() and len({L for _, L in rows[True]}) >= 3
    for k, row in rows[False].items():
        assert (rows[True][k]["steps"], rows[True][k]["stop_reason"]) == (row["steps"],
                                                                         row["stop_reason"])


def test_climb_goes_on_after_one_length_below(trained_path, corpus_file, tmp_path):
    db = tmp_path / "dip.db"
    # 16 and 32 fail for every text, 24 passes: never two in a row, so every length runs
    fake = fake_compressor(lambda ids: 0 if len(ids) in (16, 32) else 100)
    summary = sweep.run_sweep(climb_grid(trained_path, corpus_file, db), quiet=True,
                              compress_iter=fake)
    # after a length below, the next one runs alone: a second below would stop the climb
    assert [sorted(set(c["lengths"])) for c in fake.calls] == [[8, 16], [24], [32, 40], [48]]
    assert list(summary.climb.values()) == [(48, "top")] and summary.climb_lengths == 0
    # one text of three failing: mean 2/3 + 1/3 * 0.5 < 0.99, a failure; two in a row stop it
    db2 = tmp_path / "one_text.db"
    first = {}

    def cap(ids):          # sample 0's text (the first seen at each length) fails from 24 on
        first.setdefault(len(ids), tuple(ids))
        return 20 if tuple(ids) == first[len(ids)] else 100
    fake = fake_compressor(cap)
    summary = sweep.run_sweep(climb_grid(trained_path, corpus_file, db2), quiet=True,
                              compress_iter=fake)
    assert [sorted(set(c["lengths"])) for c in fake.calls] == [[8, 16], [24, 32]]


def test_climb_resumes_from_stored_lengths_and_computes_nothing_twice(trained_path, corpus_file,
                                                                       tmp_path, capsys):
    db = tmp_path / "resume.db"
    # a plain grid run of the first lengths (or a climb killed after them): they count
    plain = grid_args("--model", trained_path, "--source", str(corpus_file), "--samples", "3",
                      "--lengths", "8,16", "--db", str(db))
    sweep.run_sweep(plain, quiet=True, compress_iter=fake_compressor(lambda ids: 20))
    with store.Store(db) as s:    # one text's 16 missing: only it is run at 16
        s.conn.execute("DELETE FROM runs WHERE length = 16 AND sample = 2")
    g = climb_grid(trained_path, corpus_file, db)
    fake = fake_compressor(lambda ids: 20)
    summary = sweep.run_sweep(g, quiet=True, compress_iter=fake)
    assert [c["lengths"] for c in fake.calls] == [[16] + [24] * 3, [32] * 3]
    assert summary.already == 5 and summary.ran == 7
    # rerun: every length decided from the store, nothing computed or written, same stop
    again = fake_compressor(lambda ids: 20)
    rerun = sweep.run_sweep(g, quiet=True, compress_iter=again)
    assert again.calls == [] and rerun.ran == 0 and rerun.climb == summary.climb
    assert len(rows_of(db)) == 12
    # the command line says so (its own compressor: never called, no model loaded)
    assert sweep.main(["--model", trained_path, "--source", str(corpus_file), "--samples", "3",
                       "--lengths", "8,16,24,32,40,48", "--climb", "--db", str(db),
                       "--quiet"]) == 0
    said = capsys.readouterr().out
    assert ("18 jobs, 12 already stored, 0 rows written" in said
            and "2 length(s) past the climb's stop skipped (6 jobs)" in said), said
    assert "climb: 1 group(s), 1 stopped after 2 lengths below 0.99, 0 ran every length" in said


class TimedStream:
    """A compress_iter whose texts end in the order a batch ends them: each takes steps(ids)
    from when it joins (the fake compressor's results), and it takes texts while it runs
    (submit) and gives them up (withdraw), as the engine's Stream does."""

    def __init__(self, capacity_of, steps):
        self.capacity_of, self.steps = capacity_of, steps
        self.calls, self.withdrawn, self.ran = 0, [], []

    def __call__(self, texts, **kw):
        self.calls += 1
        self.kw, self.texts, self.now, self.queue = kw, [], 0, {}
        for ids in texts:
            self.submit(ids)
        return self

    def submit(self, ids) -> int:
        self.texts.append(ids)
        self.queue[len(self.texts) - 1] = self.now + self.steps(ids)
        return len(self.texts) - 1

    def withdraw(self, index):
        if self.queue.pop(index, None) is not None:
            self.withdrawn.append((len(self.texts[index]), self.now))   # (length, when)

    def __iter__(self):
        return self

    def __next__(self):
        if not self.queue:
            raise StopIteration
        index = min(self.queue, key=lambda i: (self.queue[i], i))
        self.now = self.queue.pop(index)
        self.ran.append(len(self.texts[index]))
        one = fake_compressor(self.capacity_of)([self.texts[index]], **self.kw)
        return index, next(one)[1]


def test_a_climb_decides_a_length_below_once_its_rows_keep_it_there(trained_path, corpus_file,
                                                                    tmp_path, capsys):
    """At 24 (the length ahead, beside 16), sample 0's text fails at once and the others would
    take long: its row alone keeps the mean at 24 below 0.99 (mean_at_most), so 24's other texts
    are withdrawn from the running batch then, before 16 is decided; once 16 passes the climb
    goes on to 32, decided below by the first of its rows in the same way: stopped. A rerun
    decides the same from the store and computes nothing; a grid run of 24 finishes the rest."""
    first = {}

    def cap(ids):          # sample 0 fails from 24 on, the others from 32 on
        first.setdefault(len(ids), tuple(ids))
        return 20 if tuple(ids) == first[len(ids)] else 31

    def steps(ids):        # a failing text at 24 ends at once, a lossless one there late
        return 1 if len(ids) == 24 and cap(ids) < 24 else 100 if len(ids) == 24 else len(ids)

    db = tmp_path / "decided.db"
    g = climb_grid(trained_path, corpus_file, db, "--samples", "4")
    stream = TimedStream(cap, steps)
    summary = sweep.run_sweep(g, quiet=True, compress_iter=stream)
    # 24's at step 9 (its failing text's end; 16's texts end at 16), 32's at its first row
    assert stream.calls == 1 and stream.withdrawn == [(24, 9)] * 3 + [(32, 48)] * 3
    assert sorted(stream.ran) == [8] * 4 + [16] * 4 + [24, 32]
    assert list(summary.climb.values()) == [(32, "stopped")]
    assert summary.climb_unfinished == 6 and summary.ran == 10
    assert "6 job(s) at lengths decided below left unfinished" in summary.line()
    # the report reads the stop where the climb made it: 24 and 32 decided with one row each
    [group] = report_groups(db)
    assert group.climb_stopped(0) == 32
    assert group.verdicts() == {8: "pass", 16: "pass", 24: "fail", 32: "fail"}
    # rerun: decided from the store, nothing computed; said in one line
    again = TimedStream(cap, steps)
    rerun = sweep.run_sweep(g, quiet=True, compress_iter=again)
    assert again.calls == 0 and rerun.ran == 0 and rerun.climb == summary.climb
    assert rerun.climb_unfinished == 6
    err = capsys.readouterr().err
    assert ("24 decided below 0.99 with 1 of 4 texts stored (its mean ends at most 0.8696); "
            "3 other text(s) left unfinished (a grid run of --lengths 24 finishes them)"
            ) in err, err
    # the rows are the grid's: a plain grid run of 24 computes just the three left
    plain = grid_args("--model", trained_path, "--source", str(corpus_file), "--samples", "4",
                      "--lengths", "24", "--db", str(db))
    rest = fake_compressor(cap)
    assert sweep.run_sweep(plain, quiet=True, compress_iter=rest).ran == 3
    assert rest.calls[0]["lengths"] == [24] * 3
    # --climb-finish: every text of every length it runs, the same stop
    finish = TimedStream(cap, steps)
    full = sweep.run_sweep(climb_grid(trained_path, corpus_file, tmp_path / "finish.db",
                                      "--samples", "4", "--climb-finish"),
                           quiet=True, compress_iter=finish)
    assert finish.withdrawn == [] and sorted(finish.ran) == sorted([8, 16, 24, 32] * 4)
    assert full.climb == summary.climb and full.climb_unfinished == 0
    with pytest.raises(CramfastError, match="--climb-finish is a setting of --climb"):
        grid_args("--source", "random", "--climb-finish")


def report_groups(db):
    from cramfast.report.groups import groups_of
    return groups_of(store.read_runs([db]))


def test_climb_with_warm_start_chains_the_lengths_it_runs(trained_path, corpus_file, tmp_path):
    db = tmp_path / "warm_climb.db"
    fake = fake_compressor(lambda ids: 20, accept_init=True)
    sweep.run_sweep(climb_grid(trained_path, corpus_file, db, "--warm-start"), quiet=True,
                    compress_iter=fake)
    assert [c["lengths"][0] for c in fake.calls] == [8, 16, 24, 32]
    assert fake.calls[0]["init_mems"] == [None] * 3
    assert all(torch.equal(m, torch.full((1, 32), 16.0)) for m in fake.calls[2]["init_mems"])


def test_climb_shards_texts_across_ranks(trained_path, corpus_file, tmp_path, monkeypatch):
    """Two ranks (threads here, processes under torchrun) share each length's texts and wait for
    each other's rows before deciding: together they store what one process stores."""
    import threading

    import cramfast
    monkeypatch.setattr(sweep, "CLIMB_POLL_SECONDS", 0.02)
    cramfast.load_model(trained_path)                # loaded once, before the threads share it
    solo_db, db = tmp_path / "solo.db", tmp_path / "ranks.db"
    sweep.run_sweep(climb_grid(trained_path, corpus_file, solo_db), quiet=True,
                    compress_iter=fake_compressor(lambda ids: 20))
    g = climb_grid(trained_path, corpus_file, db)
    fakes = [fake_compressor(lambda ids: 20) for _ in range(2)]
    summaries, errors = {}, []

    def rank0_late_ahead(texts, *args, **kwargs):
        # rank 0's rows of the length ahead land well after those of the length being decided:
        # rank 1 must still wait for them before its next round (no race decides the rounds)
        for i, result in fakes[0](texts, *args, **kwargs):
            if len(texts[i]) > min(len(t) for t in texts):
                time.sleep(0.2)
            yield i, result

    def rank(r):
        try:
            summaries[r] = sweep.run_sweep(g, quiet=True, rank=r, world=2,
                                           compress_iter=rank0_late_ahead if r == 0 else fakes[1])
        except Exception as exc:      # shown by the assertion below
            errors.append(exc)
    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(summaries) == 2
    assert [p.name for p in store.family(db)] == ["ranks.rank0.db", "ranks.rank1.db"]
    shards = [{(r["sample"], r["length"]) for r in store.Store(p).rows()}
              for p in store.family(db)]
    assert not shards[0] & shards[1]
    assert shards[0] | shards[1] == {(r["sample"], r["length"]) for r in rows_of(solo_db)}
    assert [c["lengths"] for c in fakes[0].calls] == [[8] * 2 + [16] * 2, [24] * 2 + [32] * 2]
    assert [c["lengths"] for c in fakes[1].calls] == [[8, 16], [24, 32]]
    assert all(s.climb == summaries[0].climb for s in summaries.values())


def test_climb_grid_from_toml_and_refusals(tmp_path, capsys, corpus_file, trained_path):
    cfg = tmp_path / "climb.toml"
    cfg.write_text('sources = ["random"]\nclimb = true\n')
    g = grid_args("--config", str(cfg))
    assert g.climb and tuple(g.lengths) == grid.PAPER_LENGTHS     # the paper's grid by default
    assert g.settings_record()["climb"] is True
    assert g.settings_hash() == grid_args("--source", "random").settings_hash()  # not in the key
    assert grid_args("--config", str(cfg), "--lengths", "8,16").lengths == [8, 16]
    assert grid_args("--config", "paper-pg19", "--source", "random", "--climb").lengths == list(
        grid.PAPER_LENGTHS)
    base = ["--source", "random", "--quiet", "--db", str(tmp_path / "x.db")]
    err = one_line_error(capsys, base + ["--climb", "--search", "capacity"])
    assert "--climb and --search capacity do not combine" in err
    bad = tmp_path / "bad.toml"
    bad.write_text('sources = ["random"]\nclimb = "yes"\n')
    assert "climb must be true or false" in one_line_error(capsys, ["--config", str(bad)])
    assert not (tmp_path / "x.db").exists()


def test_torchrun_two_ranks_climb(trained_path, corpus_file, tmp_path, capsys):
    db = tmp_path / "climb_dist.db"
    args = ["--model", trained_path, "--source", str(corpus_file), "--lengths", "8,16,24",
            "--samples", "2", "--lr", "0.03", "--max-steps", "30", "--climb", "--db", str(db),
            "--quiet"]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2", "-m", "cramfast.sweep", *args], cwd=tmp_path,
                         env=env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    shards = store.family(db)
    assert [p.name for p in shards] == ["climb_dist.rank0.db", "climb_dist.rank1.db"]
    per_rank = [{(r["sample"], r["length"]) for r in store.Store(p).rows()} for p in shards]
    assert {s for s, _ in per_rank[0]} == {0} and {s for s, _ in per_rank[1]} == {1}
    assert {L for _, L in per_rank[0]} == {L for _, L in per_rank[1]}   # the same stop
    stored = len(rows_of(db))
    assert sweep.main(args) == 0           # one process: every length decided from the shards
    assert f"{stored} already stored, 0 rows written" in capsys.readouterr().out


def test_the_progress_bar_shows_token_steps_per_second_and_the_pool(capsys):
    bar = sweep.Progress(total=3, done=0, quiet=False, rank=0, world=1,
                         workers=lambda: "2 workers (1 replaced)")
    bar.update(1, tokens=10, steps=30)
    bar.update(1, tokens=20, steps=5)
    assert (bar.tokens, bar.token_steps) == (30, 400)
    postfix = bar.bar.postfix
    bar.close()
    assert "tok/s" in postfix and "token-steps/s" in postfix
    assert postfix.endswith("2 workers (1 replaced)")
