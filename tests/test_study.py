"""The optimizer study: candidates share one batch and give the same numbers as separate runs."""
import pytest
import torch

import cramfast
from cramfast.study import runner as study

from conftest import CORPUS, corpus_texts


def test_candidates_in_one_batch_match_separate_runs(trained_path, tmp_path):
    # fp64: exact equality across batch shapes; in fp32 a step's rounding depends on the shape
    # (and the CPU's kernels), and a threshold crossed one step apart changes the counts
    lm = cramfast.load_model(trained_path, dtype=torch.float64)
    texts = corpus_texts(lm.tokenizer, [7, 12, 9], seed=5)
    candidates = {"a": {"lr": 0.03}, "b": {"lr_std": 0.5}}
    per_text = []
    rows = study.run_optimizer_study(lm, {12: texts}, [1], candidates, max_steps=200,
                                     texts_out=per_text)
    assert [r["candidate"] for r in rows] == ["a", "b"]
    assert len(per_text) == 6 and {t["candidate"] for t in per_text} == {"a", "b"}
    for row, cand in zip(rows, candidates.values()):
        alone = cramfast.compress(texts, model=lm, max_steps=200, preset="paper", **cand)
        assert row["lossless"] == sum(r.exact for r in alone)
        assert row["token_steps"] == sum(r.steps * (r.n_tokens + 1) for r in alone)
        assert row["mean_accuracy"] == round(sum(r.accuracy for r in alone) / 3, 4)
        assert row["decode_retried"] == sum(r.decode_retries > 0 for r in alone)
        mine = [t for t in per_text if t["candidate"] == row["candidate"]]
        assert [t["steps"] for t in mine] == [r.steps for r in alone]
    assert rows[1]["lr"] == 0.5 * lm.embedding_std()
    study.plot(rows, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_parse_candidate():
    """A candidate is complete: every per-text setting, from its preset (default "paper"), so
    nothing leaks in from the preset the study's batch is run with."""
    paper = study.parse_candidate("paper")
    assert paper["lr"] == 1e-2 and paper["lr_std"] == 0 and paper["decay_steps"] == 0
    assert paper["stall_steps"] == 0 and "fill_slots" not in paper
    assert "max_steps" not in paper and "patience" not in paper   # the study's budget applies
    assert study.parse_candidate("lr=0.5std+decay_steps=300+stall_steps=100+restart=perturb") == \
        dict(paper, lr_std=0.5, decay_steps=300, stall_steps=100, restart="perturb")
    assert study.parse_candidate("lr=0.02+beta2=0.99") == dict(paper, lr=0.02, beta2=0.99)
    fast = study.parse_candidate("fast")
    assert fast["optimizer"] == cramfast.presets.PRESETS["fast"]["optimizer"] == "lamb"
    assert fast["stall_steps_per_token"] == \
        cramfast.presets.PRESETS["fast"]["stall_steps_per_token"] == 10.0
    assert study.parse_candidate("fast+stall_steps=0+lr=0.05") == \
        dict(fast, stall_steps=0, stall_steps_per_token=0.0, lr=0.05)   # explicit wins
    assert study.parse_candidate("fast+optimizer=adamw+lr=1std") == \
        dict(fast, optimizer="adamw", lr_std=1.0)
    for bad, why in [("lr=abc", "must be a float"), ("sync_every=3", "expected key=value"),
                     ("lr", "expected key=value"), ("turbo", "expected key=value"),
                     ("fast+fill_slots=2", "whole study batch")]:
        with pytest.raises(cramfast.CramfastError, match=why):
            study.parse_candidate(bad)


def test_capacity_lines_are_a_lower_bound_over_lengths_tried():
    rows = [dict(length=16, n_mem=1, candidate="paper", mean_accuracy=1.0),
            dict(length=32, n_mem=1, candidate="paper", mean_accuracy=0.95),
            dict(length=16, n_mem=1, candidate="fast", mean_accuracy=0.995),
            dict(length=32, n_mem=1, candidate="fast", mean_accuracy=0.991),
            dict(length=16, n_mem=2, candidate="fast", mean_accuracy=0.9)]
    lines = study.capacity_lines(rows)
    assert lines[0].startswith("capacity, m=1, paper: 16 ")
    assert lines[1].startswith("capacity, m=1, fast: 32 ")
    assert lines[2].startswith("capacity, m=2, fast: < 16 ")
    assert all("lower bound" in line for line in lines)


def test_markdown_keeps_its_layout():
    rows = [dict(length=16, candidate="paper", lossless=3, median_steps=12.5, p90_steps=1234.5678),
            dict(length=32, candidate="fast", lossless=0, median_steps=7.0, p90_steps=0.1)]
    assert study.markdown(rows) == (
        "| length | candidate | lossless | median_steps | p90_steps |\n"
        "|---|---|---|---|---|\n| 16 | paper | 3 | 12.5 | 1235 |\n"
        "| 32 | fast | 0 | 7 | 0.1 |")


def test_cli_errors_are_one_line_naming_the_flag(trained_path, tmp_path, capsys):
    book = tmp_path / "book.txt"
    book.write_text(CORPUS)
    for argv, why in (
            (["--candidates", "lr=abc"], "must be a float (flag --candidates)"),
            (["--model", trained_path, "--file", str(tmp_path / "none.txt")], "no such file"),
            (["--max-steps", "-1", "--model", trained_path, "--file", str(book), "--lengths", "8",
              "--texts", "1", "--n-mem", "1"], "--max-steps: must be >= 0")):
        argv = ["optimizer", "--file", str(tmp_path / "none.txt"), "--out", str(tmp_path / "o"),
                *argv]
        try:
            code = study.main(argv)
        except SystemExit as exit_:            # refused by the flag's own check, in argparse
            code = exit_.code
        assert code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("cramfast.study: error:") and "\n" not in err and why in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flag", ["--lengths", "--n-mem"])
@pytest.mark.parametrize("value", ["8,x", "8,-1", ","])
def test_list_flags_refuse_what_is_not_integers(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        study.main(["optimizer", "--file", str(tmp_path), flag, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cramfast.study: error: {flag}: expected comma-separated integers")
    assert "\n" not in err and repr(value) in err
