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
