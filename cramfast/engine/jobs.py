"""From what a caller passes to compress() to the texts' jobs, every input checked before any
work starts (bad input costs nothing): tokenizing, per-text settings, starting mems.

A ``Job`` is one text; an ``Attempt`` is one optimization of it in one slot (attempt 0 from the
text's own start; more attempts run in idle slots, fill_slots). A job's settings are resolved
for its model (lr_std) and its length (the per-token settings).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cramfast.engine.inits import mem_dtype
from cramfast.errors import CramfastError
from cramfast.models import LoadedModel
from cramfast.settings import PER_TEXT, TextSettings, with_overrides


@dataclass
class Job:
    index: int                      # the text's position in the caller's input
    token_ids: list[int]
    settings: TextSettings          # resolved for the model and the text's length
    init_mem: torch.Tensor | None   # [m, d] given by the caller (init_mems), else None
    seed: int = 0
    started: float = 0.0
    first_evaluation: int = 0       # the scheduler's evaluation count when it started
    attempts: int = 0               # attempts started (parallel ones and continuations)
    decode_retries: int = 0         # times it stopped lossless but did not decode back
    resumed: bool = False           # goes on from a checkpoint (checkpoint.py)
    outcomes: list = field(default_factory=list)   # one dict per finished attempt
    result: dict = field(default_factory=dict)


@dataclass
class Attempt:
    """One optimization of a text in one slot: attempt 0 from the text's own start, attempt
    k >= 1 from the k-th other seeded start (parallel attempts, fill_slots), or a continuation:
    a text that stopped lossless but did not decode back goes on from its mem with a larger
    margin (compressor.verify_decodes), its updates counted on from where it stopped."""
    job: Job
    number: int
    init_mem: torch.Tensor
    restart_draws: torch.Tensor | None
    settings: TextSettings
    step_offset: int = 0            # updates the text had before: a continuation's (see below)
    slot: int = -1                  # the batch slot it runs in, once started
    resume: dict | None = None      # a checkpointed slot state to start from (SlotState.restore)


def tokenize(lm: LoadedModel, text, max_length: int | None, n_mem: int) -> list[int]:
    """Token ids of one text as crammed: the tokenizer's default encoding (special tokens
    included, e.g. a BOS where the tokenizer adds one), cut to ``max_length``."""
    if n_mem < 1:
        raise CramfastError(f"n_mem must be >= 1, got {n_mem}")
    if max_length is not None and max_length < 2:
        raise CramfastError(f"max_length must be >= 2 tokens (the first is given, the rest are "
                            f"predicted), got {max_length}")
    if isinstance(text, str):
        if not text.strip():
            raise CramfastError("empty text: nothing to compress")
        ids = lm.tokenizer(text)["input_ids"]
    else:
        ids = [int(t) for t in text]
    if max_length is not None:
        ids = ids[:max_length]
    if len(ids) < 2:
        raise CramfastError(f"text has {len(ids)} token(s); at least 2 are needed "
                            "(the first is given, the rest are predicted)")
    limit = lm.max_positions
    if limit is not None and len(ids) + n_mem > limit:
        raise CramfastError(f"text too long: {len(ids)} tokens + {n_mem} mem > the model's "
                            f"context of {limit}; cut it shorter (max_length= in the API, --length "
                            "on the command line)")
    if max(ids) >= lm.vocab_size or min(ids) < 0:
        raise CramfastError(f"token id out of the model's vocabulary (size {lm.vocab_size})")
    return ids


def make_jobs(lm: LoadedModel, texts, n_mem: int, max_length: int | None, seed: int,
              base: TextSettings, per_text, init_mems) -> list[Job]:
    """One Job per text, in input order; raises CramfastError on any bad input."""
    if isinstance(texts, (str, bytes)) or (texts and isinstance(texts[0], int)):
        texts = [texts]
    if not texts:
        raise CramfastError("no texts to compress")
    token_lists = [tokenize(lm, t, max_length, n_mem) for t in texts]
    settings = _per_text_settings(base, per_text, len(texts))
    starts = _start_mems(lm, init_mems, len(texts), n_mem)
    return [Job(i, ids, settings_for(lm, s, ids), start, seed)
            for i, (ids, s, start) in enumerate(zip(token_lists, settings, starts))]


def settings_for(lm: LoadedModel, settings: TextSettings, ids: list[int]) -> TextSettings:
    """``settings`` resolved for this model (its std(E), the bits of its weights) and this
    text's length: what a text's attempts run with."""
    return settings.for_model(lm.embedding_std(), torch.finfo(lm.dtype).bits).for_text(len(ids))


def _one_per_text(name: str, values, n_texts: int) -> bool:
    """False if ``values`` is None; an error unless it has one entry per text."""
    if values is not None and len(values) != n_texts:
        raise CramfastError(f"{name} has {len(values)} entries for {n_texts} texts")
    return values is not None


def _per_text_settings(base: TextSettings, per_text, n_texts) -> list[TextSettings]:
    if not _one_per_text("per_text", per_text, n_texts):
        return [base] * n_texts
    out = []
    for overrides in per_text:
        unknown = set(overrides) - set(PER_TEXT)
        if unknown:
            raise CramfastError(f"per_text settings {sorted(unknown)} cannot differ within a "
                                f"batch; per-text keys: {', '.join(PER_TEXT)}")
        out.append(TextSettings(**with_overrides(base.to_dict(), overrides)))
    return out


def _start_mems(lm: LoadedModel, init_mems, n_texts: int, n_mem: int) -> list:
    if not _one_per_text("init_mems", init_mems, n_texts):
        return [None] * n_texts
    out = []
    for mem in init_mems:
        if mem is not None:
            mem = torch.as_tensor(mem).detach().to("cpu", mem_dtype(lm))
            if tuple(mem.shape) != (n_mem, lm.hidden_size):
                raise CramfastError(f"init mem of shape {list(mem.shape)}; expected "
                                    f"[{n_mem}, {lm.hidden_size}]")
        out.append(mem)
    return out
