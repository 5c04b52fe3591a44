"""The scheduled loop (compressor): batch independence, refills, parallel attempts, per-text
settings, other architectures and backends, end to end."""

import pytest
import torch

import cramfast
import cramfast.settings
from cramfast import engine
from cramfast.engine import Hooks
from cramfast.engine.step import pad_batch, predict

from conftest import corpus_texts


def test_per_text_settings_equal_separate_runs(tiny_models):
    lm = cramfast.load_model(tiny_models["llama"], dtype=torch.float64)
    text = [3, 50, 7, 9, 11, 40]
    mixed = cramfast.compress([text, text], model=lm, max_steps=6, per_text=[{"lr": 0.1},
                                                                             {"lr": 0.01}])
    for res, lr in zip(mixed, (0.1, 0.01)):
        [alone] = cramfast.compress([text], model=lm, max_steps=6, lr=lr)
        torch.testing.assert_close(res.mem, alone.mem, rtol=1e-9, atol=1e-9)
        assert res.settings["lr"] == lr
    with pytest.raises(cramfast.CramfastError, match="per_text"):
        cramfast.compress([text], model=lm, per_text=[{"sync_every": 3}])


def test_batched_equals_solo(tiny_models):
    lm = cramfast.load_model(tiny_models["llama"], dtype=torch.float64)
    texts = [[3, 50, 7, 9, 11], [4, 8, 15, 16, 23, 42, 99, 7, 1], [200, 100, 31]]
    kw = dict(model=lm, lr=0.1, max_steps=25, patience=1000, sync_every=4, fill_slots=0)
    together = cramfast.compress(texts, **kw)
    for text, res in zip(texts, together):
        [alone] = cramfast.compress([text], **kw)
        assert alone.steps == res.steps and alone.stop_reason == res.stop_reason
        torch.testing.assert_close(alone.mem, res.mem, rtol=1e-6, atol=1e-6)


def test_end_to_end_trained_model_all_exact(trained_path):
    lm = cramfast.load_model(trained_path)
    texts = corpus_texts(lm.tokenizer, [4, 9, 16, 24, 32])
    results = cramfast.compress(texts, model=lm, lr=0.03, max_steps=400, seed=1)
    for res, text in zip(results, texts):
        assert res.stop_reason == "lossless" and res.accuracy == 1.0 and res.exact
        assert res.token_ids == text and res.mem.shape == (1, lm.hidden_size)
        # the returned mem is the one that reached accuracy 1.0, not one update past it
        correct = engine.evaluate(lm, [text], res.mem[None]).correct
        assert int(correct[0]) == len(text) - 1
        assert res.accuracy >= res.accuracy_without_mem


@pytest.mark.parametrize("arch", ["gpt_neox", "gpt2", "opt"])
def test_other_architectures(tiny_models, arch):
    lm = cramfast.load_model(tiny_models[arch])
    res, = cramfast.compress([[5, 9, 100, 200, 7, 33]], model=lm, n_mem=2, lr=0.1, max_steps=30)
    width = 16 if arch == "opt" else 32   # OPT's inputs live in word_embed_proj_dim
    assert res.mem.shape == (2, width) and lm.hidden_size == width
    assert 0 <= res.accuracy <= 1 and res.steps <= 30
    ce, correct, _ = engine.evaluate(lm, [res.token_ids], res.mem[None])
    assert float(ce[0]) == pytest.approx(res.ce_with_mem) and int(correct[0]) / 5 == res.accuracy


def test_nonfinite_loss_fails_that_text_only(trained_path):
    lm = cramfast.load_model(trained_path)
    texts = corpus_texts(lm.tokenizer, [8, 10])

    def poisoned(lm_, ids, *args):
        mem, draws = engine.attempt_start(lm_, ids, *args)
        return (mem * float("nan") if ids == texts[0] else mem), draws
    bad, good = cramfast.compress(texts, model=lm, lr=0.03, max_steps=300,
                                  hooks=Hooks(start=poisoned))
    assert bad.stop_reason == "nonfinite" and bad.error and not bad.exact
    assert good.stop_reason == "lossless" and good.exact


def test_triton_and_torch_backends_agree(trained_path):
    lm = cramfast.load_model(trained_path)
    texts = corpus_texts(lm.tokenizer, [6, 11], seed=3)   # the interpreter is slow: few steps
    kw = dict(model=lm, lr=0.03, max_steps=12, sync_every=4)
    by_torch = cramfast.compress(texts, backend="torch", **kw)
    by_triton = cramfast.compress(texts, backend="triton", **kw)
    for ids, a, b in zip(texts, by_torch, by_triton):
        assert (a.steps, a.stop_reason) == (b.steps, b.stop_reason)
        torch.testing.assert_close(a.mem, b.mem, rtol=1e-4, atol=1e-4)
        # a position whose target ties its best rival (|margin| within fp32 reordering of the two
        # backends' sums) may go either way on another CPU; every other one must agree
        padded, targets = pad_batch([ids], len(ids), lm.device)
        ties = int((predict(lm, padded, targets, a.mem[None], "torch")[2].abs() < 1e-3).sum())
        n = a.n_tokens - 1
        assert abs(round(a.accuracy * n) - round(b.accuracy * n)) <= ties
        assert a.ce_with_mem == pytest.approx(b.ce_with_mem, rel=1e-4)


def test_refilled_slots_equal_solo(tiny_models):
    """Five texts through two slots: later texts start in freed slots, mid-run of others."""
    lm = cramfast.load_model(tiny_models["llama"], dtype=torch.float64)
    texts = [[3, 50, 7, 9, 11], [4, 8, 15, 16, 23, 42, 99], [200, 100, 31], [5, 6, 7, 8],
             [9, 19, 29, 39, 49, 59]]
    kw = dict(model=lm, lr=0.1, patience=1000, sync_every=2, fill_slots=0)
    budgets = [{"max_steps": s} for s in (4, 9, 3, 6, 5)]
    refilled = cramfast.compress(texts, max_slots=2, per_text=budgets, **kw)
    for text, budget, res in zip(texts, budgets, refilled):
        [alone] = cramfast.compress([text], **budget, **kw)
        assert (alone.steps, alone.stop_reason) == (res.steps, res.stop_reason)
        torch.testing.assert_close(alone.mem, res.mem, rtol=1e-6, atol=1e-6)


def test_parallel_attempts_in_idle_slots(trained_path, tiny_models):
    """fill_slots: idle slots run other seeded attempts of running texts; a text returns its
    first lossless attempt, which is the same optimization as that attempt run alone (fp64:
    alone and batched round alike to far below any step's change, whatever the CPU)."""
    lm = cramfast.load_model(trained_path, dtype=torch.float64)
    texts = corpus_texts(lm.tokenizer, [16, 24], seed=5)
    kw = dict(model=lm, lr=0.03, max_steps=400, sync_every=4, seed=2, stall_steps=0)
    results = cramfast.compress(texts, max_slots=4, fill_slots=4, **kw)
    assert all(r.attempts >= 2 for r in results)
    for text, res in zip(texts, results):
        assert res.stop_reason == "lossless" and res.exact and res.attempt < res.attempts
        start = engine.init_mem(lm, text, 1, 2, res.settings["init_scale"], res.attempt,
                                    res.settings["init"])
        [alone] = cramfast.compress([text], init_mems=[start], fill_slots=0, **kw)
        assert (alone.steps, alone.stop_reason) == (res.steps, res.stop_reason)
        torch.testing.assert_close(alone.mem, res.mem, rtol=1e-9, atol=1e-9)
    # a text never lossless: every attempt stops within what was left of its max_steps
    tiny = cramfast.load_model(tiny_models["llama"], dtype=torch.float64)
    hard = [[3, 50, 7, 9, 11, 40, 41, 42], [4, 8, 15, 16, 23, 42, 99, 7, 1]]
    kw = dict(model=tiny, lr=0.01, max_steps=40, patience=1000, sync_every=4, max_slots=4)
    alone = cramfast.compress(hard, fill_slots=0, **kw)
    both = cramfast.compress(hard, fill_slots=4, **kw)
    for a, b in zip(alone, both):
        assert b.attempts == 2 and b.stop_reason == "max_steps"
        assert b.steps == (40 if b.attempt == 0 else 36)   # attempt 1 started 4 steps later
        if b.attempt == 0:
            assert a.steps == b.steps and torch.allclose(a.mem, b.mem, rtol=1e-9, atol=1e-9)
    assert all(r.attempts == 1 and r.attempt == 0 for r in alone)


def test_24_texts_with_refills_all_exact(trained_path):
    lm = cramfast.load_model(trained_path)
    lengths = [4 + (i * 28) // 23 for i in range(24)]          # 4 ... 32
    texts = corpus_texts(lm.tokenizer, lengths, seed=11)
    results = cramfast.compress(texts, model=lm, lr=0.03, max_steps=400, max_slots=6,
                                token_budget=6 * 33, sync_every=4)
    assert [r.n_tokens for r in results] == lengths
    assert all(r.exact and r.stop_reason == "lossless" for r in results)


def test_lr_std_resolves_per_model_and_explicit_lr_wins(tiny_models):
    lm = cramfast.load_model(tiny_models["llama"], dtype=torch.float64)
    text = [3, 50, 7, 9, 11, 40]
    [rel] = cramfast.compress([text], model=lm, max_steps=2, preset="paper", lr_std=0.5)
    assert rel.settings["lr"] == pytest.approx(0.5 * lm.embedding_std())
    [adamw] = cramfast.compress([text], model=lm, max_steps=2, preset="fast",
                                optimizer="adamw", lr_std=1.0)
    assert adamw.settings["lr"] == pytest.approx(lm.embedding_std())
    assert adamw.settings["decay_steps"] == 35          # fast: 7 steps per predicted token
    explicit = cramfast.settings.with_overrides(dict(adamw.settings), {"lr": 0.05})
    assert explicit["lr"] == 0.05 and explicit["lr_std"] == 0
    [mixed, plain] = cramfast.compress([text, text], model=lm, max_steps=2, preset="paper",
                                       lr_std=0.5, per_text=[{}, {"lr": 0.05}])
    assert mixed.settings["lr"] == rel.settings["lr"] and plain.settings["lr"] == 0.05
    [fast] = cramfast.compress([text], model=lm, max_steps=2, preset="fast")
    assert fast.settings["optimizer"] == "lamb" and fast.settings["lr"] == 0.2   # relative


