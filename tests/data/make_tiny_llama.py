"""Makes tests/data/tiny-llama-trained/: the tests' tokenizer (byte-level BPE, 300 tokens,
trained on conftest.CORPUS) and a tiny Llama (d 32, 2 layers) pretrained on CORPUS.

Why it is shipped rather than made by each test run: its weights come out of a few hundred fp32
AdamW steps, and fp32 kernels block and fuse differently on different CPUs (AVX2 vs AVX-512),
so a model made on the spot differs from one machine to the next, and so does every result
pinned on it. Loaded from this file, every machine starts from the same bits.

Rerun only to change the model (then regenerate tests/data/pinned_presets.json and say so):
    .venv/bin/python tests/data/make_tiny_llama.py
"""
import shutil
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
OUT = HERE / "tiny-llama-trained"
sys.path.insert(0, str(HERE.parent))

from conftest import CORPUS, tiny_config  # noqa: E402


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
    return float(loss.detach())


def main():
    from transformers import AutoModelForCausalLM
    shutil.rmtree(OUT, ignore_errors=True)
    tokenizer = make_tokenizer(OUT)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama", len(tokenizer)))
    pretrain(model, tokenizer)
    model.save_pretrained(OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
