"""Metric formulas on hand-computed cases, capacity, and the theoretical capacity."""
import math
from types import SimpleNamespace

import pytest
import torch

from cramfast.metrics import capacity, make_result
from cramfast.models import theoretical_capacity


def test_result_formulas_by_hand():
    res = make_result(token_ids=[1, 2, 3, 4, 5], correct_with_mem=4, correct_without_mem=1,
                      ce_without_mem=10.0, ce_with_mem=0.5, decoded_ids=[2, 3, 4, 5],
                      stop_reason="lossless", mem=torch.zeros(1, 4), n_mem=1, model="m", seed=0,
                      steps=3, best_step=3, seconds=0.1)
    assert res.accuracy == 1.0 and res.accuracy_without_mem == 0.25   # over N-1 = 4 tokens
    assert res.token_gain == pytest.approx(3.0)                        # (1 - 0.25) * 4
    assert res.info_gain_nats == pytest.approx(9.5)
    assert res.info_gain_bits == pytest.approx(9.5 / math.log(2))
    assert res.exact and res.error is None


def test_inexact_decode_and_failure_are_recorded():
    res = make_result(token_ids=[1, 2, 3], correct_with_mem=1, correct_without_mem=0,
                      ce_without_mem=3.0, ce_with_mem=float("nan"), decoded_ids=[2, 9],
                      stop_reason="nonfinite", mem=torch.zeros(1, 4), n_mem=1, model="m", seed=0,
                      steps=0, best_step=0, seconds=0.0)
    assert not res.exact and res.accuracy == 0.5 and res.error


def test_capacity_is_largest_length_with_mean_accuracy_at_least_099():
    runs = [(8, 1.0), (8, 1.0), (16, 1.0), (16, 0.99), (32, 1.0), (32, 0.9), (64, 0.5)]
    assert capacity(runs) == 16
    assert capacity([(8, 0.5)]) is None
    # a non-monotone curve: the paper takes the largest passing length
    assert capacity([(8, 0.9), (16, 1.0)]) == 16


@pytest.mark.parametrize("d,vocab,expected", [
    (576, 49152, 591),      # SmolLM2-135M (shared/paper-facts.md)
    (768, 50304, 787),      # Pythia-160M, Table 1
    (4096, 128256, 3862),   # Llama-3.1-8B, Table 1
    (2048, 32000, 2190),    # Sheared-LLaMA-1.3B
])
def test_theoretical_capacity_matches_table_1(d, vocab, expected):
    assert theoretical_capacity(SimpleNamespace(hidden_size=d, vocab_size=vocab)) == expected
