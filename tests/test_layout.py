"""mem_position: the mem before or after a BOS token (engine/layout.py), in the objective,
the fused concat, the evaluation, greedy decoding and the records."""

import shutil

import pytest
import torch
import torch.nn.functional as F

import cramfast
from cramfast.constants import IGNORE_INDEX
from cramfast.engine.layout import FIRST, Layout, embed_sequence, layout_for
from cramfast.engine.step import predict
from cramfast.errors import CramfastError

from conftest import KERNEL_DEVICE, KERNEL_TOL, TRAINED, corpus_texts, needs_kernels

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def bos_lm(tmp_path_factory):
    """The tests' trained tiny llama with a BOS token in its tokenizer (its end-of-text token,
    as GPT-2-style tokenizers have it), in fp64."""
    from transformers import AutoTokenizer
    folder = tmp_path_factory.mktemp("bos") / "tiny-llama-bos"
    shutil.copytree(TRAINED, folder)
    tokenizer = AutoTokenizer.from_pretrained(TRAINED)
    tokenizer.bos_token = tokenizer.eos_token
    tokenizer.save_pretrained(folder)
    return cramfast.load_model(str(folder), dtype="fp64")


def sequence(lm, ids, mem, position):
    """The sequence each layout stands for, built by hand from the model's own embedding."""
    embed = lm.model.get_input_embeddings()
    bos = embed(torch.full((ids.shape[0], 1), lm.tokenizer.bos_token_id))
    parts = {"first": [mem, embed(ids)], "after_bos": [bos, mem, embed(ids)],
             "before_bos": [mem, bos, embed(ids)]}[position]
    return torch.cat(parts, dim=1), {"first": 0, "after_bos": 1, "before_bos": 1}[position]


@pytest.mark.parametrize("position", ["first", "after_bos", "before_bos"])
def test_each_layout_is_the_models_own_objective_on_its_sequence(bos_lm, position):
    """Loss and mem gradient of predict with a layout equal the model's forward on the
    sequence built by hand ([bos ; mem ; text] or [mem ; bos ; text]), text positions 2..T
    scored; the BOS row gets no gradient (only the mem is trained)."""
    lm = bos_lm
    g = torch.Generator().manual_seed(3)
    b, m, t = 2, 2, 10
    ids = torch.randint(3, 300, (b, t), generator=g)
    targets = ids[:, 1:].clone()
    targets[1, 6:] = IGNORE_INDEX
    start = torch.randn(b, m, lm.hidden_size, generator=g, dtype=torch.float64)
    start *= lm.embedding_std() * 3

    mem = start.clone().requires_grad_(True)
    loss, _, _ = predict(lm, ids, targets, mem, backend="torch",
                         layout=layout_for(lm, position))
    loss.sum().backward()

    theirs = start.clone().requires_grad_(True)
    x, extra = sequence(lm, ids, theirs, position)
    first_text = m + extra
    logits = lm.model(inputs_embeds=x, use_cache=False).logits[:, first_text:first_text + t - 1]
    flat, tgt = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    ref = F.cross_entropy(flat, tgt.clamp_min(0), reduction="none") * (tgt != IGNORE_INDEX)
    ref.sum().backward()
    torch.testing.assert_close(loss.reshape(-1), ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(mem.grad, theirs.grad, rtol=1e-9, atol=1e-12)


@needs_kernels
@pytest.mark.parametrize("position", ["after_bos", "before_bos"])
def test_the_fused_concat_builds_each_layout(bos_lm, position):
    """The Triton mem_embed takes the BOS row before the mem as part of its mem block and the
    BOS after it as a token: the sequence and the mem gradient equal the torch twin's (fp32)."""
    lm = cramfast.load_model(bos_lm.name, dtype="fp32", device=KERNEL_DEVICE)
    layout = layout_for(lm, position)
    ids = torch.randint(3, 300, (3, 7), generator=torch.Generator().manual_seed(5))
    ids = ids.to(KERNEL_DEVICE)
    start = torch.randn(3, 2, lm.hidden_size, device=KERNEL_DEVICE)
    out, grads = {}, {}
    for backend in ("torch", "triton"):
        mem = start.clone().requires_grad_(True)
        x, first_text = embed_sequence(lm, ids, mem, layout, backend)
        (x * torch.linspace(-1, 1, x.numel(), device=KERNEL_DEVICE).view_as(x)).sum().backward()
        out[backend], grads[backend] = (x.detach(), first_text), mem.grad
    assert out["triton"][1] == out["torch"][1] == 3
    torch.testing.assert_close(out["triton"][0], out["torch"][0], **KERNEL_TOL[torch.float32])
    torch.testing.assert_close(grads["triton"], grads["torch"], **KERNEL_TOL[torch.float32])


def test_the_layouts_differ_where_they_should(bos_lm):
    """A BOS at position 0 changes what the text positions see (the layouts are different
    objectives); the sequence without mem keeps the BOS; the fixed tokens sit where
    embed_sequence says the text starts."""
    lm = bos_lm
    ids = torch.tensor([[5, 60, 70, 80, 90]])
    mem = torch.randn(1, 1, lm.hidden_size, dtype=torch.float64)
    outs = {}
    for position in ("first", "after_bos", "before_bos"):
        layout = layout_for(lm, position)
        x, start = embed_sequence(lm, ids, mem, layout, "torch")
        assert x.shape[1] == 1 + layout.fixed + ids.shape[1] and start == 1 + layout.fixed
        torch.testing.assert_close(x[:, start:], lm.embed(ids))
        bare, bare_start = embed_sequence(lm, ids, None, layout)
        assert bare.shape[1] == layout.fixed + ids.shape[1] and bare_start == layout.fixed
        outs[position] = predict(lm, ids, ids[:, 1:], mem, "torch", layout=layout)[0]
    assert not torch.allclose(outs["first"], outs["after_bos"])
    assert not torch.allclose(outs["after_bos"], outs["before_bos"])
    assert layout_for(lm, "first") is FIRST
    assert layout_for(lm, "after_bos") == Layout(before=(lm.tokenizer.bos_token_id,))


@pytest.mark.parametrize("position", ["after_bos", "before_bos"])
def test_texts_crammed_in_each_layout_decode_back_in_it(bos_lm, position):
    """compress with a mem_position: lossless and exact, its decoded ids from that layout; the
    setting is in each result and in its checkpoint key; decode and decodes_back read it from
    the result; the evaluation without mem is the model's on [bos ; text]."""
    lm = bos_lm
    texts = corpus_texts(lm.tokenizer, [12, 20], seed=4)
    results = cramfast.compress(texts, model=lm, max_steps=1500, mem_position=position)
    for result, ids in zip(results, texts):
        assert result.settings["mem_position"] == position
        assert result.stop_reason == "lossless" and result.exact, result
        assert cramfast.decode(result)[0] == ids
    assert all(cramfast.engine.decodes_back(lm, results, batch_size=2))
    plain = cramfast.compress(texts[:1], model=lm, max_steps=1500)[0]
    assert cramfast.decode(results[0].mem, lm, len(texts[0]) - 1, texts[0][0],
                           mem_position=position)[0] == texts[0]
    from cramfast.engine.decoding import evaluate
    without = evaluate(lm, texts[:1], None, layout=layout_for(lm, position))
    assert results[0].ce_without_mem == pytest.approx(float(without.ce[0]), rel=1e-12)
    assert results[0].ce_without_mem != pytest.approx(plain.ce_without_mem, rel=1e-6)


def test_a_layout_needs_a_bos_token(trained_path):
    """A tokenizer without a BOS cannot take after_bos or before_bos: one line says so."""
    lm = cramfast.load_model(str(TRAINED), dtype="fp64")
    with pytest.raises(CramfastError, match="has no bos_token_id"):
        cramfast.compress([[3, 50, 7, 9]], model=lm, max_steps=2, mem_position="after_bos")
    with pytest.raises(CramfastError, match="mem_position"):
        cramfast.compress([[3, 50, 7, 9]], model=lm, max_steps=2, mem_position="middle")


def test_a_tokenizer_that_adds_a_bos_itself_takes_only_first():
    """Its texts begin with the BOS: another one in the sequence is refused in one line."""
    from types import SimpleNamespace

    class AddsBos:                  # as Llama 3's: every encoding starts with the BOS
        bos_token_id = 1

        def __call__(self, text):
            return SimpleNamespace(input_ids=[1, 57])

    lm = SimpleNamespace(tokenizer=AddsBos(), name="llama-like")
    assert layout_for(lm, "first") == Layout()
    for position in ("after_bos", "before_bos"):
        with pytest.raises(CramfastError, match="starts every text with its BOS"):
            layout_for(lm, position)
