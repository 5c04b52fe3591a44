#!/usr/bin/env bash
# Every run of docs/capacity, one after another, each resumable: a run killed at any moment
# goes on from its store (finished rows and checkpoints of the texts in flight) when this is
# started again, and a finished run costs only its planning. The report at the end writes
# docs/capacity/report/ and docs/capacity/summary.json.
#
#   setsid bash -c 'echo 19 > /proc/self/autogroup; exec nice -n 19 bash docs/capacity/run_all.sh' \
#       > docs/capacity/run_all.log 2>&1 < /dev/null &
#
# (Linux shares the CPU between sessions before niceness counts: in a session of its own at
# autogroup nice 19 the run takes only the CPU other work leaves; `nohup nice` alone would
# still take half of it.) Append [BOOKS] after run_all.sh for another folder of books.
#
# BOOKS: a folder of .txt books, the PG-19 stand-in (default ../shared/data/books); PYTHON: the
# interpreter (default .venv/bin/python); CHECKPOINT_EVERY: seconds between checkpoints. On a
# GPU the same commands run unchanged (the batch is sized to the device): gpu_session.sh runs
# this script in its capacity step.
set -euo pipefail
cd "$(dirname "$0")/../.."
BOOKS=${1:-../shared/data/books}
PY=${PYTHON:-.venv/bin/python}
OUT=docs/capacity
EVERY=${CHECKPOINT_EVERY:-120}      # seconds between saves of the texts in flight
sweep() { "$PY" -m cramfast.sweep --checkpoint-every "$EVERY" --quiet "$@"; }

# Table 1, the embedded model's row: prose and random words, fast and paper, one vector
sweep --config capacity-pg19 --source "$BOOKS" --preset fast --db $OUT/pg19-fast.db
sweep --config capacity-random --preset fast --db $OUT/random-fast.db
# the published settings take most of their budget on every text: 8 passages (the grids' first 8)
sweep --config capacity-pg19 --source "$BOOKS" --preset paper --samples 8 --db $OUT/pg19-paper.db
sweep --config capacity-random --preset paper --samples 8 --db $OUT/random-paper.db
# Fig 4: m = 2 and 4 (m = 1 is the first run's)
sweep --config capacity-nmem --source "$BOOKS" --preset fast --db $OUT/nmem-fast.db
# the controlled table: one factor changed per run, the first 8 passages of the first run
for factor in "--max-steps 600" "--set mem_position=after_bos" "--set mem_position=before_bos"; do
    # shellcheck disable=SC2086  # the factor is a flag and its value
    sweep --config capacity-controls --source "$BOOKS" --preset fast $factor --db $OUT/controls.db
done
for factor in "--max-steps 600" "--set lr=0.5std"; do
    # shellcheck disable=SC2086
    sweep --config capacity-controls --source "$BOOKS" --preset paper $factor --db $OUT/controls.db
done

"$PY" -m cramfast.report $OUT/pg19-fast.db $OUT/random-fast.db $OUT/pg19-paper.db \
    $OUT/random-paper.db $OUT/nmem-fast.db --out $OUT/report
cp $OUT/report/summary.json $OUT/summary.json
# the controlled table over the same 8 passages: the controls and the first runs' baselines
"$PY" -m cramfast.report $OUT/controls.db $OUT/pg19-fast.db $OUT/pg19-paper.db \
    $OUT/random-fast.db --samples 8 --out $OUT/controls
