"""compress_iter's Stream: texts submitted while the batch runs join it at the next sync, and
end as they would in one call (fp64: a text's optimization does not depend on its company)."""
import pytest
import torch

import cramfast
from cramfast.engine import checkpoint
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


def test_a_withdrawn_text_leaves_without_a_result_and_goes_on_from_its_checkpoint(lm, tmp_path):
    """Stream.withdraw: the text is saved as it stands and not yielded, the others end as they
    would have; a later run with the same checkpoint goes on from the saved state and ends with
    the uninterrupted result, bit for bit (fp64)."""
    texts = corpus_texts(lm.tokenizer, [16, 40, 48], seed=3)
    kw = dict(model=lm, max_steps=200, fill_slots=0, checkpoint_seconds=3600)
    expected = cramfast.compress(texts, **kw)
    assert expected[0].steps < min(expected[1].steps, expected[2].steps)
    stream = cramfast.compress_iter(texts, checkpoint=tmp_path, **kw)
    got = []
    for index, result in stream:
        got.append((index, result))
        if index == 0:
            stream.withdraw(2)
    assert [i for i, _ in got] == [0, 1]                  # text 2 never came
    for i, result in got:
        assert (result.steps, result.decoded_ids) == (expected[i].steps, expected[i].decoded_ids)
        assert torch.equal(result.mem, expected[i].mem)
    [saved] = list(tmp_path.iterdir())                    # text 2's record, and only it
    at = checkpoint.progress(checkpoint.unpack(saved.read_bytes()))
    assert expected[0].steps <= at["steps"] < expected[2].steps
    [resumed] = cramfast.compress([texts[2]], checkpoint=tmp_path, **kw)
    assert (resumed.steps, resumed.best_step, resumed.stop_reason, resumed.decoded_ids) == (
        expected[2].steps, expected[2].best_step, expected[2].stop_reason,
        expected[2].decoded_ids)
    assert torch.equal(resumed.mem, expected[2].mem)
    assert not list(tmp_path.iterdir())                   # taken: its record is gone


def test_withdrawing_every_text_left_ends_the_stream(lm):
    texts = corpus_texts(lm.tokenizer, [16, 40], seed=3)
    stream = cramfast.compress_iter(texts, model=lm, max_steps=200, fill_slots=0)
    got = []
    for index, _ in stream:
        got.append(index)
        stream.withdraw(1)
        stream.withdraw(1)                                # twice: the second does nothing
    assert got == [0]
