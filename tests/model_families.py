"""The causal-LM families cramfast is tested on: a tiny config of each (transformers' own config
classes, hidden 64, 2 layers, the tests' 300-token vocabulary). tests/test_model_families.py
checks cramfast's objective against each model's own forward; docs/models.md's list of tested
families is generated from FAMILIES (docs/families_table.py).

A family is named by its model_type; a variant (``name:variant``) sets what the family's
default leaves off (Gemma 3 with a final soft-cap)."""
from __future__ import annotations

from pathlib import Path

V, D, LAYERS = 300, 64, 2
LLAMA = dict(vocab_size=V, hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=4,
             num_key_value_heads=2, intermediate_size=128, max_position_embeddings=128)
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
GRANITE = dict(embedding_multiplier=12.0, logits_scaling=8.0, residual_multiplier=0.22,
               attention_multiplier=0.0078125)

# model_type (or model_type:variant) -> (what the family does that cramfast reproduces,
#                                        the tiny config's keywords)
FAMILIES = {
    "llama": ("", LLAMA),
    "mistral": ("", LLAMA),
    "qwen2": ("", LLAMA),
    "qwen3": ("", dict(LLAMA, head_dim=16)),
    "qwen3_moe": ("mixture of experts", dict(LLAMA, head_dim=16, **MOE)),
    "qwen2_moe": ("mixture of experts", dict(LLAMA, **MOE, shared_expert_intermediate_size=32)),
    "mixtral": ("mixture of experts", dict(LLAMA, num_local_experts=4, num_experts_per_tok=2)),
    "olmoe": ("mixture of experts", dict(LLAMA, num_experts=4, num_experts_per_tok=2)),
    "deepseek_v3": ("MLA attention, mixture of experts",
                    dict(LLAMA, num_key_value_heads=4, moe_intermediate_size=32,
                         n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2,
                         n_group=1, topk_group=1, first_k_dense_replace=1, kv_lora_rank=16,
                         q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=8,
                         v_head_dim=16)),
    "phi": ("head bias", LLAMA),
    "phi3": ("", dict(LLAMA, pad_token_id=0)),
    "olmo": ("", LLAMA),
    "olmo2": ("", LLAMA),
    "gpt_neox": ("", LLAMA),
    "gpt2": ("tied embeddings", dict(vocab_size=V, n_embd=D, n_layer=LAYERS, n_head=4,
                                     n_positions=128)),
    "gpt_bigcode": ("", dict(vocab_size=V, n_embd=D, n_layer=LAYERS, n_head=4, n_positions=128)),
    "gptj": ("head bias", dict(vocab_size=V, n_embd=D, n_layer=LAYERS, n_head=4,
                               n_positions=128, rotary_dim=8)),
    "codegen": ("head bias", dict(vocab_size=V, n_embd=D, n_layer=LAYERS, n_head=4,
                                  n_positions=128, rotary_dim=8)),
    "opt": ("projected embeddings", dict(vocab_size=V, hidden_size=D, num_hidden_layers=LAYERS,
                                         num_attention_heads=4, ffn_dim=128,
                                         word_embed_proj_dim=32, max_position_embeddings=128)),
    "falcon": ("", dict(vocab_size=V, hidden_size=D, num_hidden_layers=LAYERS,
                        num_attention_heads=4)),
    "bloom": ("", dict(vocab_size=V, hidden_size=D, n_layer=LAYERS, n_head=4)),
    "stablelm": ("", LLAMA),
    "starcoder2": ("", LLAMA),
    "persimmon": ("", LLAMA),
    "nemotron": ("", LLAMA),
    "smollm3": ("", dict(LLAMA, pad_token_id=0)),
    "glm": ("", dict(LLAMA, head_dim=16, pad_token_id=0)),
    "helium": ("", dict(LLAMA, head_dim=16)),
    "gemma": ("input scale sqrt(d)", dict(LLAMA, head_dim=16)),
    "gemma2": ("input scale, final logit soft-cap 30", dict(LLAMA, head_dim=16)),
    "gemma3_text": ("input scale", dict(LLAMA, head_dim=16,
                                        layer_types=["sliding_attention", "full_attention"])),
    "gemma3_text:softcap": ("input scale, final logit soft-cap",
                            dict(LLAMA, head_dim=16, final_logit_softcapping=30.0,
                                 layer_types=["sliding_attention", "full_attention"])),
    "vaultgemma": ("input scale, final logit soft-cap", dict(LLAMA, head_dim=16)),
    "cohere": ("logit scale", dict(LLAMA, bos_token_id=1, eos_token_id=2, pad_token_id=0)),
    "cohere2": ("logit scale", dict(LLAMA, bos_token_id=1, eos_token_id=2, pad_token_id=0)),
    "granite": ("logits divided by logits_scaling", dict(LLAMA, **GRANITE)),
    "granitemoe": ("logits divided by logits_scaling, mixture of experts",
                   dict(LLAMA, num_local_experts=4, num_experts_per_tok=2, **GRANITE)),
    "hyperclovax": ("logits times logits_scaling", dict(LLAMA, embedding_multiplier=3.0,
                                                        logits_scaling=0.5)),
    "minicpm3": ("input scale, hidden state divided before the head",
                 dict(LLAMA, num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=32,
                      qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, scale_emb=12,
                      dim_model_base=16)),
}


# the families shipped pretrained (tests/data/make_tiny_families.py), one per architecture
# class whose objective cramfast transforms, beside tests/data/tiny-llama-trained
PRETRAINED = ("gemma", "gemma2", "gemma3_text", "cohere", "granite", "gpt_neox", "qwen3_moe")


def pretrained_folder(name: str) -> Path:
    return Path(__file__).resolve().parent / "data" / f"tiny-{name}-trained"


def family_config(name: str):
    """The tiny config of FAMILIES[name], from transformers' own config class."""
    from transformers import AutoConfig
    _, kwargs = FAMILIES[name]
    return AutoConfig.for_model(name.split(":")[0], **kwargs)
