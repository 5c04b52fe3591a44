# The Triton interpreter must be chosen before any @triton.jit function is decorated,
# i.e. before cramfast.kernels is imported anywhere: CPU machines have no GPU to compile for.
import os
import random
import shutil

os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path

import pytest
import torch

from cramfast.kernels.interpreter import INTERPRET

TRAINED = Path(__file__).resolve().parent / "data" / "tiny-llama-trained"

# The kernel tests': their device (the interpreter on a CPU, the compiled kernels on CUDA), the
# skip where neither runs, and the bars of each dtype against a full-logits reference.
KERNEL_DEVICE = "cpu" if INTERPRET else "cuda"
needs_kernels = pytest.mark.skipif(not INTERPRET and not torch.cuda.is_available(),
                                   reason="Triton kernels need CUDA or TRITON_INTERPRET=1")
KERNEL_TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5),
              torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
              torch.float16: dict(rtol=1e-2, atol=1e-2)}
REPO = Path(__file__).resolve().parents[1]
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


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """A CLI run in-process sets torch's thread count (--threads): the tests after it keep
    theirs, since a reduction's rounding can follow the thread count."""
    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


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


def write_rotated_corpus(folder: Path) -> Path:
    """corpus.txt in ``folder``: 4 paragraphs, each CORPUS's first 4 sentences rotated by one
    more and repeated 3 times (prose in the tiny model's own distribution)."""
    path = folder / "corpus.txt"
    sentences = [s.strip() + "." for s in CORPUS.split(". ") if s.strip()][:4]
    path.write_text("\n\n".join(" ".join((sentences[k:] + sentences[:k]) * 3) for k in range(4)))
    return path


def corpus_texts(tokenizer, lengths, seed=0):
    ids = tokenizer(CORPUS)["input_ids"]
    rng = random.Random(seed)
    out = []
    for length in lengths:
        start = rng.randrange(0, len(ids) - length)
        out.append(ids[start:start + length])
    return out


def env():
    """The environment of a subprocess that imports cramfast from this checkout."""
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def bound_by_permissions(command: list) -> list:
    """``command`` run so that file permission bits bind it: as root, without the capabilities
    that override them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), through setpriv."""
    if os.geteuid() != 0:
        return command
    if shutil.which("setpriv") is None:
        pytest.skip("root without setpriv: permission bits cannot be made to bind this process")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]


def one_line_failure(run, prog):
    err = run.stderr.strip()
    assert run.returncode == 2 and err.startswith(f"{prog}: error:") and "\n" not in err, run.stderr
    return err


def fake_compressor(capacity_of, accept_init=False, right_but_not_back=False):
    """Yields results as cramfast.compress_iter does: lossless iff len <= capacity_of(ids).
    With right_but_not_back a longer text has every token right in the training forward
    (accuracy 1.0) but does not decode back, as one that ran out of steps in its decode retry."""
    from cramfast.metrics import make_result
    calls = []

    def compress_iter(texts, model=None, n_mem=1, seed=0, backend=None, preset="paper", **optim):
        calls.append(dict(lengths=[len(t) for t in texts], init_mems=optim.pop("init_mems", None)))
        for i, ids in enumerate(texts):
            ok = len(ids) <= capacity_of(ids)
            n = len(ids) - 1
            all_right = ok or right_but_not_back
            yield i, make_result(token_ids=ids, correct_with_mem=n if all_right else n // 2,
                                 correct_without_mem=0,
                                 ce_without_mem=3.0 * n, ce_with_mem=0.0 if ok else 1.5 * n,
                                 decoded_ids=ids[1:] if ok else ids[:0:-1],
                                 stop_reason="lossless" if ok else "max_steps",
                                 mem=torch.full((n_mem, 32), float(len(ids))), n_mem=n_mem,
                                 model="fake",
                                 seed=seed, steps=len(ids), best_step=len(ids), seconds=0.0,
                                 text="")

    if accept_init:
        def with_init(texts, model=None, n_mem=1, seed=0, backend=None, preset="paper",
                      init_mems=None,
                      **optim):
            return compress_iter(texts, model, n_mem, seed, backend, preset, init_mems=init_mems,
                                 **optim)
        with_init.calls = calls
        return with_init
    compress_iter.calls = calls
    return compress_iter
