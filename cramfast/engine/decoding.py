"""After optimization: the teacher-forced evaluation with and without mem, and greedy decoding
from [mem ; first token] (KV-cached, batched), the way a user gets a text back."""
from __future__ import annotations

import warnings
from typing import NamedTuple

import torch

from cramfast.constants import IGNORE_INDEX
from cramfast.engine.layout import FIRST, Layout, embed_sequence, layout_for
from cramfast.engine.step import pad_batch, predict
from cramfast.errors import CramfastError
from cramfast.metrics import CompressionResult, decoded_back
from cramfast.models import LoadedModel, load_model


class Evaluation(NamedTuple):
    ce: torch.Tensor        # [B] summed CE in nats over positions 2..N (fp64)
    correct: torch.Tensor   # [B] right argmax predictions (the paper's accuracy * (N - 1))
    margin: torch.Tensor    # [B] the smallest margin over the text's predicted positions


@torch.inference_mode()
def evaluate(lm: LoadedModel, token_lists, mems: torch.Tensor | None, backend=None,
             layout: Layout = FIRST) -> Evaluation:
    """The teacher-forced evaluation of each text, with ``mems`` [B, m, d] or none."""
    length = max(len(t) for t in token_lists)
    ids, targets = pad_batch(token_lists, length, lm.device)
    loss, argmax, margin = predict(lm, ids, targets,
                                   None if mems is None else mems.to(lm.device), backend,
                                   layout=layout)
    scored = targets != IGNORE_INDEX
    correct = ((argmax == targets) & scored).sum(dim=1)
    least = margin.double().masked_fill(~scored, float("inf")).amin(dim=1)
    return Evaluation(loss.double().sum(dim=1).cpu(), correct.cpu(), least.cpu())


@torch.inference_mode()
def greedy_decode(lm: LoadedModel, mems: torch.Tensor, first_ids: list[int],
                  n_new: int, layout: Layout = FIRST) -> list[list[int]]:
    """Greedy generation, KV-cached and batched, from [mem ; first token] (the ``layout``'s
    sequence: a BOS before or after the mem): the first token is given by the protocol, every
    later one must come from the mem vectors."""
    mems = mems.to(lm.device, lm.dtype)
    first = torch.tensor(first_ids, device=lm.device)
    x, _ = embed_sequence(lm, first[:, None], mems, layout, backend="torch")
    out = lm.model(inputs_embeds=x, use_cache=True)
    generated = []
    for i in range(n_new):
        token = out.logits[:, -1].argmax(dim=-1)
        generated.append(token)
        if i + 1 < n_new:
            out = lm.model(input_ids=token[:, None], cache=out.cache, use_cache=True)
    if not generated:
        return [[] for _ in first_ids]
    return torch.stack(generated, dim=1).tolist()


def decodes_back(lm: LoadedModel, results: list[CompressionResult],
                 batch_size: int = 1) -> list[bool]:
    """Whether each result's mem, greedy-decoded with ``lm`` (``batch_size`` mems at a time,
    results of one mem_position), gives its text back: how a mem travels to another
    precision, device or batch shape."""
    exact = []
    for start in range(0, len(results), batch_size):
        group = results[start:start + batch_size]
        decoded = greedy_decode(lm, torch.stack([r.mem for r in group]),
                                [r.token_ids[0] for r in group],
                                max(r.n_tokens for r in group) - 1, result_layout(lm, group[0]))
        exact += [decoded_back(d, r.token_ids) for d, r in zip(decoded, group)]
    return exact


def decode(mem, model=None, max_new_tokens: int | None = None, first_token_id: int | None = None,
           mem_position: str | None = None):
    """Token ids generated greedily from [mem ; first token].

    ``mem`` is a CompressionResult (its model is used when ``model`` is None; its first token,
    length and mem_position are used by default) or a tensor [m, d] with ``first_token_id`` and
    ``max_new_tokens`` (and ``mem_position`` if it was not crammed `first`). Returns the full
    token ids (first token included) and the decoded text."""
    result = mem if isinstance(mem, CompressionResult) else None
    if result is not None:
        model = model or result.model
        first_token_id = result.token_ids[0] if first_token_id is None else first_token_id
        max_new_tokens = result.n_tokens - 1 if max_new_tokens is None else max_new_tokens
        mem = result.mem
    if first_token_id is None or max_new_tokens is None:
        raise CramfastError("decode needs first_token_id and max_new_tokens with a raw mem tensor")
    lm = load_model(model)
    if result is not None:
        warn_if_weaker(result, lm)
    mem = torch.as_tensor(mem)
    if mem.dim() != 2 or mem.shape[1] != lm.hidden_size:
        raise CramfastError(f"mem must be [n_mem, {lm.hidden_size}] for {lm.name}, got "
                            f"{list(mem.shape)}")
    layout = (layout_for(lm, mem_position) if mem_position is not None
              else FIRST if result is None else result_layout(lm, result))
    ids = [first_token_id] + greedy_decode(lm, mem[None], [first_token_id], max_new_tokens,
                                           layout)[0]
    return ids, lm.tokenizer.decode(ids)


def result_layout(lm: LoadedModel, result: CompressionResult) -> Layout:
    """The layout a result was crammed in (its mem_position setting; results from before the
    setting existed were crammed first)."""
    return layout_for(lm, result.settings.get("mem_position", "first"))


def warn_if_weaker(result: CompressionResult, lm: LoadedModel) -> None:
    """Warn when a mem is decoded with fewer bits of precision than it was crammed and checked
    in: its margin may not cover the other rounding."""
    made = getattr(torch, result.dtype, None) if result.dtype else None
    if isinstance(made, torch.dtype) and torch.finfo(lm.dtype).bits < torch.finfo(made).bits:
        warnings.warn(f"decoding in {str(lm.dtype)[6:]} a mem crammed and checked in "
                      f"{result.dtype} (its smallest margin: {result.margin:.3g} logits); the "
                      "text may not come back exactly", stacklevel=3)
