#!/usr/bin/env bash
# Every run of docs/capacity, each resumable: a run killed at any moment goes on from its store
# (finished rows and checkpoints of the texts in flight) when this is started again, and a
# finished run costs only its planning. The runs go in two chains side by side, one CPU thread
# each (on a 2-core CPU two one-thread processes step more texts per second than one process of
# two threads: docs/benchmarks.md); the report at the end, once both have ended, writes
# docs/capacity/report/ and docs/capacity/summary.json.
#
#   setsid bash -c 'echo 19 > /proc/self/autogroup; exec nice -n 19 bash docs/capacity/run_all.sh' \
#       >> docs/capacity/run_all.log 2>&1 < /dev/null &
#
# (Linux shares the CPU between sessions before niceness counts: in a session of its own at
# autogroup nice 19 the run takes only the CPU other work leaves; `nohup nice` alone would
# still take half of it.) Stop it with kill -TERM -- -PGID (the chains go with it): each sweep
# saves every text in flight at its next sync, then exits (with long texts on one thread, some
# minutes later: wait until no cramfast.sweep runs). Append [BOOKS] after run_all.sh for another
# folder of books.
#
# BOOKS: a folder of .txt books, the PG-19 stand-in (default ../shared/data/books); PYTHON: the
# interpreter (default .venv/bin/python); CHECKPOINT_EVERY: seconds between checkpoints;
# CHAINS: 2 (default, side by side, one thread each) or 1 (one after the other, torch's own
# thread count). On a GPU the same commands run unchanged (the batch is sized to the device):
# gpu_session.sh runs this script in its capacity step, CHAINS=1.
set -euo pipefail
cd "$(dirname "$0")/../.."
BOOKS=${1:-../shared/data/books}
PY=${PYTHON:-.venv/bin/python}
OUT=docs/capacity
EVERY=${CHECKPOINT_EVERY:-120}      # seconds between saves of the texts in flight
CHAINS=${CHAINS:-2}
THREADS=()
[[ $CHAINS == 2 ]] && THREADS=(--threads 1)
sweep() {
    echo "== $(date -u '+%F %H:%M') sweep $*"
    "$PY" -m cramfast.sweep --checkpoint-every "$EVERY" --quiet "${THREADS[@]}" "$@"
}

# The first chain: Table 1's prose row, then the controls at the paper's budget. The prose run
# with `fast` first (m = 1, the headline); Fig 4's m = 2 at 128 (8 passages; a lower bound on
# the capacity where its mean passes); the published settings on prose at 32 and 64 (8
# passages, the grid's first 8: `paper` takes most of its budget on every text), then at 16 (a
# short length: at most about 1.5 h), then their full climb, which reuses those rows (the same
# jobs); then the factors of the controlled table again at 5000 steps (the mem after and before
# the BOS, the learning rate), each about pg19-fast's time on its first 8 passages.
prose_table_then_controls() {
    sweep --config capacity-pg19 --source "$BOOKS" --preset fast --db $OUT/pg19-fast.db
    sweep --config capacity-nmem --source "$BOOKS" --preset fast --n-mem 2 --lengths 128 --db $OUT/nmem-fast.db
    sweep --config capacity-pg19 --source "$BOOKS" --preset paper --samples 8 --lengths 32,64 --db $OUT/pg19-paper.db
    sweep --config capacity-pg19 --source "$BOOKS" --preset paper --samples 8 --lengths 16 --db $OUT/pg19-paper.db
    sweep --config capacity-pg19 --source "$BOOKS" --preset paper --samples 8 --db $OUT/pg19-paper.db
    sweep --config capacity-controls --source "$BOOKS" --preset fast --set mem_position=after_bos --db $OUT/controls.db
    sweep --config capacity-controls --source "$BOOKS" --preset fast --set mem_position=before_bos --db $OUT/controls.db
    sweep --config capacity-controls --source "$BOOKS" --preset paper --set lr=0.5std --db $OUT/controls.db
}

# The second chain: the controlled table at the short budget, Table 1's random-word row, then
# Fig 4. The controls (one factor changed per run, the first 8 passages of pg19-fast's) at 600
# steps (a row costs about an hour of one CPU thread), beside `fast` and `paper` at 600, and
# the per-text search beside `fast` at 600 (its probes at the grid's lengths are the grid's
# rows); the published settings on random words at the paper's grid's first length, 8, below
# the grids' own (`paper` fails 16 there), and at 16 and 32 (8 passages); `paper` with the mem
# after the BOS at 600 steps (is the attention sink what holds `paper` down?); random words
# with `fast` at 5000 and the published settings' full climb; then Fig 4's m = 4 at 256 (8
# passages; 5000 batched steps of about 17.5 s: about 24 h if every passage ran its whole
# budget) and the full climbs of m = 2 and 4 (past their capacity every text runs its whole
# budget at lengths of 160 and more: days). Each store's jobs run in one chain only (two
# processes must not run the same texts), so Fig 4's m = 4 and climbs are all here.
controls_random_then_fig4() {
    sweep --config capacity-controls --source "$BOOKS" --preset fast --max-steps 600 --db $OUT/controls.db
    sweep --config capacity-controls --source "$BOOKS" --preset paper --max-steps 600 --db $OUT/controls.db
    sweep --config capacity-controls --source "$BOOKS" --preset fast --max-steps 600 --set mem_position=after_bos --db $OUT/controls.db
    sweep --config capacity-controls --source "$BOOKS" --preset fast --max-steps 600 --set mem_position=before_bos --db $OUT/controls.db
    sweep --config capacity-controls --source "$BOOKS" --preset paper --max-steps 600 --set lr=0.5std --db $OUT/controls.db
    sweep --config capacity-search --source "$BOOKS" --preset fast --max-steps 600 --db $OUT/controls.db
    sweep --config capacity-random --preset paper --samples 8 --lengths 8 --db $OUT/random-paper.db
    sweep --config capacity-random --preset paper --samples 8 --lengths 16,32 --db $OUT/random-paper.db
    sweep --config capacity-controls --source "$BOOKS" --preset paper --max-steps 600 --set mem_position=after_bos --db $OUT/controls.db
    sweep --config capacity-random --preset fast --db $OUT/random-fast.db
    sweep --config capacity-random --preset paper --samples 8 --db $OUT/random-paper.db
    sweep --config capacity-nmem --source "$BOOKS" --preset fast --n-mem 4 --lengths 256 --db $OUT/nmem-fast.db
    sweep --config capacity-nmem --source "$BOOKS" --preset fast --db $OUT/nmem-fast.db
}

if [[ $CHAINS == 2 ]]; then
    trap 'trap - TERM INT; kill -TERM 0' TERM INT     # a stop takes both chains with it
    # (a sweep takes a copy of the stop within a second as the same stop: engine/stopping.py)
    prose_table_then_controls & first=$!
    controls_random_then_fig4 & second=$!
    status=0
    wait $first || status=$?
    wait $second || status=$?
    (( status == 0 ))
else
    prose_table_then_controls
    controls_random_then_fig4
fi

"$PY" -m cramfast.report $OUT/pg19-fast.db $OUT/random-fast.db $OUT/pg19-paper.db \
    $OUT/random-paper.db $OUT/nmem-fast.db --out $OUT/report
cp $OUT/report/summary.json $OUT/summary.json
# the controlled table over the same 8 passages: the controls and the first runs' baselines
"$PY" -m cramfast.report $OUT/controls.db $OUT/pg19-fast.db $OUT/pg19-paper.db \
    $OUT/random-fast.db --samples 8 --out $OUT/controls
