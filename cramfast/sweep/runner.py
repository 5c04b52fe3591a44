"""``python -m cramfast.sweep``: resumable capacity sweeps into an SQLite store.

    python -m cramfast.sweep --source book.txt --lengths 8,16,32 --n-mem 1,2 --samples 4 \
        --db runs.db
    python -m cramfast.sweep --config paper-pg19 --source ../pg19-test/      # a shipped grid
    torchrun --nproc-per-node 4 -m cramfast.sweep ...                        # ranks share the jobs
    python -m cramfast.report runs.db --out report/

The grid is models x sources x lengths x n_mem x samples x seeds (cramfast.grid). A job is one
(model, source, sample, length, n_mem, seed, settings) and is computed once: every finished job is
one row of the store (cramfast.store), written as soon as it finishes; rerunning the same command
skips the stored ones, so a sweep killed at any moment resumes where it was. Sample i of a source
is one text whatever the grid, its lengths prefixes of each other (cramfast.sources.open_source).

Modes beyond the paper's fixed grid:
  --search capacity   per text, the largest lossless L (every token right, decoded back) by doubling
                      from the smallest length then bisection (to --search-tol tokens); every
                      probe is a stored row (origin "search"), so a rerun replays and continues.
  --warm-start        each length starts from the mem found for the previous length of the same
                      text (a deviation from the paper's protocol, off by default; part of the
                      settings, so stored apart from cold runs).
  --climb             the grid's lengths (the paper's, without --lengths) in increasing order,
                      one length at a time per (model, source, n_mem, seed); a group stops after
                      CLIMB_PATIENCE consecutive lengths whose mean accuracy over its texts is
                      below the capacity threshold. A length is decided below as soon as its
                      stored rows keep the mean under the threshold whatever its other texts
                      do; those are withdrawn from the batch, their checkpoints kept (a plain
                      grid run of that length finishes them; --climb-finish runs them in the
                      climb). Its rows are the grid's (same keys): stored lengths count, so a
                      rerun goes on where the climb stopped.

Scale-out: under torchrun (RANK / WORLD_SIZE set) rank r takes every WORLD_SIZE-th job (text, in
the search, warm-start and climb modes) of the deterministic job list and writes
``DB.rank{r}.db``; every rank skips jobs stored in the DB or any of its shards;
``cramfast.report DB`` merges them. A climbing rank waits at each length for the other ranks'
rows (read from their shards, so they must share a folder) before deciding to go on.
Bad input, and a database that cannot be written: one line on stderr, exit code 2, checked before
any work; nothing stored is touched.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

import cramfast
from cramfast import models
from cramfast.cli.flags import add_flags, setting_flags
from cramfast.cli.threads import set_threads
from cramfast.cli.tools import Parser, at_least, run
from cramfast.engine.stopping import stop_on_signals
from cramfast.errors import CramfastError
from cramfast.metrics import CAPACITY_THRESHOLD
from cramfast.settings import StopReason
from cramfast.sources import CHUNKINGS
from cramfast.sweep import store
from cramfast.sweep.grid import (
    CLIMB_PATIENCE,
    DEFAULTS,
    Grid,
    SweepJobs,
    build_grid,
    climb_below,
    mean_at_most,
    shipped_grids,
    text_of,
)
from cramfast.sweep.store import JobKey

# what the runner keeps of each stored row (job key -> these): the accuracy decides a climb's
# lengths (the paper's mean), the stop reason a search's probes (lossless: decoded back)
STORED_COLUMNS = ("accuracy", "stop_reason")
CLIMB_POLL_SECONDS = 0.5   # a climbing rank's wait between reads of the other ranks' shards


def rank_world() -> tuple[int, int]:
    try:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise CramfastError("RANK and WORLD_SIZE must be integers") from None
    if world < 1 or not 0 <= rank < world:
        raise CramfastError(f"bad RANK={rank} / WORLD_SIZE={world}")
    return rank, world


def share(items: list, rank: int, world: int) -> list:
    """Rank ``rank``'s deterministic share: every ``world``-th item."""
    return items[rank::world]


# ---------------------------------------------------------------------------------------------
# running


class Progress:
    """tqdm bar (jobs done/total, ETA, tokens and token-steps of the finished jobs per second,
    and on a pool the workers' state) or, with quiet, a few plain lines."""

    def __init__(self, total: int, done: int, quiet: bool, rank: int, world: int, unit="job",
                 workers=None):
        self.quiet, self.start = quiet, time.perf_counter()
        self.tokens = self.token_steps = 0
        self.workers = workers          # None, or a callable: the pool's state in a few words
        self.prefix = f"[rank {rank}/{world}] " if world > 1 else ""
        self.bar = None
        if not quiet:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=done, unit=unit, dynamic_ncols=True,
                            position=rank if world > 1 else None,
                            desc=self.prefix.strip() or "sweep", file=sys.stderr)

    def log(self, message: str):
        if self.bar is not None:
            self.bar.write(self.prefix + message, file=sys.stderr)
        else:
            print(self.prefix + message, file=sys.stderr, flush=True)

    def update(self, n_jobs: int, tokens: int, steps: int = 0):
        """``n_jobs`` more done; the finished result's ``tokens`` and the ``steps`` it took."""
        self.tokens += tokens
        self.token_steps += tokens * steps
        if self.bar is not None:
            self.bar.update(n_jobs)
            seconds = max(time.perf_counter() - self.start, 1e-9)
            postfix = (f"{self.tokens / seconds:.1f} tok/s, "
                       f"{self.token_steps / seconds:.0f} token-steps/s")
            if self.workers is not None:
                postfix += f", {self.workers()}"
            self.bar.set_postfix_str(postfix, refresh=False)

    def skip(self, n_jobs: int):
        """``n_jobs`` will not run (a climb stopped): out of the total."""
        if self.bar is not None and n_jobs:
            self.bar.total -= n_jobs
            self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()


@dataclass
class Summary:
    db: str
    total: int = 0          # this rank's jobs (grid/warm) or texts (search)
    already: int = 0        # found stored at the start
    ran: int = 0            # rows written by this run
    skipped_context: int = 0
    seconds: float = 0.0
    search: dict = field(default_factory=dict)   # (model, source, sample, n_mem, seed) -> capacity
    mode: str = "grid"                           # grid | search | warm | climb
    # climb: (model, source, n_mem, seed) -> (last length run, "stopped" | "top")
    climb: dict = field(default_factory=dict)
    climb_lengths: int = 0  # (group, length) pairs past a climb's stop, not run
    climb_jobs: int = 0     # this rank's jobs at those lengths (not stored before)
    climb_unfinished: int = 0  # jobs at lengths decided below before they ended, left unrun

    def line(self) -> str:
        unit, done = ("texts", "probes") if self.mode == "search" else ("jobs", "")
        extra = (f", {self.skipped_context} past the context left out"
                 if self.skipped_context else "")
        if self.mode == "climb":
            extra += (f", {self.climb_lengths} length(s) past the climb's stop skipped "
                      f"({self.climb_jobs} jobs)")
            if self.climb_unfinished:
                extra += (f", {self.climb_unfinished} job(s) at lengths decided below left "
                          "unfinished")
        done = done + " " if done else ""
        return (f"cramfast.sweep: {self.total} {unit}, {self.already} {done}already stored, "
                f"{self.ran} rows written in {self.seconds:.1f} s{extra} -> {self.db}")


def run_sweep(grid: Grid, quiet: bool = False, compress_iter=None, rank: int | None = None,
              world: int | None = None, before_work=None, checkpoints: bool | None = None,
              workers=None) -> Summary:
    """Run (this rank's share of) the grid, storing each finished job at once; ``before_work``
    is called once the inputs are checked, before the first job (the CLI sets threads there);
    ``workers`` (a pool's ``status``) is shown on the progress bar.
    With ``checkpoints`` (default: when this process computes, with cramfast's own
    compress_iter), the texts in flight are saved in the store too (checkpoint_seconds), and a
    rerun resumes them."""
    if checkpoints is None:
        checkpoints = compress_iter is None
    compress_iter = compress_iter or cramfast.compress_iter
    if rank is None:
        rank, world = rank_world()
    world = world or 1
    db = store.shard_path(grid.db, rank) if world > 1 else Path(grid.db)
    out = store.Store(db)  # opened with a committed write: a --db that cannot be written fails now
    runner = None
    start = time.perf_counter()
    try:
        sweep_jobs = SweepJobs(grid)
        stored = store.family_key_values(grid.db, *STORED_COLUMNS)
        summary = Summary(db=str(db), skipped_context=0 if grid.search else sweep_jobs.skipped,
                          mode="search" if grid.search else "climb" if grid.climb
                          else "warm" if grid.warm_start else "grid")
        runner = _RankRunner(grid, sweep_jobs, out, stored, quiet, rank, world, compress_iter,
                             summary, out if checkpoints else None, workers)
        if before_work:
            before_work()
        if grid.search:
            runner.search()
        elif grid.climb:
            runner.climb()
        elif grid.warm_start:
            runner.warm()
        else:
            runner.grid_jobs()
    finally:
        if runner and runner.progress:
            runner.progress.close()
        out.close()
    summary.seconds = time.perf_counter() - start
    return summary


class _RankRunner:
    """Computes this rank's share of a sweep in one of the four modes (a method each), storing
    every finished job the moment it is yielded."""

    def __init__(self, grid, sweep_jobs, out, stored, quiet, rank, world, compress_iter, summary,
                 checkpoint, workers=None):
        self.grid, self.sweep_jobs, self.out, self.stored = grid, sweep_jobs, out, stored
        self.quiet, self.rank, self.world = quiet, rank, world
        self.compress_iter, self.summary = compress_iter, summary
        self.checkpoint = checkpoint        # the store, where texts in flight are saved
        self.progress, self.workers = None, workers
        self.record = grid.settings_record()
        self.loaded = None          # (model id, LoadedModel) of the model in memory
        self.unfinished = set()     # keys of jobs a climb decided not to end (_decide)

    # -- the four modes: the grid's jobs, warm-started lengths, the capacity search, the climb --

    def grid_jobs(self):
        mine = share(self.sweep_jobs.jobs, self.rank, self.world)
        todo = [j for j in mine if j.key not in self.stored]
        self._start(len(mine), len(mine) - len(todo))
        for (mid, n_mem, seed), jobs in _groups(todo, lambda j: (j.model, j.n_mem, j.seed)):
            lm = self._load(mid)
            self._compress(lm, jobs, n_mem, seed, origin="grid")

    def warm(self):
        units = set(share(self.sweep_jobs.texts(), self.rank, self.world))
        jobs = [j for j in self.sweep_jobs.jobs if text_of(j) in units]
        todo = [j for j in jobs if j.key not in self.stored]
        self._start(len(jobs), len(jobs) - len(todo))
        for (mid, n_mem, seed), group in _groups(todo, lambda j: (j.model, j.n_mem, j.seed)):
            lm = self._load(mid)
            # one round per length: it needs the last one's mem
            for length in self.grid.lengths:
                round_jobs = [j for j in group if j.length == length]
                if round_jobs:
                    self._compress(lm, round_jobs, n_mem, seed, origin="warm", warm=True)

    def search(self):
        units = share(self.sweep_jobs.texts(), self.rank, self.world)
        self._start(len(units), 0, unit="text")
        lo_len = min(self.grid.lengths) if self.grid.lengths_given else 8
        for (mid, n_mem, seed), group in _groups(units, lambda u: (u[0], u[3], u[4])):
            cap = self.sweep_jobs.contexts[mid] - n_mem if self.sweep_jobs.contexts[mid] else None
            if self.grid.lengths_given:
                cap = min(cap, max(self.grid.lengths)) if cap else max(self.grid.lengths)
            if cap is None:
                raise CramfastError(f"{mid}: no context limit; give --lengths MIN,MAX for the "
                                    "search")
            self._search_group(mid, n_mem, seed, group, lo_len, cap)

    def _search_group(self, mid, n_mem, seed, group, lo_len, cap):
        """The search of one (model, n_mem, seed) group's texts without rounds: each text's
        next probe joins the running batch the moment its last one is stored."""
        state = {u: [1, None] for u in group}   # lo: largest lossless, hi: smallest lossy

        def next_job(unit):
            """The text's next probe to compute, its stored probes taken as they come;
            None when its search has ended."""
            while True:
                length = next_probe(*state[unit], lo_len, cap, self.grid.search_tol)
                if length is None:
                    self.summary.search[unit] = state.pop(unit)[0]
                    self.progress.update(1, 0)
                    return None
                job = JobKey(mid, unit[1], unit[2], length, n_mem, seed,
                             self.sweep_jobs.hash)
                if job.key not in self.stored:
                    return job
                self.summary.already += 1
                taken(job)

        def taken(job):
            lossless = self.stored[job.key][1] == StopReason.LOSSLESS.label
            state[text_of(job)][0 if lossless else 1] = job.length

        def follow(job):            # a probe came back: the text's next one, at once
            taken(job)
            return next_job(text_of(job))

        first = [job for unit in list(state) if (job := next_job(unit)) is not None]
        if first:
            self._compress(self._load(mid), first, n_mem, seed, origin="search",
                           count=False, follow=follow, longest=cap)

    def climb(self):
        """The grid's lengths in increasing order for every (model, source, n_mem, seed) group:
        once a length's rows are all stored (every text's, every rank's), the group's mean
        accuracy there decides whether it goes on; so do fewer rows once they keep the mean
        below the threshold whatever the other texts do (_Climb.decide), and those texts are
        not run further (withdrawn from the running batch, their checkpoints kept). The length
        after the one running joins it where it runs whatever that mean is (_Climb.ahead), so
        no compute goes past the stop.
        In one process (or a Ray pool) the groups of one model / n_mem / seed share one batched
        call that runs without rounds: a length is decided the moment its last row is stored,
        and what runs next joins the running batch at once (_climb_stream). Under torchrun and
        with warm starts, in rounds (_climb_rounds). Lengths whose rows are all stored are
        decided without computing anything."""
        units = set(share(self.sweep_jobs.texts(), self.rank, self.world))
        mine = [j for j in self.sweep_jobs.jobs if text_of(j) in units]
        self._start(len(mine), sum(j.key in self.stored for j in mine))
        for (mid, n_mem, seed), jobs in _groups(self.sweep_jobs.jobs,
                                                lambda j: (j.model, j.n_mem, j.seed)):
            # every text's jobs (all ranks'), by source then length: what the means are over
            climbs = {src: _Climb(group) for src, group in _groups(jobs, lambda j: j.source)}
            if self.world == 1 and not self.grid.warm_start:
                self._climb_stream(mid, n_mem, seed, climbs, units)
            else:
                self._climb_rounds(mid, n_mem, seed, climbs, units)

    def _climb_stream(self, mid, n_mem, seed, climbs: dict, units):
        """One model / n_mem / seed's climbs in one batched call: each stored row may decide
        its source's length, and the jobs that decision lets run are submitted to the running
        call (the stream's; a compress_iter without one runs them in the next call). A
        length decided before all its texts ended takes those still running out of the call."""
        submitted, unfinished = set(), []

        def runnable(src) -> list:
            """What the stored rows decide for src's climb; the jobs it runs now, not yet
            given to the call."""
            state = climbs[src]
            left = self._decide((mid, src, n_mem, seed), state, units,
                                early=not self.grid.climb_finish)
            unfinished.extend(j for j in left if j.key in submitted)
            if state.done:
                self._climb_finished((mid, src, n_mem, seed), climbs.pop(src), units)
                return []
            todo = [j for j in state.current + state.ahead if j.key not in self.stored
                    and j.key not in submitted and j.length not in state.left]
            submitted.update(j.key for j in todo)
            return todo

        first = [j for src in list(climbs) for j in runnable(src)]
        if first:
            longest = max(max(state.lengths) for state in climbs.values())
            self._compress(self._load(mid), first, n_mem, seed, origin="climb",
                           follow=lambda job: runnable(job.source) if job.source in climbs
                           else [], longest=longest, withdraw=unfinished)
        for src in list(climbs):            # a job the compressor never gave: said in one line
            self._await(climbs[src].current)

    def _climb_rounds(self, mid, n_mem, seed, climbs: dict, units):
        """One model / n_mem / seed's climbs, one batched call per round: every group's next
        length (and the one after, where it runs either way), then, once every rank's rows of
        both are stored (read from their shards), the decisions: each rank decides from the
        same rows, so the rounds do not depend on which rank's rows land first (and so, with
        more than one rank, a length is decided only once every text's row is stored: fewer
        would be whichever of the others' rows had landed by then)."""
        lm = None
        while climbs:
            todo, waiting = [], []
            for src in list(climbs):
                state = climbs[src]
                self._decide((mid, src, n_mem, seed), state, units,
                             early=self.world == 1 and not self.grid.climb_finish)
                if state.done:
                    self._climb_finished((mid, src, n_mem, seed), climbs.pop(src), units)
                    continue
                ahead = [] if self.grid.warm_start else state.ahead  # warm: needs L's mem
                ahead = [j for j in ahead if j.length not in state.left]
                todo += [j for j in state.current + ahead
                         if text_of(j) in units and j.key not in self.stored]
                waiting += state.current + ahead
            if todo:
                lm = lm or self._load(mid)
                self._compress(lm, todo, n_mem, seed, origin="climb",
                               warm=self.grid.warm_start)
            self._await(waiting)

    def _decide(self, group, state, units, early=True) -> list:
        """The lengths the stored rows decide for this group's climb, in order; returns the
        jobs still to end (not stored) that will not run: those of a length decided below
        before all its texts ended (_Climb.decide; not without ``early``), and those of the
        length ahead once its rows keep its mean below the threshold (its verdict does not
        wait for the current length's)."""
        left = []
        while not state.done:
            length = state.lengths[state.index]
            if not state.decide(self.stored, early):
                break
            left += self._leave(group, state, length, units)
        if early and not state.done and state.ahead:
            length = state.lengths[state.index + 1]
            if state.mean_at_most(length, self.stored) < CAPACITY_THRESHOLD:
                left += self._leave(group, state, length, units)
        return left

    def _leave(self, group, state, length, units) -> list:
        """The jobs at ``length`` (decided below) not stored yet: left unfinished, once per
        length (_Climb.left), counted and said in one line."""
        missing = [j for j in state.jobs[length] if j.key not in self.stored]
        if not missing or length in state.left:
            return []
        state.left.add(length)
        mine = [j for j in missing if text_of(j) in units]
        self.unfinished.update(j.key for j in mine)
        self.summary.climb_unfinished += len(mine)
        self.progress.skip(len(mine))
        mid, src, n_mem, seed = group
        label = Path(mid).name if Path(mid).is_dir() else mid
        n = len(state.jobs[length])
        self.progress.log(
            f"climb: {label} / {self.sweep_jobs.sources[src].label} / n_mem {n_mem} / seed "
            f"{seed}: {length} decided below {CAPACITY_THRESHOLD:g} with {n - len(missing)} "
            f"of {n} texts stored (its mean ends at most "
            f"{state.mean_at_most(length, self.stored):.4f}); "
            f"{len(missing)} other text(s) left unfinished"
            + ("; their checkpoints stay in the store" if self.checkpoint else "")
            + f" (a grid run of --lengths {length} finishes them)")
        return missing

    def _climb_finished(self, group, state, units):
        left = state.lengths[state.index:]
        jobs = [j for L in left for j in state.jobs[L]
                if text_of(j) in units and j.key not in self.stored]
        self.summary.climb[group] = (state.lengths[state.index - 1], "stopped" if left else "top")
        self.summary.climb_lengths += len(left)
        self.summary.climb_jobs += len(jobs)
        self.progress.skip(len(jobs))
        if left:
            mid, src, n_mem, seed = group
            label = Path(mid).name if Path(mid).is_dir() else mid
            self.progress.log(f"climb: {label} / {self.sweep_jobs.sources[src].label} / n_mem "
                              f"{n_mem} / seed {seed}: stopped after "
                              f"{state.lengths[state.index - 1]} ({CLIMB_PATIENCE} lengths below "
                              f"{CAPACITY_THRESHOLD:g}); {len(left)} length(s) skipped")

    def _await(self, jobs):
        """Until every job of ``jobs`` is stored: the other ranks' rows, read from their shards."""
        missing = [j for j in jobs if j.key not in self.stored]
        if missing and self.world == 1:   # nothing else writes: a job the compressor never gave
            raise CramfastError(f"{len(missing)} job(s) of the climb were not stored (e.g. "
                                f"{missing[0].source} sample {missing[0].sample} length "
                                f"{missing[0].length})")
        since, said = time.perf_counter(), False
        while missing:
            time.sleep(CLIMB_POLL_SECONDS)
            for key, values in store.family_key_values(self.grid.db, *STORED_COLUMNS).items():
                self.stored.setdefault(key, values)
            missing = [j for j in missing if j.key not in self.stored]
            if missing and not said and time.perf_counter() - since > 30:
                # a rank that never writes (not started, its shard elsewhere) shows here
                self.progress.log(f"climb: waiting for {len(missing)} job(s) of the other ranks "
                                  f"in the shards of {self.grid.db}")
                said = True

    # -- shared machinery --------------------------------------------------------------------

    def _start(self, total, done, unit="job"):
        self.summary.total, self.summary.already = total, done
        self.progress = Progress(total, done, self.quiet, self.rank, self.world, unit,
                                 self.workers)
        if self.summary.skipped_context:
            self.progress.log(f"{self.sweep_jobs.skipped} job(s) left out: length + n_mem past the "
                              "model's context")

    def _load(self, mid):
        if self.loaded and self.loaded[0] != mid:   # one model in memory at a time
            models.unload(self.loaded[1])
            self.loaded = None
        device = None
        if self.world > 1 and torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
        lm = cramfast.load_model(self.sweep_jobs.models[mid], dtype=self.grid.dtype, device=device)
        self.model_info = dict(label=Path(mid).name if Path(mid).is_dir() else mid,
                               hidden_size=lm.hidden_size, vocab_size=lm.vocab_size,
                               max_cap=lm.theoretical_capacity(), context=lm.max_positions)
        self.loaded = (mid, lm)
        return lm

    def _compress(self, lm, jobs, n_mem, seed, origin, warm=False, count=True, follow=None,
                  longest=None, withdraw=None):
        """Compute ``jobs`` in one batched call and store each row as it comes. ``follow(job)``
        (a search, a climb): called on each stored job, returns the next job, a list of them or
        None; each joins the running batch (Stream.submit, the engine's or a Ray pool's; ``longest``
        its most tokens), or, with a compress_iter that takes no more texts, a next call.
        ``withdraw`` (a climb's): a list the follow-ups append jobs to that are not to end; each
        is taken out of the running batch (Stream.withdraw, where the stream has it) or dropped
        from the next call. One that ended meanwhile is stored as any other."""
        jobs, texts = list(jobs), [self.sweep_jobs.tokens(j, lm.tokenizer) for j in jobs]
        kwargs = {} if follow is None or longest is None else {"longest": longest}
        inits = [None] * len(jobs)
        if warm:
            inits = [self._previous(j) for j in jobs]
            kwargs["init_mems"] = [None if i is None else i[1] for i in inits]
        saved = self.checkpoint.checkpoints() if self.checkpoint else 0
        self.progress.log(f"{self.model_info['label']}: n_mem {n_mem}, seed {seed}: "
                          f"{len(jobs)} job(s) to run"
                          + (f" ({saved} checkpoint(s) in the store)" if saved else ""))
        if self.checkpoint:
            kwargs["checkpoint"] = self.checkpoint
        results = self.compress_iter(texts, model=lm, n_mem=n_mem, seed=seed,
                                     backend=self.grid.backend, preset=self.grid.preset,
                                     **self.grid.optim, **kwargs)
        self._label_checkpoints(results, dict(enumerate(jobs)))
        later, withdraw = [], [] if withdraw is None else withdraw
        for index, result in results:
            job = jobs[index]
            row = store.result_row(result, key=job.as_dict(), origin=origin,
                                   model_info=self.model_info,
                                   source_label=self.sweep_jobs.sources[job.source].label,
                                   init_from=inits[index][0] if inits[index] else None,
                                   sweep=self.record, rank=self.rank)
            if self.out.add(row):
                self.summary.ran += 1
            self.stored[job.key] = (result.accuracy, result.stop_reason)
            counted = count
            if job.key in self.unfinished:      # ended before it could be withdrawn: skipped
                self.unfinished.discard(job.key)
                self.summary.climb_unfinished -= 1
                counted = False
            self.progress.update(1 if counted else 0, result.n_tokens, result.steps)
            following = follow(job) if follow else None
            following = [] if following is None else following if isinstance(
                following, list) else [following]
            for job in following:
                if not hasattr(results, "submit"):
                    later.append(job)
                    continue
                index = results.submit(self.sweep_jobs.tokens(job, lm.tokenizer))
                if index != len(jobs):          # indices go on from the first texts'
                    raise RuntimeError(f"the stream gave index {index}, expected {len(jobs)}")
                jobs.append(job)
                inits.append(None)
                self._label_checkpoints(results, {index: job})
            while withdraw:
                gone = withdraw.pop()
                later = [j for j in later if j.key != gone.key]
                running = [i for i, j in enumerate(jobs) if j.key == gone.key]
                if running and hasattr(results, "withdraw"):
                    results.withdraw(running[0])
        if later:
            self._compress(lm, later, n_mem, seed, origin, warm, count, follow, longest,
                           withdraw)

    def _label_checkpoints(self, results, jobs: dict[int, JobKey]):
        """The store told which job each text's checkpoint is, where the stream says under what
        key it checkpoints them (the engine's; a Ray pool's workers keep their own)."""
        key = getattr(results, "checkpoint_key", None)
        if self.checkpoint and key:
            keys = {key(index): job for index, job in jobs.items()}
            self.checkpoint.label_checkpoints({k: job for k, job in keys.items() if k})

    def _previous(self, job: JobKey):
        """(ref, mem) of the same text's row at the previous grid length, if stored."""
        earlier = [L for L in self.grid.lengths if job.length > L]
        if not earlier:
            return None
        prev = replace(job, length=earlier[-1])
        for f in store.family(self.grid.db):
            with store.Store(f, create=False) as s:
                rows = s.rows(with_mem=True, where=" AND ".join(f"{k} = ?" for k in store.KEY),
                              params=prev.key)
            if rows:
                return rows[0]["ref"], store.blob_to_mem(rows[0]["mem"])
        return None


class _Climb:
    """One group's climb: its lengths (increasing), its jobs per length (every text, all ranks),
    the next length's index and the consecutive lengths below the threshold so far."""

    def __init__(self, jobs):
        self.jobs = dict(sorted(_groups(jobs, lambda j: j.length)))
        self.lengths = list(self.jobs)
        self.index, self.below = 0, 0
        self.left: set = set()  # lengths decided below whose unstored texts are left unfinished

    @property
    def done(self) -> bool:
        return self.index == len(self.lengths) or self.below >= CLIMB_PATIENCE

    @property
    def current(self) -> list:
        return self.jobs[self.lengths[self.index]]

    @property
    def ahead(self) -> list:
        """The next length's jobs when they run whatever the current length's mean turns out to
        be (one more length below would not reach the patience): computed beside the current
        ones, so that a length's slowest texts do not leave the batch's other slots empty."""
        if self.below + 1 >= CLIMB_PATIENCE or self.index + 1 >= len(self.lengths):
            return []
        return self.jobs[self.lengths[self.index + 1]]

    def decide(self, stored: dict, early: bool = True) -> bool:
        """The current length decided from the ``stored`` accuracies (job key -> STORED_COLUMNS)
        if they decide it: every text stored, or (``early``) fewer whose mean can end at most
        below the threshold (grid.mean_at_most); then on to the next length. False if still
        open."""
        length = self.lengths[self.index]
        complete = all(j.key in stored for j in self.jobs[length])
        bound = self.mean_at_most(length, stored)
        if not complete and (not early or bound >= CAPACITY_THRESHOLD):
            return False
        self.below = climb_below(self.below, bound)
        self.index += 1
        return True

    def mean_at_most(self, length: int, stored: dict) -> float:
        """The highest the mean accuracy at ``length`` can end at (grid.mean_at_most), from the
        ``stored`` accuracies of its texts."""
        jobs = self.jobs[length]
        return mean_at_most([stored[j.key][0] for j in jobs if j.key in stored], len(jobs))


def next_probe(lo: int, hi: int | None, start: int, cap: int, tol: int) -> int | None:
    """The next length to try for one text: doubling from ``start`` while lossless (up to ``cap``),
    then bisection between ``lo`` (largest lossless) and ``hi`` (smallest lossy) to ``tol``."""
    if hi is None:
        length = min(start if lo < start else 2 * lo, cap)
        return length if length > lo else None
    return (lo + hi) // 2 if hi - lo > tol else None


def _groups(items, key):
    groups: dict = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups.items()


# ---------------------------------------------------------------------------------------------
# command line


def _parser():
    p = Parser(prog="python -m cramfast.sweep", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="grid TOML file, or the name of a shipped grid "
                   f"({', '.join(shipped_grids())}); flags override it")
    add_flags(p, "--model", model=dict(action="append", dest="models", help="HF folder, cached "
                                       "HF id, or smollm2-135m-q4 (the default); repeatable"))
    p.add_argument("--source", action="append", dest="sources",
                   help="a text file, a folder of .txt files, 'random', or 'pg19[:split]'; "
                        "repeatable")
    p.add_argument("--lengths", help=f"text lengths in tokens (default {DEFAULTS['lengths']})")
    p.add_argument("--n-mem",
                   help=f"numbers of mem vectors, e.g. 1,2 (default {DEFAULTS['n_mem']})")
    p.add_argument("--samples", type=int, help=f"texts per source (default {DEFAULTS['samples']})")
    p.add_argument("--seeds", help=f"mem-init seeds, e.g. 0,1 (default {DEFAULTS['seeds']})")
    p.add_argument("--db", help=f"SQLite results file (default {DEFAULTS['db']})")
    # None: the grid's value (its TOML, else grid.DEFAULTS); --max-slots is not part of the key
    add_flags(p, "--preset", "--max-steps", "--lr", "--patience", "--set", "--max-slots",
              "--dtype", "--backend", "--threads", "--checkpoint-every",
              preset=dict(help=f"fast or paper (default {DEFAULTS['preset']})"))
    p.add_argument("--chunking", choices=CHUNKINGS, help="how passages are cut "
                   f"(cramfast.sources.FileSource; default {DEFAULTS['chunking']})")
    p.add_argument("--sample-seed", type=int,
                   help=f"seed of the text sampling (default {DEFAULTS['sample_seed']})")
    p.add_argument("--vocab-file",
                   help="word list for 'random' (one word a line; default wordfreq)")
    p.add_argument("--search", choices=["capacity"], help="per text, the largest lossless length")
    p.add_argument("--search-tol", type=int, help="bisection stops when hi - lo <= this "
                   f"(default {DEFAULTS['search_tol']})")
    p.add_argument("--warm-start", action="store_true", default=None,
                   help="start each length from the previous length's mem (not the paper's "
                        "protocol)")
    p.add_argument("--climb", action="store_true", default=None,
                   help="the lengths (default the paper's grid) in increasing order, a group "
                        f"stopped after {CLIMB_PATIENCE} consecutive lengths with mean accuracy "
                        f"below {CAPACITY_THRESHOLD:g}")
    p.add_argument("--climb-finish", action="store_true", default=None,
                   help="with --climb, run every text of a length even once the others' rows "
                        "keep its mean below the threshold (each length's exact mean, at more "
                        "compute); not part of the job key")
    p.add_argument("--quiet", action="store_true", help="no progress bar: a few log lines")
    e = p.add_argument_group("scale-out (not part of the job key)")
    e.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process (a rank's share under torchrun); ray: a pool of Ray "
                        "actors, this process owning the store (pip install 'cramfast[ray]')")
    e.add_argument("--address", help="with --engine ray: a running cluster (auto or HOST:PORT); "
                   "default a new local one")
    e.add_argument("--workers", type=at_least(1), default=2,
                   help="with --engine ray: actors, each with its model loaded once (default 2)")
    e.add_argument("--gpus-per-worker", type=float, default=0,
                   help="with --engine ray: GPUs per actor (default 0: CPU)")
    return p


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    return run("cramfast.sweep", lambda: _sweep_and_report(args), flags=setting_flags(parser),
               interrupted="interrupted; rerun the same command to resume")


def _sweep_and_report(args) -> int:
    grid = build_grid(args)
    if args.engine == "ray":
        summary = _on_ray(grid, args)
    else:
        # SIGTERM or Ctrl-C first saves every text in flight in the store (engine/stopping.py)
        with stop_on_signals(lambda line: print(f"cramfast.sweep: {line}", file=sys.stderr)):
            summary = run_sweep(grid, quiet=args.quiet,
                                before_work=lambda: set_threads(args.threads, "cramfast.sweep"))
    print(summary.line())
    if summary.search:
        caps = sorted(summary.search.values())
        print(f"cramfast.sweep: largest lossless length per text: median {caps[len(caps) // 2]}, "
              f"min {caps[0]}, max {caps[-1]} ({len(caps)} texts)")
    if summary.climb:
        stopped = [g for g, (_, how) in summary.climb.items() if how == "stopped"]
        print(f"cramfast.sweep: climb: {len(summary.climb)} group(s), {len(stopped)} stopped "
              f"after {CLIMB_PATIENCE} lengths below {CAPACITY_THRESHOLD:g}, "
              f"{len(summary.climb) - len(stopped)} ran every length")
    return 0


def _on_ray(grid: Grid, args) -> Summary:
    """The sweep with its texts computed by Ray actors; this process plans and stores."""
    from tqdm import tqdm

    from cramfast.sweep.ray_engine import RayPool
    # the pool's lines (a worker died, ...) printed above the progress bar, not through it
    pool = RayPool(args.address, args.workers, args.gpus_per_worker, args.threads,
                   log=lambda line: tqdm.write(f"cramfast.sweep: {line}", file=sys.stderr))
    try:
        return run_sweep(grid, quiet=args.quiet, compress_iter=pool.compress_iter, rank=0,
                         world=1, checkpoints=True, workers=pool.status)
    finally:
        pool.close()


if __name__ == "__main__":
    sys.exit(main())
