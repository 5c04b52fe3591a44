"""What a finished text's numbers mean, and the capacity of a model.

For a text of N tokens, N-1 are predicted (the first is given):
  ce_without_mem, ce_with_mem   CE in nats summed over the N-1 predicted tokens
  info_gain_nats / _bits        ce_without_mem - ce_with_mem (bits = nats / ln 2)
  accuracy                      teacher-forced: right argmax predictions / (N-1), with mem
  token_gain                    (accuracy - accuracy_without_mem) * (N-1)
  exact                         greedy decoding from [mem ; first token] reproduces tokens 2..N
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field, fields

import torch


@dataclass
class CompressionResult:
    token_ids: list[int]
    mem: torch.Tensor                 # [n_mem, d], the best mem (before the update after it)
    n_mem: int
    model: str
    seed: int
    steps: int                        # optimizer updates applied when it stopped
    best_step: int                    # updates applied to reach the returned mem
    stop_reason: str                  # lossless (all right, by the margin asked, and decoded
                                      # back) | stalled | max_steps | nonfinite
    accuracy: float
    accuracy_without_mem: float
    exact: bool
    decoded_ids: list[int]
    ce_without_mem: float
    ce_with_mem: float
    info_gain_nats: float
    info_gain_bits: float
    token_gain: float
    seconds: float                    # from the text's start in its slot until it ended
    text: str = ""
    restarts: int = 0                 # stall restarts taken (settings.stall_steps > 0)
    attempts: int = 1                 # parallel attempts run (settings.fill_slots > 0)
    attempt: int = 0                  # the one whose mem is returned (0: the text's own init);
                                      # steps, best_step and restarts are that attempt's
    margin: float = 0.0               # the smallest margin (logits) of the returned mem over
                                      # the predicted positions, teacher-forced
    decode_retries: int = 0           # times it stopped lossless but did not decode back
    dtype: str = ""                   # the model's dtype and device kind it was crammed in
    device: str = ""
    settings: dict = field(default_factory=dict)
    error: str | None = None

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    def __repr__(self) -> str:  # the mem and the id lists are long: a summary line
        text = self.text if len(self.text) <= 40 else self.text[:37] + "..."
        return (f"CompressionResult({self.n_tokens} tokens, n_mem={self.n_mem}, "
                f"{self.stop_reason} after {self.steps} steps, accuracy={self.accuracy:.3f}, "
                f"exact={self.exact}, margin={self.margin:.3g}, model={self.model!r}, "
                f"text={text!r})")

    def metadata(self) -> dict:
        """Every field but the tensor, JSON-ready."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "mem"}


def decoded_back(decoded_ids, token_ids) -> bool:
    """Whether greedy decoding gave the text back: tokens 2..N (the first is given)."""
    return list(decoded_ids[:len(token_ids) - 1]) == list(token_ids[1:])


def make_result(*, token_ids, correct_with_mem: int, correct_without_mem: int,
                ce_without_mem: float, ce_with_mem: float, decoded_ids, stop_reason, **rest):
    n_pred = len(token_ids) - 1
    accuracy = correct_with_mem / n_pred
    accuracy_without = correct_without_mem / n_pred
    gain_nats = ce_without_mem - ce_with_mem
    error = "non-finite loss during optimization" if stop_reason == "nonfinite" else None
    return CompressionResult(
        token_ids=list(token_ids), stop_reason=stop_reason, accuracy=accuracy,
        accuracy_without_mem=accuracy_without, exact=decoded_back(decoded_ids, token_ids),
        decoded_ids=list(decoded_ids), ce_without_mem=ce_without_mem, ce_with_mem=ce_with_mem,
        info_gain_nats=gain_nats, info_gain_bits=gain_nats / math.log(2),
        token_gain=(accuracy - accuracy_without) * n_pred, error=error, **rest)


# The paper's capacity: the largest length whose mean accuracy reaches this (its Table 1).
CAPACITY_THRESHOLD = 0.99


def capacity(lengths_and_accuracies, threshold: float = CAPACITY_THRESHOLD) -> int | None:
    """Largest length L whose mean accuracy over texts is >= threshold (the paper's capacity);
    None if no length qualifies. Input: iterable of (L, accuracy) pairs."""
    by_length = defaultdict(list)
    for length, acc in lengths_and_accuracies:
        by_length[length].append(acc)
    passing = [L for L, accs in by_length.items() if sum(accs) / len(accs) >= threshold]
    return max(passing) if passing else None
