"""compress_iter's Stream: texts submitted while the batch runs join it at the next sync, and
end as they would in one call (fp64: a text's optimization does not depend on its company)."""
import pytest
import torch

import cramfast
from cramfast.errors import CramfastError

from conftest import corpus_texts


@pytest.fixture(scope="module")
def lm(trained_path):
    return cramfast.load_model(trained_path, dtype="fp64")


def test_texts_submitted_while_it_runs_end_as_in_one_call(lm):
    texts = corpus_texts(lm.tokenizer, [16, 24, 32, 40, 48, 20], seed=3)
    kw = dict(model=lm, max_steps=200, fill_slots=0)
    together = cramfast.compress(texts, **kw)
    stream = cramfast.compress_iter(texts[:2], longest=48, **kw)
    got, waiting, order = {}, list(range(2, len(texts))), {0: 0, 1: 1}
    for index, result in stream:
        got[order[index]] = result
        if waiting:                          # the next text the moment one comes back
            text = waiting.pop(0)
            order[stream.submit(texts[text])] = text
    assert sorted(got) == list(range(len(texts))) and stream.submitted == 4
    assert {r.stop_reason for r in together} == {"lossless", "max_steps"}
    for a, b in zip(together, (got[i] for i in range(len(texts)))):
        assert (a.steps, a.stop_reason, a.decoded_ids) == (b.steps, b.stop_reason, b.decoded_ids)
        torch.testing.assert_close(a.mem, b.mem, rtol=1e-9, atol=1e-9)


def test_a_submitted_text_is_checked_at_once(lm):
    stream = cramfast.compress_iter(corpus_texts(lm.tokenizer, [16], seed=3), model=lm,
                                    max_steps=5)
    with pytest.raises(CramfastError, match="longer than the stream was sized for"):
        stream.submit(corpus_texts(lm.tokenizer, [40], seed=3)[0])
    with pytest.raises(CramfastError, match="at least 2 are needed"):
        stream.submit([5])
    assert len(list(stream)) == 1            # nothing bad was queued
