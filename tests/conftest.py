# The Triton interpreter must be chosen before any @triton.jit function is decorated,
# i.e. before cramfast.kernels is imported anywhere: CPU machines have no GPU to compile for.
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

BOOKS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "books"
CORPUS = ("the quick brown fox jumps over the lazy dog. a cat sat on the mat and looked at "
          "the sky. it was a truth universally acknowledged that a single man must want a wife. "
          "numbers one two three four five six seven eight nine ten. ") * 4


def make_tokenizer(folder: Path):
    """A small byte-level BPE tokenizer trained here (no hub), saved as a HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    fast.save_pretrained(folder)
    return fast


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
        return LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                           tie_word_embeddings=True)
    if arch == "gpt_neox":
        return GPTNeoXConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=128)
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=128)
    if arch == "opt":  # inputs live in a projected dim: mem must be word_embed_proj_dim wide
        return OPTConfig(vocab_size=vocab, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=128, word_embed_proj_dim=16)
    raise ValueError(arch)


ARCHS = ("llama", "gpt_neox", "gpt2", "opt")


def pretrain(model, tokenizer, steps: int = 150, window: int = 32):
    """A few hundred AdamW steps on CORPUS, so the tiny model predicts its text the way a
    pretrained LM predicts prose: then a mem vector has little left to fix and cramming
    converges in tens of steps, as tests need."""
    ids = torch.tensor(tokenizer(CORPUS)["input_ids"])
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - window, (8,), generator=gen)
        batch = torch.stack([ids[s:s + window] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """{arch: folder} of tiny causal LMs saved with save_pretrained (random init), and
    "llama-trained": the llama one after a short pretraining on CORPUS."""
    from transformers import AutoModelForCausalLM
    root = tmp_path_factory.mktemp("tiny_models")
    tokenizer = make_tokenizer(root / "tokenizer")
    folders = {}
    for arch in ARCHS + ("llama-trained",):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(tiny_config(arch.split("-")[0], len(tokenizer)))
        if arch.endswith("-trained"):
            pretrain(model, tokenizer)
        folder = root / arch
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[arch] = str(folder)
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
