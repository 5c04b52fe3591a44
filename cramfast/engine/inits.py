"""Where an attempt's mem vectors start, seeded so that a text gets the same start whatever
batch, order or machine it is compressed in.

Every draw comes from a stream named by (seed, attempt, restart) and the text's tokens, hashed
into a torch.Generator on the host in fp64, then cast to the mem dtype: the device never draws.
Attempt 0 is the text's own start; attempt k >= 1 a parallel attempt (fill_slots); the stall
restarts' starts are drawn up front (restart_draws), so restarts need no host sync.
"""
from __future__ import annotations

import hashlib

import torch

from cramfast.models import LoadedModel
from cramfast.settings import TextSettings


def mem_dtype(lm: LoadedModel) -> torch.dtype:
    """The dtype mem vectors are optimized in: fp32, also for bf16/fp16 models (a bf16 mem
    could not hold LAMB's small relative steps); fp64 for fp64 models (the exactness tests)."""
    return torch.float64 if lm.dtype == torch.float64 else torch.float32


def init_mem(lm: LoadedModel, ids: list[int], n_mem: int, seed: int, scale: float,
             attempt: int = 0, kind: str = "random") -> torch.Tensor:
    """An attempt's start [n_mem, d]: randn * scale * std(E) for kind "random"; for
    "text_mean", attempt 0 starts from the text's chunk means (text_mean_init) and later
    attempts from those mixed with their seeded draw (seeded_start)."""
    if kind == "text_mean" and attempt == 0:
        return text_mean_init(lm, ids, n_mem, scale)
    return seeded_start(lm, ids, n_mem, _stream(seed, attempt), scale, kind)


def text_mean_init(lm: LoadedModel, ids: list[int], n_mem: int, scale: float) -> torch.Tensor:
    """Mem vector j: the mean input embedding of the j-th of n_mem contiguous chunks of the
    text (the whole text where a chunk is empty), rescaled to scale * std(E) * sqrt(d), the
    random init's mean norm. Computed in fp64 on the host, so it does not depend on the
    device."""
    emb = lm.embed(torch.tensor(ids, device=lm.device)).detach().to("cpu", torch.float64)
    chunks = [c if len(c) else emb for c in torch.tensor_split(emb, n_mem)]
    means = torch.stack([c.mean(dim=0) for c in chunks])
    return (_unit(means) * scale * lm.embedding_std() * lm.hidden_size ** 0.5).to(mem_dtype(lm))


def seeded_start(lm: LoadedModel, ids: list[int], n_mem: int, stream: str, scale: float,
                 kind: str = "random") -> torch.Tensor:
    """A seeded start for a new attempt or a redraw restart: randn * scale * std(E); for
    "text_mean", the unit text mean plus that draw's unit vector (45 degrees from each, as
    the draw is near-orthogonal in d dimensions), at text_mean_init's norm, so a new attempt
    explores away from a start that stalled without losing what the text's mean points to."""
    noise = _seeded_randn(stream, ids, n_mem, lm.hidden_size)
    if kind != "text_mean":
        return (noise * scale * lm.embedding_std()).to(mem_dtype(lm))
    mean = _unit(text_mean_init(lm, ids, n_mem, 1.0).double())
    return (_unit(mean + _unit(noise)) * scale * lm.embedding_std()
            * lm.hidden_size ** 0.5).to(mem_dtype(lm))


def restart_draws(lm: LoadedModel, ids: list[int], n_mem: int, seed: int,
                  settings: TextSettings, attempt: int = 0) -> torch.Tensor | None:
    """The stall restarts' starting points, drawn up front (one stream per restart):
    [max_restarts, m, d], each a seeded_start for "redraw", randn * restart_noise * std(E) (added
    to the best mem on the device) for "perturb"; None when restarts are off."""
    if settings.stall_steps == 0 or settings.max_restarts == 0:
        return None
    streams = [f"{_stream(seed, attempt)}:restart{r}" for r in range(settings.max_restarts)]
    if settings.restart == "redraw":
        return torch.stack([seeded_start(lm, ids, n_mem, stream, settings.init_scale,
                                         settings.init) for stream in streams])
    draws = torch.stack([_seeded_randn(stream, ids, n_mem, lm.hidden_size) for stream in streams])
    return (draws * settings.restart_noise * lm.embedding_std()).to(mem_dtype(lm))


def attempt_start(lm: LoadedModel, ids: list[int], n_mem: int, seed: int,
                  settings: TextSettings, attempt: int = 0):
    """(start [m, d], restart draws or None) of one attempt: the default of Hooks.start."""
    return (init_mem(lm, ids, n_mem, seed, settings.init_scale, attempt, settings.init),
            restart_draws(lm, ids, n_mem, seed, settings, attempt))


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp(min=1e-30)


def _stream(seed: int, attempt: int) -> str:
    return f"{seed}" if attempt == 0 else f"{seed}:attempt{attempt}"


def _seeded_randn(stream: str, ids: list[int], n_mem: int, d: int) -> torch.Tensor:
    digest = hashlib.sha256(f"{stream}:{','.join(map(str, ids))}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return torch.randn(n_mem, d, generator=gen, dtype=torch.float64)
