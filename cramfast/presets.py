"""Named optimization settings. ``paper`` is the published protocol (Kuratov et al. 2025);
``fast`` changes only the learning rate, measured to reach lossless in far fewer steps on the
embedded model (see README, "Steps to lossless")."""
from __future__ import annotations

from cramfast.errors import CramfastError

PRESETS = {
    "paper": dict(lr=1e-2, beta1=0.9, beta2=0.9, weight_decay=0.01, max_steps=5000, patience=2000,
                  init_scale=1.0),
    "fast": dict(lr=3e-2, beta1=0.9, beta2=0.9, weight_decay=0.01, max_steps=5000, patience=2000,
                 init_scale=1.0),
}


def preset(name: str, **overrides) -> dict:
    """The preset's settings with ``overrides`` (None values ignored) applied."""
    if name not in PRESETS:
        raise CramfastError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


def parse_settings(pairs, allow_std: bool = False) -> dict:
    """Per-text settings from "key=value" strings (``--set`` flags, study candidates), typed
    like OptimSettings' fields. With ``allow_std``, "lr=0.5std" gives {"lr_std": 0.5}: lr as a
    multiple of std(embedding matrix), resolved once the model is known."""
    from cramfast.compressor import PER_SLOT, OptimSettings
    defaults = OptimSettings()
    out = {}
    for part in pairs:
        key, sep, value = part.partition("=")
        if not sep or key not in PER_SLOT:
            raise CramfastError(f"bad setting {part!r}: expected key=value with a key from "
                                f"{', '.join(PER_SLOT)}")
        if allow_std and key == "lr" and value.endswith("std"):
            key, value, kind = "lr_std", value[:-3], float
        else:
            kind = type(getattr(defaults, key))
        try:
            out[key] = kind(value)
        except ValueError:
            article = "an" if kind is int else "a"
            raise CramfastError(f"bad setting {part!r}: {key} must be {article} "
                                f"{kind.__name__}") from None
    return out
