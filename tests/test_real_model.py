"""The embedded real model (SmolLM2-135M, 4-bit-derived) on real prose: short and bounded."""
import pytest

import cramfast
from cramfast import engine, sources


def test_embedded_model_loads_frozen():
    lm = cramfast.load_model()
    assert lm.name == "smollm2-135m-q4" and (lm.hidden_size, lm.vocab_size) == (576, 49152)
    assert lm.theoretical_capacity() == 591
    assert not any(p.requires_grad for p in lm.model.parameters()) and not lm.model.training


def test_eight_tokens_of_a_novel_crammed_and_decoded(books_dir):
    """With the default preset, well inside its budget at this length on any CPU. (Under the
    paper's plain Adam whether one of these passages is lossless in time changes with the
    thread count: fp32 rounding alone decides it, so that cannot be asserted here.)"""
    lm = cramfast.load_model()
    text = sources.read_text_file(books_dir / "pg84-frankenstein.txt")
    passages = sources.sample_passages(lm.tokenizer, text, 8, 2, seed=0)
    results = cramfast.compress(passages, model=lm, max_steps=300, patience=300)
    for ids, res in zip(passages, results):
        assert res.token_ids == ids and res.n_tokens == 8
        assert res.stop_reason == "lossless" and res.accuracy == 1.0 and res.exact
        assert res.steps <= 300 and res.info_gain_bits > 0
        decoded, _ = cramfast.decode(res, model=lm)
        assert decoded == ids
        # Alone, not in the batch the result was measured in: the CPU's fp32 matmuls block
        # differently by batch shape, and that rounding, carried through 30 layers, moves the
        # summed CE by some 1e-6 relative, by CPU. A wrong mem or position moves it by far more.
        ce, correct, _ = engine.evaluate(lm, [ids], res.mem[None])
        assert int(correct[0]) == 7 and float(ce[0]) == pytest.approx(res.ce_with_mem, rel=1e-4)
