"""Every probe of benchmarks/probes/ runs, at a tiny size on the pretrained tiny model, as the
command line it is, and prints the results it promises (parsed, checked against each other and
against the sizes asked for). A probe without a tiny run here fails, so a new probe gets one.

The probes start together, each a process of its own that spends most of its time importing
torch and transformers, so the file takes about half their summed time on two idle cores."""
import ast
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CORPUS

ROOT = Path(__file__).resolve().parents[1]
PROBES = sorted(p.stem for p in (ROOT / "benchmarks" / "probes").glob("*.py")
                if not p.name.startswith("_"))
N, L = 3, 8                # texts and tokens of the tiny runs
BUDGET = 40                # steps: enough for the tiny model to get some passages lossless


def numbers(text: str) -> list:
    return ast.literal_eval(text)


def check_e2e_timeline(lines):
    head = re.fullmatch(r"[\d.]+ s, (\d+)/(\d+) lossless, steps (\[.*\]), attempts (\[.*\])",
                        lines[0])
    assert head, lines[0]
    lossless, texts = int(head[1]), int(head[2])
    steps, attempts = numbers(head[3]), numbers(head[4])
    assert texts == N and 0 <= lossless <= N and len(steps) == len(attempts) == N
    assert all(0 < s <= BUDGET for s in steps) and all(a >= 1 for a in attempts)
    batches = [re.fullmatch(r"(\d+) texts in the batch: (\d+) steps, ([\d.]+) s", line)
               for line in lines[1:-1]]
    assert batches and all(batches), lines
    assert all(int(b[1]) >= 1 for b in batches)
    assert sum(int(b[2]) for b in batches) > max(steps)      # the last evaluation updates too
    tail = re.fullmatch(r"steps ([\d.]+) s, metrics and decode checks ([\d.]+) s", lines[-1])
    assert tail, lines[-1]
    assert float(tail[1]) == pytest.approx(sum(float(b[3]) for b in batches),
                                           abs=0.05 * (len(batches) + 1))


def check_hard_texts_stall(lines):
    rows = [line.strip("|").split("|") for line in lines if line.startswith("| ")]
    header, rows = [c.strip() for c in rows[0]], [[c.strip() for c in r] for r in rows[1:]]
    rows = [dict(zip(header, r)) for r in rows]
    assert [r["candidate"] for r in rows] == ["fast+stall_steps=0", "fast",
                                              "fast+restart=perturb"]
    records = [ast.literal_eval(line) for line in lines if line.startswith("{")]
    assert len(records) == 2 * len(rows)
    for row in rows:
        mine = [t for t in records if t["candidate"] == row["candidate"]]
        assert int(row["texts"]) == len(mine) == 2 and int(row["length"]) == L
        assert 0 <= int(row["lossless"]) <= 2
        assert int(row["lossless"]) == sum(t["exact"] for t in mine)
        assert all(0 < t["steps"] <= BUDGET for t in mine)


def check_init_probe(lines):
    [line] = lines
    m = re.fullmatch(r"L=(\d+) BOW=0.5 UP/DOWN=1.1/0.5 \{'init_scale': 2.0\}: lossless "
                     r"(\d+)/(\d+), median ([\d.]+), steps (\[.*\])", line)
    assert m, line
    lossless, texts, median, steps = int(m[2]), int(m[3]), float(m[4]), numbers(m[5])
    assert int(m[1]) == L and texts == N and 0 <= lossless <= N
    assert steps == sorted(steps) and len(steps) == N and all(0 < s <= BUDGET for s in steps)
    assert sum(s < BUDGET for s in steps) <= lossless          # unsolved count as the budget
    assert median == statistics.median(steps)


def check_lbfgs_probe(lines):
    runs = [re.fullmatch(r"(\d+) (\d+) (True|False) (\d+) \d+ s", line) for line in lines[:-1]]
    assert len(runs) == N and all(runs), lines
    assert [int(r[1]) for r in runs] == list(range(N))
    for r in runs:
        assert int(r[2]) >= 1 and 0 <= int(r[4]) <= L - 1
        assert (r[3] == "True") == (int(r[4]) == L - 1)
    m = re.fullmatch(r"lossless (\d+)/(\d+), median evaluations ([\d.]+)", lines[-1])
    assert m, lines[-1]
    assert int(m[1]) == sum(r[3] == "True" for r in runs) and int(m[2]) == N
    assert float(m[3]) == statistics.median(int(r[2]) for r in runs)


def check_restart_mix_probe(lines):
    [line] = lines
    m = re.fullmatch(r"random redraws, L=8: (.*)", line)
    assert m, line
    runs = re.findall(r"scale(\d+)/text(\d+): (\d+)(r*)( \(not lossless\))?", m[1])
    # the passages that restarted in the init study, at L = 8
    assert [(int(s), int(t)) for s, t, *_ in runs] == [(10, 16), (10, 21), (10, 23), (20, 13),
                                                       (20, 20)]
    assert all(0 < int(steps) <= BUDGET for _, _, steps, _, _ in runs)


def check_length_groups_probe(lines):
    arms = [re.fullmatch(r"(length groups|one padded batch): (\d+) ms per step \(best of 2\), "
                         r"(\d+) us per token", line) for line in lines[:2]]
    assert len(lines) == 3 and all(arms), lines
    assert [a[1] for a in arms] == ["length groups", "one padded batch"]
    tokens = N * (L + 2 * L)                    # --texts N of each of the two lengths
    for a in arms:                              # the two figures are one measurement, rounded
        assert int(a[3]) * tokens / 1000 == pytest.approx(int(a[2]), abs=0.5 + 0.01 * tokens)
    ratio = re.fullmatch(r"padded / grouped: ([\d.]+)", lines[2])
    assert ratio and float(ratio[1]) > 0


def check_step_live_probe(lines):
    arms = [re.fullmatch(r"(leave at once|ride to the sync) [\d.]+ s (\[.*\])", line)
            for line in lines]
    assert len(arms) == 2 and all(arms), lines
    assert [a[1] for a in arms] == ["leave at once", "ride to the sync"]
    for a in arms:
        steps = numbers(a[2])
        assert len(steps) == N and all(0 < s <= BUDGET for s in steps)


def check_step_time_by_batch(lines):
    rows = [re.fullmatch(r"B=\s*(\d+): (\d+) ms per step, ([\d.]+) ms per text-step", line)
            for line in lines]
    assert len(rows) == 2 and all(rows), lines
    assert [int(r[1]) for r in rows] == [1, 2]
    for r in rows:                 # the two figures are one measurement, printed rounded
        assert float(r[3]) * int(r[1]) == pytest.approx(int(r[2]), abs=0.5 + 0.05 * int(r[1]))


def check_tail_levers(lines):
    rows = [re.fullmatch(r"(\S+) [\d.]+ s (\d+) lossless (\[.*\])", line) for line in lines]
    assert len(rows) == 3 and all(rows), lines
    assert [r[1] for r in rows] == ["-", "paper", "stall_steps=0,fill_slots=0"]
    for r in rows:
        per_text = numbers(r[3])            # (steps, restarts, attempts, accuracy)
        assert len(per_text) == N and int(r[2]) == sum(acc == 1.0 for *_, acc in per_text)
        assert all(0 < s <= BUDGET and restarts >= 0 and attempts >= 1 and 0 <= acc <= 1
                   for s, restarts, attempts, acc in per_text)
    assert all(attempts == 1 for _, _, attempts, _ in numbers(rows[2][3]))   # fill_slots=0


def check_update_rules_probe(lines):
    rules = [re.fullmatch(r"(\w+) 1.0 eta=0.1 decay=1 wd=1.0 \d+s lossless (\d+)/(\d+) median "
                          r"([\d.]+) (\[.*?\]) (\[.*?\]) exact (\d+) norms (\[.*?\])", line)
             for line in lines]
    assert len(rules) == 6 and all(rules), lines
    assert [r[1] for r in rules] == ["adam", "lion", "normgd", "adamnorm", "lamb", "relgd"]
    for r in rules:
        lossless, texts, median = int(r[2]), int(r[3]), float(r[4])
        steps, accuracy, norms = numbers(r[5]), numbers(r[6]), numbers(r[8])
        assert texts == len(steps) == len(accuracy) == len(norms) == N
        assert lossless == sum(a == 1.0 for a in accuracy) and int(r[7]) <= lossless
        assert median == statistics.median(steps) and all(0 < s <= BUDGET for s in steps)
        assert all(0 < n < float("inf") for n in norms)


# probe -> (its arguments besides --model and --file, the check of its output lines)
def check_travel_probe(lines):
    made = re.fullmatch(r"made in fp32: (\d+)/(\d+) lossless, smallest margin (\S+), settings "
                        r"\['margin=0.5'\]", lines[0])
    assert made, lines[0]
    lossless, texts = int(made[1]), int(made[2])
    assert texts == N and 0 <= lossless <= N
    if lossless:
        # every lossless mem has its margin, as the loop saw it; the probe's figure is the final
        # evaluation's, another batch shape's rounding of the same logits
        assert float(made[3]) >= 0.5 - 1e-3
    decoded = [re.fullmatch(r"decoded in (\w+), batch (\d+): (\d+)/(\d+) exact", line)
               for line in lines[1:]]
    assert [(d[1], d[2]) for d in decoded] == [("bf16", "1"), ("fp32", "2")]
    assert all(0 <= int(d[3]) <= int(d[4]) == lossless for d in decoded)
    assert int(decoded[1][3]) == lossless       # the precision it was made in gives them back


TINY = {
    "e2e_timeline": (["--texts", N, "--length", L, "--steps", BUDGET], check_e2e_timeline),
    "hard_texts_stall": (["--length", L, "--sample", 2, "--texts", "0,1", "--steps", BUDGET],
                         check_hard_texts_stall),
    "init_probe": (["--length", L, "--texts", N, "--steps", BUDGET, "--bow", 0.5, "--bow-tokens",
                    "rest", "--up", 1.1, "--down", 0.5, "init_scale=2"], check_init_probe),
    "length_groups_probe": (["--lengths", f"{L},{2 * L}", "--texts", N, "--steps", 3,
                             "--repeats", 2], check_length_groups_probe),
    "lbfgs_probe": (["--texts", N, "--length", L, "--cap", 40], check_lbfgs_probe),
    "restart_mix_probe": (["--redraws", "random", "--lengths", L, "--steps", BUDGET],
                          check_restart_mix_probe),
    "step_live_probe": (["--texts", N, "--length", L, "--steps", BUDGET], check_step_live_probe),
    "step_time_by_batch": (["--length", L, "--batches", "1,2", "--steps", 4],
                           check_step_time_by_batch),
    "tail_levers": (["--texts", N, "--length", L, "--steps", BUDGET, "-", "paper",
                     "stall_steps=0,fill_slots=0"], check_tail_levers),
    "update_rules_probe": (["--texts", N, "--length", L, "--steps", BUDGET, "adam", "lion",
                            "normgd", "adamnorm", "lamb", "relgd"], check_update_rules_probe),
    "travel_probe": (["--texts", N, "--length", L, "--steps", BUDGET, "--made", "fp32",
                      "--decode", "bf16:1,fp32:2", "margin=0.5"], check_travel_probe),
}


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    """40 paragraphs of CORPUS's words (overlapping windows): enough passage starts for the
    probes that draw 24 passages."""
    words = CORPUS.split()
    path = tmp_path_factory.mktemp("probes") / "corpus.txt"
    path.write_text("\n\n".join(" ".join(words[i:i + 12]) for i in range(0, 120, 3)) + "\n")
    return path


def command(name: str, args, model: str, file) -> list[str]:
    return [sys.executable, str(ROOT / "benchmarks" / "probes" / f"{name}.py"), *map(str, args),
            "--model", model, "--file", str(file)]


@pytest.fixture(scope="module")
def probe_runs(trained_path, corpus_file):
    """name -> (exit code, stdout, stderr) of every probe's tiny run, and "bad input": a probe
    given a file that is not there; all started at once."""
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    commands = {name: command(name, args, trained_path, corpus_file)
                for name, (args, _) in TINY.items() if name in PROBES}
    commands["bad input"] = command("tail_levers", [], trained_path,
                                    corpus_file.parent / "absent.txt")
    started = {name: subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
               for name, cmd in commands.items()}
    runs = {}
    try:
        for name, proc in started.items():
            out, err = proc.communicate(timeout=600)
            runs[name] = (proc.returncode, out, err)
    finally:
        for proc in started.values():
            if proc.poll() is None:
                proc.kill()
    return runs


def test_every_tiny_run_is_of_a_probe():
    assert PROBES and set(TINY) <= set(PROBES), sorted(set(TINY) - set(PROBES))


@pytest.mark.parametrize("name", PROBES)
def test_probe_runs_and_prints_its_results(name, probe_runs):
    assert name in TINY, f"benchmarks/probes/{name}.py has no tiny run in tests/test_probes.py"
    code, out, err = probe_runs[name]
    assert code == 0, err[-3000:]
    TINY[name][1](out.strip().splitlines())


def test_bad_input_is_one_line_and_exit_2(probe_runs, corpus_file):
    code, out, err = probe_runs["bad input"]
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        f"tail_levers.py: error: {corpus_file.parent / 'absent.txt'}: no such file or directory"]
