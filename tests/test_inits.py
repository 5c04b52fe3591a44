"""inits: seeded starts, text-mean starts, warm starts."""

import pytest
import torch

import cramfast
import cramfast.settings
from cramfast import engine
from cramfast.engine import TextSettings

from conftest import corpus_texts


def test_same_seed_same_result_other_seed_differs(trained_path):
    """The random init is seeded; init text_mean's first attempt does not depend on the seed
    (the seed picks the later attempts' starts)."""
    text = corpus_texts(cramfast.load_model(trained_path).tokenizer, [12])
    kw = dict(model=trained_path, max_steps=5, preset="paper")
    a, = cramfast.compress(text, seed=3, **kw)
    b, = cramfast.compress(text, seed=3, **kw)
    c, = cramfast.compress(text, seed=4, **kw)
    assert torch.equal(a.mem, b.mem) and not torch.equal(a.mem, c.mem)
    kw.update(init="text_mean")
    d, = cramfast.compress(text, seed=3, **kw)
    e, = cramfast.compress(text, seed=4, **kw)
    assert torch.equal(d.mem, e.mem) and not torch.equal(a.mem, d.mem)


def test_init_mems_warm_start(trained_path):
    lm = cramfast.load_model(trained_path)
    text = corpus_texts(lm.tokenizer, [10], seed=7)
    first, = cramfast.compress(text, model=lm, lr=0.03, max_steps=300)
    again, = cramfast.compress(text, model=lm, lr=0.03, init_mems=[first.mem])
    assert first.exact and again.steps == 0 and torch.equal(again.mem, first.mem)
    with pytest.raises(cramfast.CramfastError, match="shape"):
        cramfast.compress(text, model=lm, init_mems=[torch.zeros(2, 3)])


def test_text_mean_init_is_the_chunk_means_at_the_random_init_norm(tiny_models):
    """init "text_mean": mem vector j points along the mean input embedding of the j-th of m
    contiguous chunks of the text (the whole text's where a chunk is empty), at the random
    init's mean norm, scale * std(E) * sqrt(d)."""
    lm = cramfast.load_model(tiny_models["llama"], dtype=torch.float64)
    emb, d = lm.embedding.detach(), lm.hidden_size
    ids = [3, 50, 7, 9, 11]
    norm = 4.0 * lm.embedding_std() * d ** 0.5
    unit = lambda v: v / v.norm()
    [one] = engine.text_mean_init(lm, ids, 1, 4.0)
    torch.testing.assert_close(one, unit(emb[ids].mean(0)) * norm)
    two = engine.text_mean_init(lm, ids, 2, 4.0)          # chunks [3, 50, 7], [9, 11]
    torch.testing.assert_close(two, torch.stack([unit(emb[[3, 50, 7]].mean(0)),
                                                 unit(emb[[9, 11]].mean(0))]) * norm)
    many = engine.text_mean_init(lm, ids[:2], 3, 4.0)      # chunks [3], [50], []
    torch.testing.assert_close(many[2], unit(emb[[3, 50]].mean(0)) * norm)
    # the first attempt starts from the text; later ones (and redraw restarts) halfway between
    # it and their seeded random draw, at the same norm
    assert torch.equal(engine.init_mem(lm, ids, 1, 0, 4.0, 0, kind="text_mean"), one[None])
    [later] = engine.init_mem(lm, ids, 1, 0, 4.0, 1, kind="text_mean")
    [draw] = engine.init_mem(lm, ids, 1, 0, 4.0, 1)
    torch.testing.assert_close(later, unit(unit(one) + unit(draw)) * norm)
    settings = TextSettings(init="text_mean", init_scale=4.0, stall_steps=5, max_restarts=2)
    restarts = engine.restart_draws(lm, ids, 1, 0, settings)
    assert restarts.shape == (2, 1, d) and not torch.equal(restarts[0], restarts[1])
    for start in restarts[:, 0]:
        torch.testing.assert_close(start.norm(), torch.tensor(norm, dtype=start.dtype))
        assert 0.6 < float(unit(start) @ unit(one)) < 0.8    # about 45 degrees from the mean


def test_text_mean_init_runs_as_that_warm_start(tiny_models):
    """compress with init="text_mean" is the random-init run started from text_mean_init;
    a bad init kind or scale is refused."""
    lm = cramfast.load_model(tiny_models["llama"], dtype=torch.float64)
    texts = [[3, 50, 7, 9, 11, 40, 41, 42], [4, 8, 15, 16, 23, 42, 99, 7, 1]]
    kw = dict(model=lm, preset="paper", lr=0.05, max_steps=20, sync_every=4, init_scale=3.0)
    from_text = cramfast.compress(texts, init="text_mean", **kw)
    starts = [engine.text_mean_init(lm, ids, 1, 3.0) for ids in texts]
    warm = cramfast.compress(texts, init_mems=starts, **kw)
    for a, b in zip(from_text, warm):
        assert (a.steps, a.stop_reason) == (b.steps, b.stop_reason)
        torch.testing.assert_close(a.mem, b.mem, rtol=0, atol=0)
    assert from_text[0].settings["init"] == "text_mean"
    assert not torch.equal(cramfast.compress(texts[:1], **kw)[0].mem, from_text[0].mem)
    for bad in (dict(init="zeros"), dict(init_scale=0.0)):
        with pytest.raises(cramfast.CramfastError, match="init"):
            cramfast.compress(texts, **dict(kw, **bad))

