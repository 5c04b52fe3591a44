"""python -m cramfast.sweep.status: the rows a store holds per group and length, and the texts
in flight from its checkpoints, read from a store a sweep wrote and a run stopped mid-way."""
import shutil

import pytest

import cramfast
from cramfast.sweep import runner as sweep
from cramfast.sweep import status, store

from conftest import TRAINED, corpus_texts, write_rotated_corpus

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class Stop(Exception):
    """Stands in for a kill: raised right after the store's second save of the texts in flight."""


class StopAfterTwoSaves(store.Store):
    saves = 0

    def put(self, records):
        super().put(records)
        self.saves += 1
        if self.saves == 2:
            raise Stop


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """A store with 2 lengths x 2 rows from a sweep, and 2 texts of 40 tokens in flight."""
    tmp = tmp_path_factory.mktemp("status")
    path = tmp / "s.db"
    assert sweep.main(["--model", str(TRAINED), "--source", str(write_rotated_corpus(tmp)),
                       "--lengths", "8,16", "--samples", "2", "--dtype", "fp64",
                       "--max-steps", "200", "--threads", "1", "--quiet",
                       "--db", str(path)]) == 0
    lm = cramfast.load_model(str(TRAINED), dtype="fp64")
    texts = corpus_texts(lm.tokenizer, [40, 40])
    with StopAfterTwoSaves(path) as saved, pytest.raises(Stop):
        list(cramfast.compress_iter(texts, model=lm, preset="paper", max_steps=200, lr=0.05,
                                    stall_steps=25, checkpoint=saved, checkpoint_seconds=0))
    return path


def test_status_counts_the_stored_rows_per_length_and_the_texts_in_flight(db):
    text = status.status(db)
    assert text.startswith(f"{db}: 4 row(s) stored, 2 text(s) in flight")
    stored = [line for line in text.splitlines() if line.startswith("| tiny-llama-trained")]
    assert [line.split(" | ")[4:6] for line in stored] == [["8", "2"], ["16", "2"]]
    assert stored[0].split(" | ")[3].startswith("paper, 200 steps [")   # the sweep's default
    [flight] = [line for line in text.splitlines() if line.startswith("| 1 | 40 |")]
    # compress_iter's own texts: their checkpoints say no job ("?"), the budget tells the group
    assert flight.split(" | ")[2:4] == ["?", "2"]           # both texts, at L = 40
    steps = flight.split(" | ")[4]
    assert 0 < int(steps.split("–")[0]) < 200               # part of the budget run
    # no rows stored at L = 40: its mean will end between the two texts' mean best and 1
    best = [float(b) for b in flight.split(" | ")[5].split("–")]
    low, high = (float(b) for b in flight.split(" | ")[8].rstrip(" |").split("–"))
    # the floor: the best so far less one of its 39 predicted positions (no margin asked)
    assert best[0] - 1 / 39 - 1e-3 <= low <= best[1] and high == 1.0
    assert "newest save 0 min ago" in text
    [left] = [line for line in text.splitlines() if line.startswith("at most ")]
    assert float(left.split()[2]) >= 0 and "at the pace so far" in left


class StopTheSweep(BaseException):
    """Stands in for a kill of a sweep, past any handler of Exception."""


@pytest.fixture(scope="module")
def labelled_db(tmp_path_factory):
    """A sweep's store stopped at its second save: L = 8 stored for 2 texts, the 2 texts of
    L = 40 in flight, their checkpoints labelled with their jobs."""
    tmp = tmp_path_factory.mktemp("labelled")
    path, corpus = tmp / "s.db", write_rotated_corpus(tmp)
    saves = []

    def put(self, records, put=store.Store.put):
        put(self, records)
        saves.append(len(records))
        if len(saves) == 2:
            raise StopTheSweep
    args = ["--model", str(TRAINED), "--source", str(corpus), "--samples", "2", "--dtype",
            "fp64", "--threads", "1", "--quiet", "--db", str(path), "--checkpoint-every", "0"]
    assert sweep.main(args + ["--lengths", "8", "--max-steps", "200"]) == 0
    with pytest.MonkeyPatch.context() as mp, pytest.raises(StopTheSweep):
        mp.setattr(store.Store, "put", put)
        sweep.main(args + ["--lengths", "8,40", "--max-steps", "200"])
    return path


def test_a_sweeps_texts_in_flight_are_labelled_with_their_jobs(labelled_db, tmp_path):
    with store.Store(labelled_db, create=False) as s:
        records = s.checkpoint_records()
    jobs = sorted(job for _, _, job in records)
    assert [(j.sample, j.length, j.n_mem) for j in jobs] == [(0, 40, 1), (1, 40, 1)]
    [group] = {j.settings_hash for j in jobs}
    assert {r["settings_hash"] for r in store.read_runs([labelled_db])} == {group}
    text = status.status(labelled_db)
    [flight] = [line for line in text.splitlines() if line.startswith("| 1 | 40 |")]
    assert flight.split(" | ")[2:4] == [group[:8], "2"]
    best = [float(b) for b in flight.split(" | ")[5].split("–")]
    low, high = (float(b) for b in flight.split(" | ")[8].rstrip(" |").split("–"))
    # the floor: the best so far less one of its 39 predicted positions (no margin asked)
    assert best[0] - 1 / 39 - 1e-3 <= low <= best[1] and high == 1.0
    # a finished text's label goes with its checkpoint
    copy = tmp_path / "copy.db"
    shutil.copy(labelled_db, copy)
    with store.Store(copy) as s:
        fingerprint = s.conn.execute("SELECT fingerprint FROM checkpoint_jobs").fetchone()[0]
        s.delete([fingerprint])
        assert len(s.checkpoint_records()) == 1
        assert s.conn.execute("SELECT COUNT(*) FROM checkpoint_jobs").fetchone()[0] == 1


def test_texts_of_another_budget_than_the_stored_group_get_no_bounds(db):
    rows = store.read_runs([db])
    with store.Store(db, create=False) as s:
        texts = status.in_flight(s.checkpoint_records())
    assert "| 0." in status.in_flight_table(texts, rows).splitlines()[-1]   # the same budget
    for t in texts:
        t["budget"]["max_steps"] = 5000
    assert status.in_flight_table(texts, rows).splitlines()[-1].endswith("| – |")


@pytest.mark.parametrize("max_steps, ends_at", [(200, 60), (40, 40)])
def test_a_text_that_never_beats_its_best_again_ends_when_its_status_says(tmp_path, max_steps,
                                                                          ends_at):
    """Texts that cannot improve (an lr of 1e-12 leaves every argmax where it was at the first
    evaluation) stop at patience 60 after that best, or at their budget where it comes first:
    the steps the status gives each when the run is stopped mid-way are the steps its rerun
    takes to end."""
    lm = cramfast.load_model(str(TRAINED), dtype="fp64")
    texts = corpus_texts(lm.tokenizer, [40, 40])
    kw = dict(model=lm, preset="paper", max_steps=max_steps, patience=60, lr=1e-12,
              stall_steps=0, fill_slots=0)
    path = tmp_path / "s.db"
    with StopAfterTwoSaves(path) as saved, pytest.raises(Stop):
        list(cramfast.compress_iter(texts, checkpoint=saved, checkpoint_seconds=0, **kw))
    with store.Store(path, create=False) as s:
        flight = status.in_flight(s.checkpoint_records())
    assert [t["steps"] + t["left_if_stuck"] for t in flight] == [ends_at, ends_at]
    assert all(0 < t["steps"] < ends_at for t in flight)
    [row] = status.in_flight_table(flight, []).splitlines()[2:]
    left = [ends_at - t["steps"] for t in flight]
    assert row.split(" | ")[7] == f"{min(left)}–{max(left)}"
    with store.Store(path) as s:
        results = cramfast.compress(texts, checkpoint=s, **kw)
    assert [(r.steps, r.stop_reason) for r in results] == [
        (ends_at, "stalled" if ends_at < max_steps else "max_steps")] * 2


def test_a_length_mean_ends_between_its_rows_with_the_best_so_far_and_every_text_lossless():
    assert status.mean_bounds([1.0, 0.9], [0.5, 0.8]) == pytest.approx((0.8, 0.975))
    assert status.mean_bounds([], [0.25]) == pytest.approx((0.25, 1.0))


def test_the_time_left_is_the_slowest_running_text_budget_at_its_pace():
    texts = [dict(length=40, seconds_left=1800.0), dict(length=80, seconds_left=7200.0),
             dict(readable=True, saved_at=0.0)]           # one whose attempts are all queued
    assert status.time_left(texts) == ("at most 2.0 h more at the pace so far (the texts "
                                       "running; 1 not started and a climb's later lengths not "
                                       "counted)")
    assert status.time_left([dict(length=40, seconds_left=None)]) == "no pace recorded yet"
    assert status.time_left(texts[:1], decided=3) == (
        "at most 0.5 h more at the pace so far (the texts running; a climb's later lengths not "
        "counted; 3 at lengths decided below 0.99 not counted: a climb leaves them)")


def test_a_length_whose_mean_ends_below_the_threshold_whatever_its_texts_do_is_marked(db):
    with store.Store(db, create=False) as s:
        texts = status.in_flight(s.checkpoint_records())
    rows = store.read_runs([db])
    [open_row] = status.in_flight_table(texts, rows).splitlines()[2:]
    assert not open_row.endswith("(below 0.99) |")            # 40: no rows, still open
    # the same texts taken to be at 16, where the two rows stored are made half right: even
    # were both to end lossless the mean would end at (0.5 + 0.5 + 2) / 4
    at16 = [dict(t, length=16) for t in texts]
    half = [dict(r, accuracy=0.5) for r in rows]
    [row] = status.in_flight_table(at16, half).splitlines()[2:]
    assert row.endswith("–0.7500 (below 0.99) |"), row
    assert status.status(db).count("(below 0.99)") == 0


def test_the_command_prints_every_store_and_a_path_that_is_not_one_is_a_one_line_error(
        db, tmp_path, capsys):
    assert status.main([str(db), str(db)]) == 0
    assert capsys.readouterr().out.count("2 text(s) in flight") == 2
    notdb = tmp_path / "notes.txt"
    notdb.write_text("not a store")
    assert status.main([str(notdb)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(
        "cramfast.sweep.status: error:"), err


def test_a_climb_labels_the_texts_it_submits_as_it_goes(tmp_path, monkeypatch):
    labelled, label = [], store.Store.label_checkpoints

    def recording(self, jobs):
        labelled.append(sorted(job.length for job in jobs.values()))
        return label(self, jobs)
    monkeypatch.setattr(store.Store, "label_checkpoints", recording)
    path = tmp_path / "climb.db"
    assert sweep.main(["--model", str(TRAINED), "--source", str(write_rotated_corpus(tmp_path)),
                       "--samples", "2", "--dtype", "fp64", "--threads", "1", "--quiet",
                       "--db", str(path), "--checkpoint-every", "0", "--lengths", "8,16,24",
                       "--max-steps", "200", "--climb"]) == 0
    # 8 and the length ahead, 16, start the batch; 24 joins it text by text (Stream.submit)
    # once 8 is decided
    assert labelled == [[8, 8, 16, 16], [24], [24]]
    assert {r["length"] for r in store.read_runs([path])} == {8, 16, 24}
    with store.Store(path, create=False) as s:     # every text finished: no label left
        assert s.checkpoint_records() == []
        assert s.conn.execute("SELECT COUNT(*) FROM checkpoint_jobs").fetchone()[0] == 0
