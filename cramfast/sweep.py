"""``python -m cramfast.sweep``: resumable capacity sweeps into an SQLite store.

    python -m cramfast.sweep --source book.txt --lengths 8,16,32 --n-mem 1,2 --samples 4 --db runs.db
    python -m cramfast.sweep --config paper-pg19 --source ../pg19-test/      # a shipped grid
    torchrun --nproc-per-node 4 -m cramfast.sweep ...                        # ranks share the jobs
    python -m cramfast.report runs.db --out report/

The grid is models x sources x lengths x n_mem x samples x seeds. A job is one (model, source,
sample, length, n_mem, seed, settings) and is computed once: every finished job is one row of
the store (cramfast.store), written as soon as it finishes; rerunning the same command skips the
stored ones, so a sweep killed at any moment resumes where it was.

Texts: sample i of a source is one text whatever the grid, its lengths prefixes of each other
(cramfast.sources.open_source: a text file, a folder of .txt files, "random", "pg19[:split]").

Modes beyond the paper's fixed grid:
  --search capacity   per text, the largest lossless L (teacher-forced accuracy 1.0) by doubling
                      from the smallest length then bisection (to --search-tol tokens); every
                      probe is a stored row (origin "search"), so a rerun replays and continues.
  --warm-start        each length starts from the mem found for the previous length of the same
                      text (a deviation from the paper's protocol, off by default; part of the
                      settings, so stored apart from cold runs).

Scale-out: under torchrun (RANK / WORLD_SIZE set) rank r takes every WORLD_SIZE-th job (text, in
the search and warm-start modes) of the deterministic job list and writes ``DB.rank{r}.db``;
every rank skips jobs stored in the DB or any of its shards; ``cramfast.report DB`` merges them.
Bad input: one line on stderr, exit code 2, nothing stored is touched.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
import tomllib
from dataclasses import astuple, dataclass, field
from pathlib import Path

from cramfast import sources, store
from cramfast.settings import RESULT_SETTINGS, defaults, parse_settings, preset_settings, split
from cramfast.errors import CramfastError

GRIDS_DIR = Path(__file__).with_name("grids")
PAPER_LENGTHS = (8, 16, 32, 64, 80, 96, 128, 160, 192, 256, 384, 512, 768, 1024, 1280, 1568, 2048)
DEFAULTS = dict(models=None, sources=None, lengths="8,16,32", n_mem="1", samples=4, seeds="0",
                db="sweep.db", preset="paper", dtype=None, backend=None, max_steps=None, lr=None, set=None,
                patience=None, max_slots=None, chunking="prefix", sample_seed=0, vocab_file=None,
                search=None, search_tol=1, warm_start=False)
CONFIG_KEYS = set(DEFAULTS) | {"model", "source"}
HASHED_SETTINGS = RESULT_SETTINGS   # what a result depends on (batch size, sync do not)


# ---------------------------------------------------------------------------------------------
# the grid


@dataclass
class Grid:
    models: list[str]
    sources: list[str]
    lengths: list[int]
    n_mem: list[int]
    samples: int
    seeds: list[int]
    db: str = "sweep.db"
    preset: str = "paper"
    optim: dict = field(default_factory=dict)     # settings overrides (None-free)
    dtype: str | None = None
    backend: str | None = None
    chunking: str = "prefix"
    sample_seed: int = 0
    vocab_file: str | None = None
    search: str | None = None                     # None | "capacity"
    search_tol: int = 1
    lengths_given: bool = True
    warm_start: bool = False

    def settings(self) -> dict:
        """The full optimization settings the jobs run with (preset + overrides)."""
        text, batch = split(preset_settings(self.preset, **self.optim))
        return dict(text.to_dict(), **batch.to_dict())

    def identity(self) -> dict:
        """What the results depend on (not batching or sync knobs): hashed into the job key.
        Only the settings that differ from the published protocol (OptimSettings' defaults)
        enter it, so a setting added later, off by default, leaves stored keys as they are."""
        from cramfast.models import parse_dtype
        optim, published = self.settings(), defaults()
        changed = {k: optim[k] for k in HASHED_SETTINGS if optim[k] != published[k]}
        return dict(changed, dtype=str(parse_dtype(self.dtype)), warm_start=self.warm_start)

    def settings_hash(self) -> str:
        text = json.dumps(self.identity(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def settings_record(self) -> dict:
        return dict(optim=self.settings(), preset=self.preset, identity=self.identity(),
                    backend=self.backend, chunking=self.chunking, sample_seed=self.sample_seed,
                    search=self.search, search_tol=self.search_tol)


def _parser():
    p = argparse.ArgumentParser(prog="python -m cramfast.sweep", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="grid TOML file, or the name of a shipped grid "
                   f"({', '.join(sorted(p.stem for p in GRIDS_DIR.glob('*.toml')))}); flags override it")
    p.add_argument("--model", action="append", dest="models",
                   help="HF folder, cached HF id, or smollm2-135m-q4 (the default); repeatable")
    p.add_argument("--source", action="append", dest="sources",
                   help="a text file, a folder of .txt files, 'random', or 'pg19[:split]'; repeatable")
    p.add_argument("--lengths", help="text lengths in tokens, e.g. 8,16,32 (default 8,16,32)")
    p.add_argument("--n-mem", help="numbers of mem vectors, e.g. 1,2 (default 1)")
    p.add_argument("--samples", type=int, help="texts per source (default 4)")
    p.add_argument("--seeds", help="mem-init seeds, e.g. 0,1 (default 0)")
    p.add_argument("--db", help="SQLite results file (default sweep.db)")
    p.add_argument("--preset", help="optimization settings: paper (default) or fast")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--patience", type=int)
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any setting that changes results (the per-text ones and fill_slots), "
                        "e.g. --set stall_steps=100 (repeatable; in TOML: "
                        "set = [\"stall_steps=100\"])")
    p.add_argument("--max-slots", type=int, help="texts optimized at once (not part of the job key)")
    p.add_argument("--dtype", help="model weights: fp32 (default), bf16, fp16, fp64")
    p.add_argument("--backend", help="kernels: auto | triton | torch")
    p.add_argument("--chunking", choices=["prefix", "paper"], help="how passages are cut (see above)")
    p.add_argument("--sample-seed", type=int, help="seed of the text sampling (default 0)")
    p.add_argument("--vocab-file", help="word list for 'random' (one word a line; default wordfreq)")
    p.add_argument("--search", choices=["capacity"], help="per text, the largest lossless length")
    p.add_argument("--search-tol", type=int, help="bisection stops when hi - lo <= this (default 1)")
    p.add_argument("--warm-start", action="store_true", default=None,
                   help="start each length from the previous length's mem (not the paper's protocol)")
    p.add_argument("--quiet", action="store_true", help="no progress bar: a few log lines")
    return p


def _int_list(value, name) -> list[int]:
    if isinstance(value, int):
        return [value]
    if isinstance(value, str):
        value = [v for v in re.split(r"[,\s]+", value.strip()) if v]
    try:
        return [int(v) for v in value]
    except (TypeError, ValueError):
        raise CramfastError(f"{name}: expected integers like 8,16,32, got {value!r}") from None


def load_config(name) -> dict:
    """A grid TOML file (or a shipped grid's name) as a dict of known keys."""
    path = Path(name)
    if not path.is_file() and (GRIDS_DIR / f"{name}.toml").is_file():
        path = GRIDS_DIR / f"{name}.toml"
    if not path.is_file():
        raise CramfastError(f"{name}: no such grid file (shipped grids: "
                            f"{', '.join(sorted(p.stem for p in GRIDS_DIR.glob('*.toml')))})")
    try:
        config = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CramfastError(f"{path}: bad TOML: {exc}") from None
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        raise CramfastError(f"{path}: unknown key(s) {', '.join(unknown)}; known: "
                            f"{', '.join(sorted(CONFIG_KEYS))}")
    for one, many in (("model", "models"), ("source", "sources")):
        if one in config:
            config.setdefault(many, config.pop(one))
        if isinstance(config.get(many), str):
            config[many] = [config[many]]
    return config


def build_grid(args) -> Grid:
    """Flags over the config file over the defaults; every value checked."""
    try:
        return _build_grid(args)
    except CramfastError:
        raise
    except (TypeError, ValueError) as exc:  # a TOML value of the wrong type
        raise CramfastError(f"bad grid value: {exc}") from None


def _build_grid(args) -> Grid:
    config = load_config(args.config) if args.config else {}
    merged = dict(DEFAULTS)
    merged.update(config)
    flags = {k: v for k, v in vars(args).items() if v is not None and k in DEFAULTS}
    merged.update(flags)
    lengths_given = "lengths" in config or "lengths" in flags
    from cramfast.models import DEFAULT_MODEL
    models = [str(m) for m in (merged["models"] or [DEFAULT_MODEL])]
    if not merged["sources"]:
        raise CramfastError("no source: pass --source (a text file, a folder of .txt files, "
                            "'random' or 'pg19')")
    grid = Grid(
        models=list(dict.fromkeys(models)), sources=list(dict.fromkeys(map(str, merged["sources"]))),
        lengths=sorted(set(_int_list(merged["lengths"], "lengths"))),
        n_mem=sorted(set(_int_list(merged["n_mem"], "n_mem"))),
        samples=int(merged["samples"]), seeds=sorted(set(_int_list(merged["seeds"], "seeds"))),
        db=str(merged["db"]), preset=merged["preset"], dtype=merged["dtype"], backend=merged["backend"],
        optim=dict({k: merged[k] for k in ("max_steps", "lr", "patience", "max_slots")
                    if merged[k] is not None}, **parse_settings(merged["set"] or [])),
        chunking=merged["chunking"], sample_seed=int(merged["sample_seed"]),
        vocab_file=merged["vocab_file"], search=merged["search"], search_tol=int(merged["search_tol"]),
        lengths_given=lengths_given, warm_start=bool(merged["warm_start"]))
    if not grid.lengths or not grid.n_mem or not grid.seeds or grid.samples < 1:
        raise CramfastError("empty grid: lengths, n_mem and seeds need at least one value each "
                            "and samples must be >= 1")
    if min(grid.lengths) < 2:
        raise CramfastError(f"lengths must be >= 2 tokens, got {min(grid.lengths)}")
    if min(grid.n_mem) < 1:
        raise CramfastError(f"n_mem must be >= 1, got {min(grid.n_mem)}")
    if grid.chunking not in ("prefix", "paper"):
        raise CramfastError(f"chunking must be 'prefix' or 'paper', got {grid.chunking!r}")
    if grid.search not in (None, "capacity"):
        raise CramfastError(f"search must be 'capacity', got {grid.search!r}")
    if grid.search and grid.warm_start:
        raise CramfastError("--search capacity and --warm-start do not combine (yet)")
    if grid.search_tol < 1:
        raise CramfastError("search_tol must be >= 1")
    grid.settings()  # unknown preset, bad lr/max_steps: now, before any work
    return grid


# ---------------------------------------------------------------------------------------------
# models and jobs


@dataclass(frozen=True, order=True)
class Job:
    """One job's identity: the store's KEY, in order."""
    model: str
    source: str
    sample: int
    length: int
    n_mem: int
    seed: int
    settings_hash: str

    @property
    def key(self) -> tuple:
        return astuple(self)

    def as_dict(self) -> dict:
        return dict(zip(store.KEY, self.key))


def model_id(name: str) -> str:
    """A model's identity in the store: a folder's absolute path, else the name as given."""
    return str(Path(name).resolve()) if Path(name).is_dir() else name


def model_context(name: str) -> int | None:
    """The model's context length from its config alone (the weights are loaded later)."""
    from cramfast import models
    path = models.embedded_model_path() if name == models.DEFAULT_MODEL else models.local_path(name)
    from transformers import AutoConfig
    try:
        cfg = AutoConfig.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001
        raise CramfastError(f"cannot read model {name!r}: {str(exc).splitlines()[0]}") from None
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if getattr(cfg, key, None):
            return int(getattr(cfg, key))
    return None


def rank_world() -> tuple[int, int]:
    try:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise CramfastError("RANK and WORLD_SIZE must be integers") from None
    if world < 1 or not 0 <= rank < world:
        raise CramfastError(f"bad RANK={rank} / WORLD_SIZE={world}")
    return rank, world


class Plan:
    """Everything checked and enumerated before any work: sources opened, models resolved,
    the deterministic job list (jobs past a model's context left out)."""

    def __init__(self, grid: Grid):
        self.grid = grid
        self.sources = {}
        for spec in grid.sources:
            src = sources.open_source(spec, grid.chunking, grid.sample_seed, grid.vocab_file)
            src.check(grid.samples)
            self.sources[src.canonical] = src
        self.models = {model_id(m): m for m in grid.models}
        self.contexts = {mid: model_context(name) for mid, name in self.models.items()}
        self.hash = grid.settings_hash()
        self.skipped = 0
        self.jobs: list[Job] = []
        for mid in self.models:
            for n_mem in grid.n_mem:
                for seed in grid.seeds:
                    for canonical in self.sources:
                        for sample in range(grid.samples):
                            for length in grid.lengths:
                                if self.fits(mid, length, n_mem):
                                    self.jobs.append(Job(mid, canonical, sample, length, n_mem,
                                                         seed, self.hash))
                                else:
                                    self.skipped += 1
        if not self.jobs and not grid.search:
            raise CramfastError("empty grid: every length + n_mem exceeds the models' context")

    def fits(self, mid: str, length: int, n_mem: int) -> bool:
        context = self.contexts[mid]
        return context is None or length + n_mem <= context

    def texts(self) -> list[tuple]:
        """(model id, source, sample, n_mem, seed): the unit of the search and warm-start modes."""
        return list(dict.fromkeys((j.model, j.source, j.sample, j.n_mem, j.seed) for j in self.jobs)) \
            if not self.grid.search else [
                (mid, src, sample, n_mem, seed) for mid in self.models for n_mem in self.grid.n_mem
                for seed in self.grid.seeds for src in self.sources for sample in range(self.grid.samples)]


def share(items: list, rank: int, world: int) -> list:
    """Rank ``rank``'s deterministic share: every ``world``-th item."""
    return items[rank::world]


# ---------------------------------------------------------------------------------------------
# running


class Progress:
    """tqdm bar (jobs done/total, tokens/s, ETA) or, with quiet, a few plain lines."""

    def __init__(self, total: int, done: int, quiet: bool, rank: int, world: int, unit="job"):
        self.quiet, self.tokens, self.start = quiet, 0, time.perf_counter()
        self.prefix = f"[rank {rank}/{world}] " if world > 1 else ""
        self.bar = None
        if not quiet:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=done, unit=unit, dynamic_ncols=True,
                            position=rank if world > 1 else None, desc=self.prefix.strip() or "sweep",
                            file=sys.stderr)

    def log(self, message: str):
        if self.bar is not None:
            self.bar.write(self.prefix + message, file=sys.stderr)
        else:
            print(self.prefix + message, file=sys.stderr, flush=True)

    def update(self, n_jobs: int, tokens: int):
        self.tokens += tokens
        if self.bar is not None:
            self.bar.update(n_jobs)
            rate = self.tokens / max(time.perf_counter() - self.start, 1e-9)
            self.bar.set_postfix_str(f"{rate:.1f} tok/s", refresh=False)

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
    mode: str = "grid"                           # grid | search | warm

    def line(self) -> str:
        unit, done = ("texts", "probes") if self.mode == "search" else ("jobs", "")
        extra = f", {self.skipped_context} past the context left out" if self.skipped_context else ""
        return (f"cramfast.sweep: {self.total} {unit}, {self.already} {done + ' ' if done else ''}already "
                f"stored, {self.ran} rows written in {self.seconds:.1f} s{extra} -> {self.db}")


def run_sweep(grid: Grid, quiet: bool = False, compress_iter=None, rank: int | None = None,
              world: int | None = None) -> Summary:
    """Run (this rank's share of) the grid, storing each finished job at once."""
    import cramfast
    compress_iter = compress_iter or cramfast.compress_iter
    if rank is None:
        rank, world = rank_world()
    world = world or 1
    plan = Plan(grid)
    db = store.shard_path(grid.db, rank) if world > 1 else Path(grid.db)
    stored = store.family_key_values(grid.db, "accuracy")
    out = store.Store(db)  # created now: a bad --db fails before any work
    summary = Summary(db=str(db), skipped_context=0 if grid.search else plan.skipped,
                      mode="search" if grid.search else "warm" if grid.warm_start else "grid")
    runner = _Runner(grid, plan, out, stored, quiet, rank, world, compress_iter, summary)
    start = time.perf_counter()
    try:
        if grid.search:
            runner.search()
        elif grid.warm_start:
            runner.warm()
        else:
            runner.grid_jobs()
    finally:
        runner.progress and runner.progress.close()
        out.close()
        summary.seconds = time.perf_counter() - start
    return summary


class _Runner:
    def __init__(self, grid, plan, out, stored, quiet, rank, world, compress_iter, summary):
        self.grid, self.plan, self.out, self.stored = grid, plan, out, stored
        self.quiet, self.rank, self.world = quiet, rank, world
        self.compress_iter, self.summary = compress_iter, summary
        self.progress = None
        self.record = grid.settings_record()
        self.loaded = None          # (model id, LoadedModel) of the model in memory

    # -- the three modes ---------------------------------------------------------------------

    def grid_jobs(self):
        mine = share(self.plan.jobs, self.rank, self.world)
        todo = [j for j in mine if j.key not in self.stored]
        self._start(len(mine), len(mine) - len(todo))
        for (mid, n_mem, seed), jobs in _groups(todo, lambda j: (j.model, j.n_mem, j.seed)):
            lm = self._load(mid)
            self._compress(lm, jobs, n_mem, seed, origin="grid")

    def warm(self):
        units = set(share(self.plan.texts(), self.rank, self.world))
        jobs = [j for j in self.plan.jobs if (j.model, j.source, j.sample, j.n_mem, j.seed) in units]
        todo = [j for j in jobs if j.key not in self.stored]
        self._start(len(jobs), len(jobs) - len(todo))
        for (mid, n_mem, seed), group in _groups(todo, lambda j: (j.model, j.n_mem, j.seed)):
            lm = self._load(mid)
            for length in self.grid.lengths:      # one round per length: it needs the last one's mem
                round_jobs = [j for j in group if j.length == length]
                if round_jobs:
                    self._compress(lm, round_jobs, n_mem, seed, origin="warm", warm=True)

    def search(self):
        units = share(self.plan.texts(), self.rank, self.world)
        self._start(len(units), 0, unit="text")
        lo_len = min(self.grid.lengths) if self.grid.lengths_given else 8
        for (mid, n_mem, seed), group in _groups(units, lambda u: (u[0], u[3], u[4])):
            cap = self.plan.contexts[mid] - n_mem if self.plan.contexts[mid] else None
            if self.grid.lengths_given:
                cap = min(cap, max(self.grid.lengths)) if cap else max(self.grid.lengths)
            if cap is None:
                raise CramfastError(f"{mid}: no context limit; give --lengths MIN,MAX for the search")
            state = {u: [1, None] for u in group}   # lo: largest lossless, hi: smallest lossy
            lm = None
            while state:
                probes, finished = [], []
                for unit, (lo, hi) in state.items():
                    length = next_probe(lo, hi, lo_len, cap, self.grid.search_tol)
                    if length is None:
                        finished.append(unit)
                    else:
                        probes.append(Job(mid, unit[1], unit[2], length, n_mem, seed, self.plan.hash))
                for unit in finished:
                    self.summary.search[unit] = state.pop(unit)[0]
                    self.progress.update(1, 0)
                todo = [j for j in probes if j.key not in self.stored]
                self.summary.already += len(probes) - len(todo)
                if todo:
                    lm = lm or self._load(mid)
                    self._compress(lm, todo, n_mem, seed, origin="search", count=False)
                for job in probes:
                    unit = (job.model, job.source, job.sample, job.n_mem, job.seed)
                    lossless = self.stored[job.key][0] >= 1.0
                    state[unit][0 if lossless else 1] = job.length

    # -- shared machinery --------------------------------------------------------------------

    def _start(self, total, done, unit="job"):
        self.summary.total, self.summary.already = total, done
        self.progress = Progress(total, done, self.quiet, self.rank, self.world, unit)
        if self.summary.skipped_context:
            self.progress.log(f"{self.plan.skipped} job(s) left out: length + n_mem past the "
                              "model's context")

    def _load(self, mid):
        import cramfast
        from cramfast import models
        if self.loaded and self.loaded[0] != mid:   # one model in memory at a time
            models.unload(self.loaded[1])
            self.loaded = None
        device = None
        if self.world > 1:
            import torch
            if torch.cuda.is_available():
                device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
        lm = cramfast.load_model(self.plan.models[mid], dtype=self.grid.dtype, device=device)
        self.model_info = dict(label=Path(mid).name if Path(mid).is_dir() else mid,
                               hidden_size=lm.hidden_size, vocab_size=lm.vocab_size,
                               max_cap=lm.theoretical_capacity(), context=lm.max_positions)
        self.loaded = (mid, lm)
        return lm

    def _compress(self, lm, jobs, n_mem, seed, origin, warm=False, count=True):
        texts = [self.plan.sources[j.source].tokens(lm.tokenizer, j.sample, j.length) for j in jobs]
        kwargs = {}
        inits = [None] * len(jobs)
        if warm:
            inits = [self._previous(j) for j in jobs]
            kwargs["init_mems"] = [None if i is None else i[1] for i in inits]
        self.progress.log(f"{self.model_info['label']}: n_mem {n_mem}, seed {seed}: "
                          f"{len(jobs)} job(s) to run")
        results = self.compress_iter(texts, model=lm, n_mem=n_mem, seed=seed, backend=self.grid.backend,
                                     preset=self.grid.preset, **self.grid.optim, **kwargs)
        for index, result in results:
            job = jobs[index]
            row = store.result_row(result, key=job.as_dict(), origin=origin, model_info=self.model_info,
                                   source_label=self.plan.sources[job.source].label,
                                   init_from=inits[index][0] if inits[index] else None,
                                   sweep=self.record, rank=self.rank)
            if self.out.add(row):
                self.summary.ran += 1
            self.stored[job.key] = (result.accuracy,)
            self.progress.update(1 if count else 0, result.n_tokens)

    def _previous(self, job: Job):
        """(ref, mem) of the same text's row at the previous grid length, if stored."""
        earlier = [L for L in self.grid.lengths if L < job.length]
        if not earlier:
            return None
        prev = Job(job.model, job.source, job.sample, earlier[-1], job.n_mem, job.seed, job.settings_hash)
        for f in store.family(self.grid.db):
            with store.Store(f, create=False) as s:
                rows = s.rows(with_mem=True, where=" AND ".join(f"{k} = ?" for k in store.KEY),
                              params=prev.key)
            if rows:
                return rows[0]["ref"], store.blob_to_mem(rows[0]["mem"])
        return None


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


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    _quiet_transformers()
    try:
        grid = build_grid(args)
        summary = run_sweep(grid, quiet=args.quiet)
    except CramfastError as exc:
        print(f"cramfast.sweep: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cramfast.sweep: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    print(summary.line())
    if summary.search:
        caps = sorted(summary.search.values())
        print(f"cramfast.sweep: largest lossless length per text: median {caps[len(caps) // 2]}, "
              f"min {caps[0]}, max {caps[-1]} ({len(caps)} texts)")
    return 0


def _quiet_transformers():
    from transformers.utils import logging
    logging.disable_progress_bar()
    logging.set_verbosity_error()


if __name__ == "__main__":
    sys.exit(main())
