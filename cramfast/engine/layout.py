"""Where the mem vectors sit in the sequence the frozen LM reads (the batch setting
mem_position).

    first        [mem ; text]          the paper's: the mem takes position 0, which causal LMs
                                       use as an attention sink (heads with nothing to attend
                                       to put their weight there)
    after_bos    [bos ; mem ; text]    a BOS token holds position 0, the mem follows it
    before_bos   [mem ; bos ; text]    the mem first, a BOS between it and the text

The BOS (the tokenizer's bos_token_id) is given, like the text's first token, and never scored:
every layout predicts the same text positions, so their accuracies compare. The evaluation
without mem reads the same sequence less the mem ([bos ; text] where there is a BOS).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from cramfast import ops
from cramfast.errors import CramfastError
from cramfast.models import LoadedModel
from cramfast.settings import MEM_POSITIONS


@dataclass(frozen=True)
class Layout:
    """[before ; mem ; between ; text]: ``before`` and ``between`` are fixed token ids."""
    before: tuple[int, ...] = ()
    between: tuple[int, ...] = ()

    @property
    def fixed(self) -> int:
        """Positions the fixed tokens take."""
        return len(self.before) + len(self.between)


FIRST = Layout()


def layout_for(lm: LoadedModel, mem_position: str) -> Layout:
    """The Layout of a mem_position for ``lm``'s tokenizer; refused in one line where it needs a
    BOS the tokenizer does not have."""
    if mem_position == "first":
        return FIRST
    if mem_position not in MEM_POSITIONS:
        raise CramfastError(f"mem_position must be one of {', '.join(MEM_POSITIONS)}, got "
                            f"{mem_position!r}")
    bos = getattr(lm.tokenizer, "bos_token_id", None)
    if bos is None:
        raise CramfastError(f"mem_position {mem_position!r} puts a BOS token in the sequence, but "
                            f"the tokenizer of {lm.name} has no bos_token_id")
    if lm.tokenizer("a").input_ids[:1] == [bos]:
        # its texts start with the BOS already: [mem ; text] is [mem ; bos ; ...], and a second
        # BOS would be a sequence the model never saw
        raise CramfastError(f"mem_position {mem_position!r}: the tokenizer of {lm.name} starts "
                            "every text with its BOS, so 'first' is already [mem ; bos ; text]; "
                            "the other positions are for tokenizers that add none")
    return Layout(before=(bos,)) if mem_position == "after_bos" else Layout(between=(bos,))


def embed_sequence(lm: LoadedModel, ids: torch.Tensor, mem: torch.Tensor | None,
                   layout: Layout = FIRST, backend: str | None = None) -> tuple[torch.Tensor, int]:
    """The embedded sequence [before ; mem ; between ; ids] ([before ; between ; ids] when
    ``mem`` is None) and the position of ids[:, 0] in it.

    ids [B, T], mem [B, m, d] -> x [B, fixed + m + T, d]. The fused concat (ops.mem_embed) takes
    the mem with the BOS before it as one [B, 1 + m, d] block (a constant row: the gradient
    reaches only the mem) and the BOS after it as one more token of ids."""
    B = ids.shape[0]
    if layout.between:
        ids = torch.cat([_fixed_ids(layout.between, ids.device).expand(B, -1), ids], dim=1)
    if mem is None:
        if layout.before:
            ids = torch.cat([_fixed_ids(layout.before, ids.device).expand(B, -1), ids], dim=1)
        return lm.embed(ids), layout.fixed
    if layout.before:
        sink = lm.embed(_fixed_ids(layout.before, ids.device)).to(mem.dtype)   # [n, d]
        mem = torch.cat([sink.expand(B, -1, -1), mem], dim=1)
    x = ops.mem_embed(ids, lm.embedding, mem, backend=backend, scale=lm.input_scale)
    return x, mem.shape[1] + len(layout.between)


@functools.lru_cache(maxsize=64)
def _fixed_ids(ids: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The fixed tokens as a device tensor, made once (a CUDA graph's capture cannot copy from
    the host, and its warm-up steps run this first)."""
    return torch.tensor(ids, device=device)
