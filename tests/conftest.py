# The Triton interpreter must be chosen before any @triton.jit function is decorated,
# i.e. before cramfast.kernels is imported anywhere: CPU machines have no GPU to compile for.
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path

import pytest
import torch

TRAINED = Path(__file__).resolve().parent / "data" / "tiny-llama-trained"
BOOKS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "books"
CORPUS = ("the quick brown fox jumps over the lazy dog. a cat sat on the mat and looked at "
          "the sky. it was a truth universally acknowledged that a single man must want a wife. "
          "numbers one two three four five six seven eight nine ten. ") * 4


def tiny_config(arch: str, vocab: int):
    """Tiny configs; a large init scale makes a random model's predictions sharp, and so
    sensitive to the mem vectors, like a trained one's (at 0.02 every output is ~uniform)."""
    config = _tiny_config(arch, vocab)
    config.initializer_range = INIT_RANGE
    return config


INIT_RANGE = 0.3


def _tiny_config(arch: str, vocab: int):
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, OPTConfig
    if arch == "llama":
        return LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=128,
                           tie_word_embeddings=True)
    if arch == "gpt_neox":
        return GPTNeoXConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                             num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=128)
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=128)
    if arch == "opt":  # inputs live in a projected dim: mem must be word_embed_proj_dim wide
        return OPTConfig(vocab_size=vocab, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=128, word_embed_proj_dim=16)
    raise ValueError(arch)


ARCHS = ("llama", "gpt_neox", "gpt2", "opt")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """{arch: folder} of tiny causal LMs saved with save_pretrained (random init, the shipped
    tokenizer), and "llama-trained": the shipped pretrained one (tests/data/make_tiny_llama.py).
    Only the random ones are made here: nothing pins a result on them, only comparisons made on
    the same machine (batched vs solo, fused vs HF's logits)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    root = tmp_path_factory.mktemp("tiny_models")
    tokenizer = AutoTokenizer.from_pretrained(TRAINED)
    folders = {}
    for arch in ARCHS:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(tiny_config(arch, len(tokenizer)))
        folder = root / arch
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[arch] = str(folder)
    folders["llama-trained"] = str(TRAINED)
    return folders


@pytest.fixture(scope="session")
def trained_path(tiny_models):
    return tiny_models["llama-trained"]


@pytest.fixture(scope="session")
def llama_path(tiny_models):
    return tiny_models["llama"]


@pytest.fixture(scope="session")
def books_dir():
    if not BOOKS.is_dir():
        pytest.skip(f"{BOOKS} is absent (it ships beside the repository as ../shared)")
    return BOOKS
