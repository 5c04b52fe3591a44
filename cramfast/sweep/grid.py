"""A sweep's grid and its jobs: what ``python -m cramfast.sweep`` will compute, decided before any
work.

The grid is models x sources x lengths x n_mem x samples x seeds, from flags over a TOML file
(``--config FILE`` or a shipped grid's name, cramfast/grids/) over DEFAULTS. A job is one
(model, source, sample, length, n_mem, seed, settings) -- a ``store.JobKey`` -- and ``SweepJobs``
lists a grid's jobs in a deterministic order (every rank of a torchrun sweep computes the same
list and takes its share), leaving out those whose length + n_mem exceed a model's context.
With ``climb`` and no lengths given, the lengths are the paper's grid (PAPER_LENGTHS): the climb
runs them in order and stops where capacity is passed (cramfast.sweep.runner).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from cramfast import sources
from cramfast.errors import CramfastError
from cramfast.metrics import CAPACITY_THRESHOLD
from cramfast.models import DEFAULT_MODEL, embedded_model_path, local_path, parse_dtype
from cramfast.settings import RESULT_SETTINGS, defaults, parse_settings, preset_settings, split
from cramfast.sources import CHUNKINGS
from cramfast.sweep.store import JobKey

GRIDS_DIR = Path(__file__).with_name("grids")
PAPER_LENGTHS = (8, 16, 32, 64, 80, 96, 128, 160, 192, 256, 384, 512, 768, 1024, 1280, 1568, 2048)
CLIMB_PATIENCE = 2  # consecutive lengths below the capacity threshold that stop a seed's climb


def climb_below(below: int, mean: float) -> int:
    """A climb's count of consecutive lengths below the capacity threshold, after one more
    length whose mean accuracy is ``mean``; at CLIMB_PATIENCE the climb stops."""
    return below + 1 if mean < CAPACITY_THRESHOLD else 0


def mean_at_most(accuracies: list, n_texts: int) -> float:
    """The highest a length's mean accuracy over ``n_texts`` texts can end at, from the
    ``accuracies`` of the texts stored there (None: a failed run, 0), the others counted
    lossless: the mean itself once every text is stored. A climb decides a length when every
    text is stored or when this is below the capacity threshold: then nothing the texts still
    to run there do can lift the mean to it."""
    return (sum(a or 0.0 for a in accuracies) + n_texts - len(accuracies)) / n_texts


DEFAULTS = dict(models=None, sources=None, lengths="8,16,32", n_mem="1", samples=4, seeds="0",
                db="sweep.db", preset="paper", dtype=None, backend=None, max_steps=None, lr=None,
                set=None,
                patience=None, max_slots=None, checkpoint_every=None, chunking=CHUNKINGS[0],
                sample_seed=0,
                vocab_file=None,
                search=None, search_tol=1, warm_start=False, climb=False, climb_finish=False)
CONFIG_KEYS = set(DEFAULTS) | {"model", "source"}
HASHED_SETTINGS = RESULT_SETTINGS   # what a result depends on (batch size, sync do not)


@dataclass
class Grid:
    models: list[str]
    sources: list[str]
    lengths: list[int]
    n_mem: list[int]
    samples: int
    seeds: list[int]
    db: str = DEFAULTS["db"]
    preset: str = DEFAULTS["preset"]
    optim: dict = field(default_factory=dict)     # settings overrides (None-free)
    dtype: str | None = None
    backend: str | None = None
    chunking: str = DEFAULTS["chunking"]
    sample_seed: int = DEFAULTS["sample_seed"]
    vocab_file: str | None = None
    search: str | None = None                     # None | "capacity"
    search_tol: int = DEFAULTS["search_tol"]
    lengths_given: bool = True
    warm_start: bool = DEFAULTS["warm_start"]
    climb: bool = DEFAULTS["climb"]               # lengths in order, a group stopped past capacity
    # a climb runs every text of a length it decided below early (each length's exact mean)
    climb_finish: bool = DEFAULTS["climb_finish"]

    def settings(self) -> dict:
        """The full optimization settings the jobs run with (preset + overrides)."""
        text, batch = split(preset_settings(self.preset, **self.optim))
        return dict(text.to_dict(), **batch.to_dict())

    def identity(self) -> dict:
        """What the results depend on (not batching or sync knobs): hashed into the job key.
        Only the settings that differ from the published protocol (settings.defaults())
        enter it, so a setting added later, off by default, leaves stored keys as they are."""
        optim, published = self.settings(), defaults()
        changed = {k: optim[k] for k in HASHED_SETTINGS if optim[k] != published[k]}
        return dict(changed, dtype=str(parse_dtype(self.dtype)), warm_start=self.warm_start)

    def settings_hash(self) -> str:
        text = json.dumps(self.identity(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def settings_record(self) -> dict:
        """The sweep's record of a run, stored beside each result (column ``sweep``)."""
        return dict(optim=self.settings(), preset=self.preset, identity=self.identity(),
                    backend=self.backend, chunking=self.chunking, sample_seed=self.sample_seed,
                    search=self.search, search_tol=self.search_tol, climb=self.climb)


def shipped_grids() -> list[str]:
    return sorted(p.stem for p in GRIDS_DIR.glob("*.toml"))


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
                            f"{', '.join(shipped_grids())})")
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
    """Flags (``args``, an argparse namespace whose names are DEFAULTS' keys, plus ``config``)
    over the config file over the defaults; every value checked."""
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
    for name in ("climb", "climb_finish"):        # TOML climb = "yes": refused, not truthy
        if not isinstance(merged[name], bool):
            raise CramfastError(f"{name} must be true or false, got {merged[name]!r}")
    if merged["climb"] and not lengths_given:     # the climb's point: the paper's whole grid
        merged["lengths"] = list(PAPER_LENGTHS)
    models = [str(m) for m in (merged["models"] or [DEFAULT_MODEL])]
    if not merged["sources"]:
        raise CramfastError("no source: pass --source (a text file, a folder of .txt files, "
                            "'random' or 'pg19')")
    grid = Grid(
        models=list(dict.fromkeys(models)), sources=list(dict.fromkeys(map(str,
                                                                           merged["sources"]))),
        lengths=sorted(set(_int_list(merged["lengths"], "lengths"))),
        n_mem=sorted(set(_int_list(merged["n_mem"], "n_mem"))),
        samples=int(merged["samples"]), seeds=sorted(set(_int_list(merged["seeds"], "seeds"))),
        db=str(merged["db"]), preset=merged["preset"], dtype=merged["dtype"],
        backend=merged["backend"],
        optim=dict({k: merged[k] for k in ("max_steps", "lr", "patience", "max_slots")
                    if merged[k] is not None}, **parse_settings(merged["set"] or []),
                   **({} if merged["checkpoint_every"] is None
                      else {"checkpoint_seconds": merged["checkpoint_every"]})),
        chunking=merged["chunking"], sample_seed=int(merged["sample_seed"]),
        vocab_file=merged["vocab_file"], search=merged["search"],
        search_tol=int(merged["search_tol"]),
        lengths_given=lengths_given, warm_start=bool(merged["warm_start"]),
        climb=merged["climb"], climb_finish=merged["climb_finish"])
    if not grid.lengths or not grid.n_mem or not grid.seeds or grid.samples < 1:
        raise CramfastError("empty grid: lengths, n_mem and seeds need at least one value each "
                            "and samples must be >= 1")
    if min(grid.lengths) < 2:
        raise CramfastError(f"lengths must be >= 2 tokens, got {min(grid.lengths)}")
    if min(grid.n_mem) < 1:
        raise CramfastError(f"n_mem must be >= 1, got {min(grid.n_mem)}")
    if grid.chunking not in CHUNKINGS:
        raise CramfastError(f"chunking must be one of {', '.join(CHUNKINGS)}, "
                            f"got {grid.chunking!r}")
    if grid.search not in (None, "capacity"):
        raise CramfastError(f"search must be 'capacity', got {grid.search!r}")
    if grid.search and grid.warm_start:
        raise CramfastError("--search capacity and --warm-start do not combine")
    if grid.search and grid.climb:
        raise CramfastError("--climb and --search capacity do not combine: the search picks "
                            "its own lengths per text, the climb walks the grid's")
    if grid.climb_finish and not grid.climb:
        raise CramfastError("--climb-finish is a setting of --climb: pass both")
    if grid.search_tol < 1:
        raise CramfastError("search_tol must be >= 1")
    grid.settings()  # unknown preset, bad lr/max_steps: now, before any work
    return grid


# ---------------------------------------------------------------------------------------------
# the jobs of a grid


def model_id(name: str) -> str:
    """A model's identity in the store: a folder's absolute path, else the name as given."""
    return str(Path(name).resolve()) if Path(name).is_dir() else name


def model_context(name: str) -> int | None:
    """The model's context length from its config alone (the weights are loaded later)."""
    path = embedded_model_path() if name == DEFAULT_MODEL else local_path(name)
    from transformers import AutoConfig
    try:
        cfg = AutoConfig.from_pretrained(path)
    except Exception as exc:
        raise CramfastError(f"cannot read model {name!r}: {str(exc).splitlines()[0]}") from None
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if getattr(cfg, key, None):
            return int(getattr(cfg, key))
    return None


class SweepJobs:
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
        self.jobs: list[JobKey] = []
        for mid in self.models:
            for n_mem in grid.n_mem:
                for seed in grid.seeds:
                    for canonical in self.sources:
                        for sample in range(grid.samples):
                            for length in grid.lengths:
                                if self.fits(mid, length, n_mem):
                                    self.jobs.append(JobKey(mid, canonical, sample, length, n_mem,
                                                            seed, self.hash))
                                else:
                                    self.skipped += 1
        if not self.jobs and not grid.search:
            raise CramfastError("empty grid: every length + n_mem exceeds the models' context")

    def fits(self, mid: str, length: int, n_mem: int) -> bool:
        context = self.contexts[mid]
        return context is None or length + n_mem <= context

    def tokens(self, job: JobKey, tokenizer) -> list[int]:
        """The token ids the job crams."""
        return self.sources[job.source].tokens(tokenizer, job.sample, job.length)

    def texts(self) -> list[tuple]:
        """Every ``text_of`` a job: the unit of the search and warm-start modes."""
        if not self.grid.search:
            return list(dict.fromkeys(map(text_of, self.jobs)))
        return [(mid, src, sample, n_mem, seed) for mid in self.models
                for n_mem in self.grid.n_mem for seed in self.grid.seeds for src in self.sources
                for sample in range(self.grid.samples)]


def text_of(job: JobKey) -> tuple:
    """(model id, source, sample, n_mem, seed): the text a job crams, whatever its length."""
    return job.model, job.source, job.sample, job.n_mem, job.seed
