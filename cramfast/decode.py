"""Regenerate a text from its mem vectors (greedy), for results or raw tensors."""
from __future__ import annotations

import torch

from cramfast.compressor import greedy_decode
from cramfast.errors import CramfastError
from cramfast.metrics import CompressionResult
from cramfast.models import load_model


def decode(mem, model=None, max_new_tokens: int | None = None, first_token_id: int | None = None):
    """Token ids generated greedily from [mem ; first token].

    ``mem`` is a CompressionResult (its model is used when ``model`` is None; its first token and
    length are used by default) or a tensor [m, d] with ``first_token_id`` and ``max_new_tokens``.
    Returns the full token ids (first token included) and the decoded text."""
    if isinstance(mem, CompressionResult):
        model = model or mem.model
        first_token_id = mem.token_ids[0] if first_token_id is None else first_token_id
        max_new_tokens = mem.n_tokens - 1 if max_new_tokens is None else max_new_tokens
        mem = mem.mem
    if first_token_id is None or max_new_tokens is None:
        raise CramfastError("decode needs first_token_id and max_new_tokens with a raw mem tensor")
    lm = load_model(model)
    mem = torch.as_tensor(mem)
    if mem.dim() != 2 or mem.shape[1] != lm.hidden_size:
        raise CramfastError(f"mem must be [n_mem, {lm.hidden_size}] for {lm.name}, got {list(mem.shape)}")
    ids = [first_token_id] + greedy_decode(lm, mem[None], [first_token_id], max_new_tokens)[0]
    return ids, lm.tokenizer.decode(ids)
