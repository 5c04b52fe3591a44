"""The objective cramfast optimizes is the model's own, whatever its family: for every family of
tests/model_families.py, a tiny random model where cramfast's per-position loss, argmax and
margin equal those computed from the model's own forward(inputs_embeds=[mem ; embed(ids)])
logits, and the mem gradient equals autograd's through that forward (fp64). What cramfast cannot
reproduce is refused at load in one line."""
import pytest
import torch
import torch.nn.functional as F

import cramfast
from cramfast.constants import IGNORE_INDEX
from cramfast.engine import predict
from cramfast.errors import CramfastError

from conftest import TRAINED, corpus_texts
from model_families import FAMILIES, PRETRAINED, family_config, pretrained_folder

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(TRAINED)


def saved(config, folder, tokenizer, seed=0):
    """A random model of ``config``, its weights pushed off their init (Gemma's (1 + w) norms
    start at w = 0, where paths that differ can agree by accident), saved with the tokenizer."""
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def reference(lm, ids, targets, mem):
    """Loss, argmax and margin per position from the model's own forward on [mem ; embed(ids)]
    (its embedding module, scale included; its head, scale and cap included)."""
    m, t = mem.shape[1], ids.shape[1]
    x = torch.cat([mem, lm.model.get_input_embeddings()(ids)], dim=1)
    logits = lm.model(inputs_embeds=x, use_cache=False).logits[:, m:m + t - 1].double()
    flat, tgt = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    scored = tgt != IGNORE_INDEX
    loss = F.cross_entropy(flat, tgt.clamp_min(0), reduction="none") * scored
    target = flat.gather(1, tgt.clamp_min(0)[:, None]).squeeze(1)
    other = flat.detach().scatter(1, tgt.clamp_min(0)[:, None], float("-inf")).amax(dim=1)
    return loss, flat.argmax(dim=1), target.detach() - other, scored


@pytest.mark.parametrize("name", list(FAMILIES))
def test_cramfasts_objective_is_the_models_own(name, tmp_path, tokenizer):
    lm = cramfast.load_model(saved(family_config(name), tmp_path / "m", tokenizer), dtype="fp64")
    g = torch.Generator().manual_seed(1)
    b, m, t = 2, 2, 12
    ids = torch.randint(3, 300, (b, t), generator=g)
    targets = ids[:, 1:].clone()
    targets[1, 7:] = IGNORE_INDEX                      # a shorter text, right-padded
    start = torch.randn(b, m, lm.hidden_size, generator=g, dtype=torch.float64)
    start *= lm.embedding_std() * 3

    mem = start.clone().requires_grad_(True)
    loss, argmax, margin = predict(lm, ids, targets, mem, backend="torch")
    loss.sum().backward()
    theirs_mem = start.clone().requires_grad_(True)
    ref_loss, ref_argmax, ref_margin, scored = reference(lm, ids, targets, theirs_mem)
    ref_loss.sum().backward()

    torch.testing.assert_close(loss.reshape(-1), ref_loss, rtol=1e-9, atol=1e-9)
    assert torch.equal(argmax.reshape(-1)[scored], ref_argmax[scored])
    torch.testing.assert_close(margin.reshape(-1)[scored], ref_margin[scored], rtol=1e-9,
                               atol=1e-9)
    torch.testing.assert_close(mem.grad, theirs_mem.grad, rtol=1e-8, atol=1e-10)
    assert float(mem.grad.abs().max()) > 0


def test_what_each_family_does_is_read_from_it(tmp_path, tokenizer):
    """The transforms the contract test must see through are there: a scale, a cap, a factor."""
    load = lambda name: cramfast.load_model(saved(family_config(name), tmp_path / name,
                                                  tokenizer), dtype="fp64")
    assert load("gemma").input_scale == 8.0                    # sqrt(64)
    assert load("gemma2").softcap == 30.0
    assert load("gemma3_text").softcap is None
    assert load("gemma3_text:softcap").softcap == 30.0
    assert load("cohere").logit_scale == 0.0625
    assert load("granite").logit_scale == 1 / 8
    assert (load("llama").input_scale, load("llama").logit_scale) == (1.0, 1.0)


def refusal(config, folder, tokenizer) -> str:
    with pytest.raises(CramfastError) as caught:
        cramfast.load_model(saved(config, folder, tokenizer))
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_per_layer_token_inputs_are_refused(tmp_path, tokenizer):
    """Gemma 3n feeds per-layer token embeddings to every layer: a mem vector has none."""
    from transformers import AutoConfig
    kw = dict(FAMILIES["gemma3_text"][1], hidden_size_per_layer_input=8,
              vocab_size_per_layer_input=300, laurel_rank=8, altup_num_inputs=2,
              num_kv_shared_layers=0, activation_sparsity_pattern=[0.0, 0.0])
    config = AutoConfig.for_model("gemma3n_text", **kw)
    assert "per-layer inputs" in refusal(config, tmp_path / "g3n", tokenizer)


def test_a_bidirectional_decoder_is_refused(tmp_path, tokenizer):
    from transformers import AutoConfig
    config = AutoConfig.for_model("gemma3_text", **dict(FAMILIES["gemma3_text"][1],
                                                        use_bidirectional_attention=True))
    assert "use_bidirectional_attention" in refusal(config, tmp_path / "bi", tokenizer)


def test_a_head_transform_cramfast_does_not_know_is_refused_by_the_probe(tmp_path, tokenizer,
                                                                          monkeypatch):
    """A family whose logits get a factor cramfast has no rule for (Granite's, with the rule
    taken away) is caught by the load-time probe, not crammed with another objective."""
    from cramfast import models
    monkeypatch.setattr(models, "logit_rule", lambda model: dict(logit_scale=1.0, softcap=None))
    message = refusal(family_config("granite"), tmp_path / "gr", tokenizer)
    assert "differ from the model's own" in message and "'granite'" in message


@pytest.mark.parametrize("name", PRETRAINED)
def test_a_pretrained_tiny_model_of_each_class_crams_lossless_and_exact(name):
    """Texts crammed into one vector of a tiny model of each architecture class, pretrained
    on the tests' corpus (tests/data/make_tiny_families.py), each decoded back greedily."""
    lm = cramfast.load_model(str(pretrained_folder(name)), dtype="fp64")
    texts = corpus_texts(lm.tokenizer, [16, 24], seed=2)
    for result, ids in zip(cramfast.compress(texts, model=lm, max_steps=1500), texts):
        assert result.stop_reason == "lossless" and result.accuracy == 1.0, result
        assert result.exact and result.decoded_ids == ids[1:]
