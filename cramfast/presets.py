"""Named optimization settings. ``paper`` is the published protocol (Kuratov et al. 2025);
``fast`` is the best candidate of the optimizer study (docs/study.md): each text's first attempt
starts from the mean of its input embeddings, at 20 times the random init's norm (init
"text_mean"; later attempts halfway between that and a random direction); LAMB in place of AdamW
(the paper's betas and weight decay; each mem vector's step rescaled to lr * its norm) with
lr = 0.2 of the norm, cosine-decayed to a tenth over 7 steps per predicted token (105 for a
16-token text); each position's CE weighted by (1 - p_target) (focal_gamma 1), so the positions
still wrong or unsure drive the gradient; a stall restart (a fresh seeded start) after 10 steps
per predicted token without a better accuracy (150 for a 16-token text); and parallel attempts
in up to 4 idle slots at the tail of a run (fill_slots, sized for a CPU; raise it towards
max_slots on a GPU). Everything else as the paper."""
from __future__ import annotations

from cramfast.errors import CramfastError

PAPER = dict(lr=1e-2, lr_std=0.0, beta1=0.9, beta2=0.9, weight_decay=0.01, max_steps=5000,
             patience=2000, init_scale=1.0)
PRESETS = {
    "paper": PAPER,
    "fast": dict(PAPER, optimizer="lamb", lr=0.2, decay_steps_per_token=7.0, final_lr_ratio=0.1,
                 focal_gamma=1.0, stall_steps_per_token=10.0, fill_slots=4, init="text_mean",
                 init_scale=20.0),
}


def preset(name: str, **overrides) -> dict:
    """The preset's settings with ``overrides`` (None values ignored) applied."""
    if name not in PRESETS:
        raise CramfastError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return with_overrides(PRESETS[name], {k: v for k, v in overrides.items() if v is not None})


# settings given in absolute terms and their relative forms (resolved per model, per text)
RELATIVE = {"lr": "lr_std", "stall_steps": "stall_steps_per_token",
            "decay_steps": "decay_steps_per_token"}


def with_overrides(settings: dict, overrides: dict) -> dict:
    """``settings`` updated by ``overrides``; an explicit absolute setting (lr, stall_steps,
    decay_steps) replaces a relative one (lr_std, stall_steps_per_token, decay_steps_per_token)."""
    out = dict(settings, **overrides)
    for absolute, relative in RELATIVE.items():
        if absolute in overrides and relative not in overrides:
            out[relative] = 0.0
    return out


def parse_settings(pairs) -> dict:
    """Settings that change results, from "key=value" strings (``--set``, study candidates), typed
    like OptimSettings' fields; "lr=0.5std" means lr_std=0.5 (a multiple of std(E))."""
    from cramfast.compressor import RESULT_SETTINGS, OptimSettings
    defaults = OptimSettings()
    out = {}
    for part in pairs:
        key, sep, value = part.partition("=")
        if not sep or key not in RESULT_SETTINGS:
            raise CramfastError(f"bad setting {part!r}: expected key=value with a key from "
                                f"{', '.join(RESULT_SETTINGS)}")
        if key == "lr" and value.endswith("std"):
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
