"""Lossless means it decodes back: a text that stops with every token right is greedy-decoded
the way a user decodes it, and goes on with a larger margin where the decode differs; a margin
makes that rare. The training forward and KV-cached decoding round differently, by how much
depends on the device (on one CPU never, on another often), so the tests force the difference:
decoding rounds every near-tie the wrong way."""
import random
from contextlib import contextmanager

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cramfast
from cramfast.engine import compressor

from conftest import CORPUS


def corpus_windows(tokenizer, n, seed, lengths=(8, 24)):
    ids = tokenizer(CORPUS)["input_ids"]
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randrange(*lengths)
        start = rng.randrange(0, len(ids) - length)
        out.append(ids[start:start + length])
    return out


@pytest.fixture(scope="module")
def bf16_model(trained_path):
    return cramfast.load_model(trained_path, dtype="bf16")


@contextmanager
def decode_rounds_near_ties_wrong(lm, within: float):
    """While open, wherever the model's own head (which only greedy decoding calls: training and
    the evaluation use the fused cross-entropy on the head's weights) gives two best logits
    within ``within`` of each other, the second wins: a rounding difference of at most
    ``within`` between the training forward and the decode, in the worst direction. Yields the
    list of near-ties turned."""
    turned = []

    def hook(module, inputs, logits):
        best = logits.float().topk(2, dim=-1)
        tie = best.values[..., 0] - best.values[..., 1] < within
        if not tie.any():
            return None
        turned.append(int(tie.sum()))
        raised = torch.where(tie, best.values[..., 0] + 1, best.values[..., 1]).to(logits.dtype)
        return logits.scatter(-1, best.indices[..., 1:2], raised[..., None])

    handle = lm.model.get_output_embeddings().register_forward_hook(hook)
    try:
        yield turned
    finally:
        handle.remove()


NEAR_TIE = 0.2


def test_decode_failures_are_caught_and_a_margin_prevents_them(bf16_model):
    """Margin 0 (the paper's rule): texts stop as soon as every argmax is right, some within a
    near-tie of the runner-up, and those decode otherwise under a rounding of NEAR_TIE logits;
    each is caught and goes on, so every lossless result decodes back. With a margin of half a
    logit (more than NEAR_TIE plus the bf16 rounding itself) none needs to."""
    texts = corpus_windows(bf16_model.tokenizer, 128, seed=0)
    with decode_rounds_near_ties_wrong(bf16_model, NEAR_TIE) as turned:
        bare = cramfast.compress(texts, model=bf16_model, margin=0.0, max_steps=200, seed=0)
    assert sum(r.decode_retries > 0 for r in bare) >= 1          # the failure, reproduced,
    assert turned                                                # by the forced rounding
    assert all(r.exact for r in bare if r.stop_reason == "lossless")
    with decode_rounds_near_ties_wrong(bf16_model, NEAR_TIE) as turned:
        kept = cramfast.compress(texts, model=bf16_model, margin_16bit=0.5, max_steps=200, seed=0)
    assert all(r.decode_retries == 0 for r in kept)
    assert all(r.exact for r in kept if r.stop_reason == "lossless")
    # the margin reported is measured again, in the batch of the texts that finished together:
    # other shapes, so other bf16 rounding than the step that stopped the text at 0.5; what the
    # margin leaves after that rounding still clears the forced near-ties
    assert all(r.margin > NEAR_TIE for r in kept if r.stop_reason == "lossless")
    assert kept[0].settings["margin"] == 0.5 and kept[0].settings["margin_16bit"] == 0.5


@settings(max_examples=6, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10 ** 6))
def test_with_a_margin_every_lossless_text_decodes_alone(bf16_model, seed):
    """Any texts, any seed: with the margin, a lossless result needs no retry, and decoding it
    alone (cramfast.decode, batch 1) gives the text back too."""
    texts = corpus_windows(bf16_model.tokenizer, 12, seed=seed)
    results = cramfast.compress(texts, model=bf16_model, margin_16bit=0.5, max_steps=200,
                                seed=seed)
    for res in results:
        if res.stop_reason == "lossless":
            assert res.decode_retries == 0 and res.exact
            assert cramfast.decode(res, model=bf16_model)[0] == res.token_ids


def test_a_text_that_does_not_decode_back_goes_on_with_a_margin(trained_path, monkeypatch):
    """The mechanism, made to fail on purpose: the first decode of one text is wrong; that text
    goes on from its mem with a margin (no retry for the others), its steps counted on; with no
    budget left it ends as max_steps, not lossless."""
    lm = cramfast.load_model(trained_path, dtype=torch.float64)
    texts = corpus_windows(lm.tokenizer, 3, seed=1)
    assert len({t[0] for t in texts}) == 3                     # told apart by their first token
    kw = dict(model=lm, lr=0.03, preset="paper")
    plain = cramfast.compress(texts, max_steps=300, **kw)
    assert [r.stop_reason for r in plain] == ["lossless"] * 3
    real = compressor.greedy_decode
    spoiled = []

    def first_decode_of_text_0_wrong(lm_, mems, firsts, n_new, layout):
        out = real(lm_, mems, firsts, n_new, layout)
        for row, first in enumerate(firsts):
            if first == texts[0][0] and not spoiled:
                spoiled.append(row)
                out[row][0] = (out[row][0] + 1) % lm_.vocab_size
        return out
    monkeypatch.setattr(compressor, "greedy_decode", first_decode_of_text_0_wrong)
    timings = []
    retried = cramfast.compress(texts, max_steps=300,
                                hooks=cramfast.Hooks(on_timing=timings.append),
                                **kw)
    assert [r.decode_retries for r in retried] == [1, 0, 0]
    checked = {phase: sum(t.texts for t in timings if t.phase == phase)
               for phase in ("decode_check", "finish")}
    assert checked == {"decode_check": 4, "finish": 3}        # text 0 decoded twice
    assert all(t.seconds >= 0 for t in timings) and {t.phase for t in timings} == {
        "steps", "decode_check", "finish"}
    assert all(r.exact and r.stop_reason == "lossless" for r in retried)
    # went on from where it stopped (here its mem already had the margin: 0 more steps)
    assert retried[0].steps >= plain[0].steps and retried[0].attempts == 2
    assert retried[0].margin >= compressor.DECODE_MARGIN_FLOOR[64]
    for a, b in zip(plain[1:], retried[1:]):
        assert (a.steps, a.stop_reason) == (b.steps, b.stop_reason)
    spoiled.clear()
    [out_of_budget] = cramfast.compress(texts[:1], max_steps=plain[0].steps, **kw)
    assert out_of_budget.stop_reason == "max_steps" and not out_of_budget.exact
    assert out_of_budget.accuracy == 1.0 and out_of_budget.decode_retries == 1
