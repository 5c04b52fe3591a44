"""Makes tests/data/tiny-<family>-trained/: a tiny model of each architecture class whose objective
cramfast transforms (tests/model_families.py), pretrained on conftest.CORPUS like
tiny-llama-trained (make_tiny_llama.py, whose tokenizer they share), so that a text crams
lossless in a test's budget. Shipped, not made per run, for the reason make_tiny_llama.py gives.

    gemma       Gemma 1: sqrt(d) input scale
    gemma2      Gemma 2: sqrt(d) input scale, final logit soft-cap 30, eager attention
    gemma3_text Gemma 3: sqrt(d) input scale, sliding and full attention layers
    cohere      a logit scale (0.0625)
    granite     logits divided by logits_scaling 8, embedding and residual multipliers
    gpt_neox    NeoX-like (parallel attention and MLP, partial rotary)
    qwen3_moe   a mixture of experts

Rerun only to change them:  .venv/bin/python tests/data/make_tiny_families.py [NAME ...]
(the names given, or all of PRETRAINED)
"""
import shutil
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from make_tiny_llama import OUT as LLAMA  # noqa: E402
from make_tiny_llama import pretrain  # noqa: E402
from model_families import PRETRAINED, family_config, pretrained_folder  # noqa: E402

STEPS = {"cohere": 1000}   # its logits are scaled down 16-fold: slower to fit


def main():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(LLAMA)
    for name in sys.argv[1:] or PRETRAINED:
        out = pretrained_folder(name)
        shutil.rmtree(out, ignore_errors=True)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(family_config(name))
        loss = pretrain(model, tokenizer, steps=STEPS.get(name, 300))
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        print(f"wrote {out} (last training loss {loss:.3f})")


if __name__ == "__main__":
    main()
