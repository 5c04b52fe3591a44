"""What checkpointing costs: the time taken to snapshot and save every text in flight, as a share
of the optimization's step time, with a save at every host sync (the most a run can save).

    pytest benchmarks/bench_checkpoint.py --benchmark-only
    CRAMFAST_BENCH_QUICK=1 pytest benchmarks/bench_checkpoint.py --benchmark-only

Work: the embedded model, N_TEXTS texts of L tokens from the books, m = 1, every text run for
exactly STEPS evaluations (lr 1e-9: none goes lossless), saved into a sweep's SQLite store
(the sweep's own CheckpointStore) at every sync (checkpoint_seconds 0, a save per
sync_every = 16 updates). Figures (extra_info), from Hooks.on_timing: ``step_seconds`` (the
"steps" phases), ``checkpoint_seconds`` (the "checkpoint" phases: snapshot, pack, write),
``share_every_sync`` = checkpoint / step seconds, ``seconds_per_save``, and
``share_at_default`` = seconds_per_save / the default checkpoint_seconds (one save a period,
the share of a long run's time). The target is share_every_sync <= 2 %.
"""
from __future__ import annotations

import pytest

from cramfast import compress
from cramfast.engine import Hooks
from cramfast.models import load_model
from cramfast.settings import BatchSettings
from cramfast.sweep.store import Store

from _common import bench_texts, machine, quick, texts_source

L = 16 if quick() else 64
N_TEXTS = 2 if quick() else 8
STEPS = 32 if quick() else 128


@pytest.fixture(scope="module")
def lm():
    return load_model("smollm2-135m-q4")


def test_checkpoint_cost(benchmark, lm, tmp_path):
    token_lists = bench_texts(lm.tokenizer, L, N_TEXTS)
    timings = []
    hooks = Hooks(on_timing=timings.append)

    def run():
        timings.clear()
        with Store(tmp_path / "ckpt.db") as store:
            return compress(token_lists, model=lm, hooks=hooks, checkpoint=store, lr=1e-9,
                            preset="paper", max_steps=STEPS - 1, patience=10 * STEPS,
                            max_slots=N_TEXTS, checkpoint_seconds=0)

    results = benchmark.pedantic(run, rounds=1, iterations=1)
    assert [r.steps + 1 for r in results] == [STEPS] * N_TEXTS
    step = sum(t.seconds for t in timings if t.phase == "steps")
    saves = [t for t in timings if t.phase == "checkpoint"]
    spent = sum(t.seconds for t in saves)
    assert len(saves) == STEPS // BatchSettings().sync_every - 1   # the last sync ends them
    benchmark.extra_info.update(
        machine=machine(), texts=texts_source(), n_texts=N_TEXTS, length=L, steps=STEPS,
        saves=len(saves), step_seconds=round(step, 3), checkpoint_seconds=round(spent, 4),
        seconds_per_save=round(spent / len(saves), 5),
        share_every_sync=round(spent / step, 5),
        share_at_default=round(spent / len(saves) / BatchSettings().checkpoint_seconds, 6))
