"""Every setting, declared once: its default, what it means and which values it takes.

Two kinds. ``TextSettings`` are a text's own (each text of a batch may carry different ones, so
one batch can compare candidates); ``BatchSettings`` shape the batch as a whole. The defaults
are the published protocol (Kuratov et al. 2025); presets.py names other starting points.

Everything that lists settings is derived from the two dataclasses' fields and their metadata:
  PER_TEXT          the TextSettings names (per_text= keys, study candidates)
  RESULT_SETTINGS   the settings a result depends on: PER_TEXT and the batch's result-changing
                    ones (--set keys, the sweep's job key)
  RELATIVE          absolute setting -> the relative form that stands in for it (lr_std for lr)
  SLOT_FLOATS, SLOT_INTS  the per-slot hyperparameters the device keeps (optim.SlotState)
docs/algorithm.md is generated from the help texts (tests/test_docs.py checks it is current).
"""
from __future__ import annotations

import enum
import numbers
from dataclasses import asdict, dataclass, field, fields, replace

from cramfast.errors import CramfastError
from cramfast.presets import PRESETS


class SettingError(CramfastError):
    """A bad value for one setting; ``name`` says which (the CLI names its flag)."""

    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name


class StopReason(enum.IntEnum):
    """Why a text's optimization stopped; the device stores the code, results the name, and
    the C++ scheduler speaks the same names."""
    RUNNING = 0
    LOSSLESS = 1       # every predicted token right (by the margin asked) and decoded back
    STALLED = 2        # patience steps without a better accuracy
    MAX_STEPS = 3
    NONFINITE = 4      # a non-finite loss: that text alone stops

    @property
    def label(self) -> str:
        return self.name.lower()


def _setting(default, help: str, *, at_least=None, above=None, choices=None, slot=None,
             replaces=None, result=True):
    """One setting's declaration: ``at_least``/``above`` bound a number, ``choices`` list the
    values a word may take, ``slot`` ("float" or "int") puts it in the device's per-slot table,
    ``replaces`` names the absolute setting a relative one stands in for, ``result`` says whether
    it changes results (batch settings only; every text setting does)."""
    return field(default=default, metadata=dict(help=help, at_least=at_least, above=above,
                                                choices=choices, slot=slot, replaces=replaces,
                                                result=result))


def _check_fields(obj) -> None:
    for f in fields(obj):
        value, meta = getattr(obj, f.name), f.metadata
        kind = type(f.default)
        number = {float: numbers.Real, int: numbers.Integral}.get(kind)
        if number and isinstance(value, number) and not isinstance(value, bool):
            value = kind(value)             # 1 -> 1.0 for a float, numpy ints -> int
            object.__setattr__(obj, f.name, value)
        if type(value) is not kind:
            raise SettingError(f.name, f"{f.name} must be {_article(kind)} {kind.__name__}, "
                                       f"got {value!r}")
        if meta["choices"] and value not in meta["choices"]:
            raise SettingError(f.name, f"{f.name} must be one of {', '.join(meta['choices'])}, "
                                       f"got {value!r}")
        if meta["above"] is not None and not value > meta["above"]:
            raise SettingError(f.name, f"{f.name} must be > {meta['above']}, got {value!r}")
        if meta["at_least"] is not None and not value >= meta["at_least"]:
            raise SettingError(f.name, f"{f.name} must be >= {meta['at_least']}, got {value!r}")


def _article(kind) -> str:
    return "an" if kind is int else "a"


@dataclass(frozen=True)
class TextSettings:
    """How one text is optimized. Every field may differ between the texts of one batch."""
    optimizer: str = _setting(
        "adamw", "The update rule: `adamw` (the paper's) or `lamb`: AdamW's moments, but each mem "
        "vector's step (weight decay included) rescaled to lr times the vector's norm (LAMB's "
        "trust ratio, You et al. 2019), so lr is a fraction of the norm. A mem vector is read "
        "through an RMSNorm and gets lossless at norms far above its init's, where AdamW's "
        "fixed-size steps become small relative changes.", choices=("adamw", "lamb"))
    lr: float = _setting(1e-2, "Learning rate (with lamb: a fraction of the mem vector's norm).",
                         above=0, slot="float")
    lr_std: float = _setting(
        0.0, "> 0 (adamw only): lr = lr_std * std(embedding matrix), resolved per model, so a "
        "value means the same on models whose embeddings have other scales.", at_least=0,
        replaces="lr")
    beta1: float = _setting(0.9, "AdamW's first-moment decay.", at_least=0, slot="float")
    beta2: float = _setting(0.9, "AdamW's second-moment decay.", at_least=0, slot="float")
    weight_decay: float = _setting(0.01, "Decoupled weight decay.", at_least=0, slot="float")
    eps: float = _setting(1e-8, "AdamW's epsilon.", above=0, slot="float")
    init: str = _setting(
        "random", "Where a text's first attempt starts. `random`: randn(m, d) * init_scale * "
        "std(E), seeded by the seed and the text's tokens. `text_mean`: the mean of the text's "
        "input embeddings (mem vector j: of the j-th of m contiguous chunks) as a direction, at "
        "the random init's mean norm init_scale * std(E) * sqrt(d); later attempts and redraw "
        "restarts start halfway between that direction and a seeded random one. The LM reads a "
        "mem vector mostly by its direction, and the text's mean embedding already points "
        "towards its tokens.", choices=("random", "text_mean"))
    init_scale: float = _setting(1.0, "Scale of the init (see init).", above=0)
    max_steps: int = _setting(5000, "At most this many updates per text.", at_least=0,
                              slot="int")
    patience: int = _setting(2000, "Stop a text after this many updates without a better "
                             "accuracy.", at_least=1, slot="int")
    warmup: int = _setting(0, "Linear lr warm-up over this many updates, counted from each "
                           "(re)start.", at_least=0, slot="float")
    decay_steps: int = _setting(
        0, "After the warm-up, a cosine from lr to lr * final_lr_ratio over this many updates, "
        "constant after (0: constant lr).", at_least=0, slot="float")
    decay_steps_per_token: float = _setting(
        0.0, "> 0: the decay grows with the text, round(k * (N - 1)) updates for a text of N "
        "tokens, in place of decay_steps (a short text is solved before a long decay ends).",
        at_least=0, replaces="decay_steps")
    final_lr_ratio: float = _setting(0.1, "Where the cosine decay ends, as a fraction of lr.",
                                     at_least=0, slot="float")
    focal_gamma: float = _setting(
        0.0, "The objective: the mean over the text's positions of (1 - p_target) ** gamma * CE, "
        "the weight held constant in the gradient, so positions already predicted with "
        "confidence give way to those still wrong or unsure (0: the paper's mean CE). Solved "
        "still means the argmax is right (by the margin asked), and every reported CE is the plain "
        "one.", at_least=0,
        slot="float")
    margin: float = _setting(
        0.0, "A text is solved only when at every predicted position the target's logit leads "
        "the best other logit by at least this much (logit units; 0: the paper's rule, the "
        "argmax alone). Positions short of it get the full CE weight in the objective, so the "
        "margin is reached, not waited for. A margin lets a mem survive the other rounding of "
        "greedy decoding (KV cache, other kernels, other batch shapes, 16-bit weights).",
        at_least=0, slot="float")
    margin_16bit: float = _setting(
        0.0, "> 0: the margin for a model whose weights are bf16 or fp16, in place of margin "
        "(their logits round about 2^13 times coarser than fp32's).", at_least=0,
        replaces="margin")
    stall_steps: int = _setting(
        0, "When an attempt's accuracy has not improved for this many updates (0: off), start a "
        "new attempt with fresh moments and schedule (see restart). The stop rule (best mem, "
        "patience, max_steps) spans all attempts.", at_least=0, slot="int")
    stall_steps_per_token: float = _setting(
        0.0, "> 0: the stall trigger grows with the text, round(k * (N - 1)) updates for a text "
        "of N tokens, in place of stall_steps.", at_least=0, replaces="stall_steps")
    restart: str = _setting(
        "redraw", "A stall restart's start: `redraw` a new seeded init, or `perturb` the best "
        "mem so far by randn * restart_noise * std(E).", choices=("redraw", "perturb"))
    restart_noise: float = _setting(0.5, "The noise of a perturb restart, in std(E).",
                                    at_least=0)
    max_restarts: int = _setting(8, "At most this many stall restarts per attempt.",
                                 at_least=0)

    def __post_init__(self):
        _check_fields(self)
        if self.optimizer == "lamb" and self.lr_std > 0:
            raise SettingError("lr_std", "lr_std applies to adamw only: lamb's lr is already "
                                         "relative (a fraction of the mem vector's norm); give lr")

    def to_dict(self) -> dict:
        return asdict(self)

    def for_model(self, embedding_std: float, bits: int = 32) -> TextSettings:
        """The per-model settings resolved for a model with this std(E) and ``bits`` of weight
        precision: lr_std into lr, margin_16bit into margin (both forms stay recorded)."""
        resolved = {}
        if self.lr_std > 0:
            resolved["lr"] = self.lr_std * embedding_std
        if bits <= 16 and self.margin_16bit > 0:
            resolved["margin"] = self.margin_16bit
        return replace(self, **resolved) if resolved else self

    def for_text(self, n_tokens: int) -> TextSettings:
        """The per-token settings resolved into their absolute forms for a text of ``n_tokens``
        tokens (both forms stay recorded)."""
        resolved = {absolute: max(1, round(getattr(self, relative) * (n_tokens - 1)))
                    for absolute, relative in RELATIVE.items()
                    if relative.endswith("_per_token") and getattr(self, relative) > 0}
        return replace(self, **resolved) if resolved else self

    def slot_values(self) -> dict:
        """The per-slot numbers the device keeps: the fields marked ``slot`` and the two
        derived from words (restart_keep: 1 for perturb; lamb: 1 for the lamb rule)."""
        values = {name: getattr(self, name) for name in SLOT_FLOATS + SLOT_INTS
                  if name not in DERIVED_SLOT_FLOATS}
        return dict(values, restart_keep=float(self.restart == "perturb"),
                    lamb=float(self.optimizer == "lamb"))


# What the batch settings' 0 / -1 ("sized to the device") resolve to; sizing.py applies them.
CPU_SIZES = dict(max_slots=32, token_budget=16384, fill_slots=4)   # a step costs its share per text
CUDA_MEMORY_FRACTION = 0.5     # of the free memory, for the batch's activations
CUDA_MIN_SLOTS = 64            # fewer texts than this still get this many (parallel attempts)
CUDA_MAX_SLOTS = 1024
MEM_POSITIONS = ("first", "after_bos", "before_bos")    # engine/layout.py builds each


@dataclass(frozen=True)
class BatchSettings:
    """How the batch runs: sizes, syncs, kernels, and what every text of it shares. Only
    fill_slots and mem_position change results."""
    fill_slots: int = _setting(
        0, "Parallel attempts: when nothing is queued and fewer than this many slots are busy, "
        "the idle slots run extra attempts of running texts (other seeded starts, within what "
        "is left of the text's max_steps); a text ends with its first lossless attempt (0: "
        f"off; -1: sized to the device, {CPU_SIZES['fill_slots']} on a CPU, max_slots on CUDA). "
        "Idle slots are nearly "
        "free where a small batch is bound by reading the weights.", at_least=-1)
    mem_position: str = _setting(
        "first", "Where the mem sits in the sequence the LM reads: `first` [mem ; text] (the "
        "paper's: the mem takes position 0, which causal LMs use as an attention sink), "
        "`after_bos` [bos ; mem ; text] (a BOS token holds position 0), `before_bos` "
        "[mem ; bos ; text]. The BOS is given and not scored, like the text's first token, so "
        "the same positions are predicted; the evaluation without mem keeps it.",
        choices=MEM_POSITIONS)
    sync_every: int = _setting(16, "Updates between host syncs (the stop rules run on the "
                               "device).", at_least=1, result=False)
    cuda_graphs: bool = _setting(
        True, "On CUDA with the Triton ops, replay each batch shape's step as a CUDA graph (the "
        "same kernels on the same memory, so the same results; off: launch every kernel "
        "eagerly).", result=False)
    max_slots: int = _setting(
        0, f"Texts (attempts) optimized at once (0: sized to the device: {CPU_SIZES['max_slots']} "
        f"on a CPU; on CUDA every text at once, at least {CUDA_MIN_SLOTS} slots, as far as "
        f"{CUDA_MEMORY_FRACTION:.0%} of the free memory holds them, measured by one calibration "
        "step).", at_least=0, result=False)
    token_budget: int = _setting(
        0, "At most this many (padded length + n_mem) summed over the slots of one step (0: "
        f"sized to the device: {CPU_SIZES['token_budget']} on a CPU, max_slots times the longest "
        "text on CUDA).",
        at_least=0, result=False)
    policy: str = _setting("bucketed", "How the scheduler fills free slots: `fifo` (arrival "
                           "order) or `bucketed` (least padding first, with a starvation "
                           "guard).", choices=("fifo", "bucketed"), result=False)
    recompute_activations: bool = _setting(
        False, "Keep none of the frozen backbone's activations for the backward pass: each "
        "layer runs again there from its input (one layer's activations held instead of all: "
        "long texts on large models fit, for about one more forward of time; the same results). "
        "A batch sized to the device (max_slots 0 on CUDA) switches it on when not one text of "
        "the longest length would fit without it.", result=False)
    checkpoint_seconds: float = _setting(
        60.0, "With a checkpoint store (compress's checkpoint=, the sweep's store), save every "
        "text in flight at the first sync this many seconds after the last save (0: at every "
        "sync); a rerun resumes each from its save.", at_least=0, result=False)
    checkpoint_steps: int = _setting(
        0, "Also save after this many updates since the last save, at the next sync (0: by "
        "time only).", at_least=0, result=False)

    def __post_init__(self):
        _check_fields(self)

    def to_dict(self) -> dict:
        return asdict(self)


def _names(cls, **meta) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls)
                 if all(f.metadata[k] == v for k, v in meta.items()))


PER_TEXT = _names(TextSettings)
BATCH = _names(BatchSettings)
BATCH_RESULT_SETTINGS = _names(BatchSettings, result=True)    # shared by a batch's texts
RESULT_SETTINGS = PER_TEXT + BATCH_RESULT_SETTINGS
RELATIVE = {f.metadata["replaces"]: f.name for f in fields(TextSettings) if f.metadata["replaces"]}
DERIVED_SLOT_FLOATS = ("restart_keep", "lamb")
SLOT_FLOATS = _names(TextSettings, slot="float") + DERIVED_SLOT_FLOATS
SLOT_INTS = _names(TextSettings, slot="int")


def help_text(name: str) -> str:
    """A setting's help, from its declaration."""
    for cls in (TextSettings, BatchSettings):
        for f in fields(cls):
            if f.name == name:
                return f.metadata["help"]
    raise KeyError(name)


def defaults() -> dict:
    """Every setting's default (the published protocol)."""
    return dict(TextSettings().to_dict(), **BatchSettings().to_dict())


# ---------------------------------------------------------------------------------------------
# from names and overrides to settings


def with_overrides(settings: dict, overrides: dict) -> dict:
    """``settings`` updated by ``overrides``; an explicit absolute setting (lr, stall_steps,
    decay_steps) replaces its relative form (lr_std, stall_steps_per_token, ...)."""
    out = dict(settings, **overrides)
    for absolute, relative in RELATIVE.items():
        if absolute in overrides and relative not in overrides:
            out[relative] = 0.0
    return out


def preset_settings(name: str, **overrides) -> dict:
    """A preset's settings (presets.PRESETS) over the defaults, with ``overrides`` (None values
    ignored) applied; unknown names are refused."""
    if name not in PRESETS:
        raise SettingError("preset", f"unknown preset {name!r}: choose one of "
                                     f"{', '.join(PRESETS)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(overrides) - set(PER_TEXT) - set(BATCH))
    if unknown:
        raise SettingError(unknown[0], f"unknown setting(s) {', '.join(unknown)}; known: "
                                       f"{', '.join(PER_TEXT + BATCH)}")
    return with_overrides(dict(defaults(), **PRESETS[name]), overrides)


def split(settings: dict) -> tuple[TextSettings, BatchSettings]:
    """A flat dict of settings as the two dataclasses (each validated)."""
    return (TextSettings(**{k: settings[k] for k in PER_TEXT if k in settings}),
            BatchSettings(**{k: settings[k] for k in BATCH if k in settings}))


def parse_settings(pairs) -> dict:
    """Settings that change results, from "key=value" strings (``--set``, study candidates), typed
    like their declarations; "lr=0.5std" means lr_std=0.5 (a multiple of std(E))."""
    types = {f.name: type(f.default) for cls in (TextSettings, BatchSettings) for f in fields(cls)}
    out = {}
    for part in pairs:
        key, sep, value = part.partition("=")
        if not sep or key not in RESULT_SETTINGS:
            raise SettingError(key, f"bad setting {part!r}: expected key=value with a key from "
                                    f"{', '.join(RESULT_SETTINGS)}")
        if key == "lr" and value.endswith("std"):
            key, value = "lr_std", value[:-3]
        kind = types[key]
        try:
            out[key] = kind(value)
        except ValueError:
            raise SettingError(key, f"bad setting {part!r}: {key} must be {_article(kind)} "
                                    f"{kind.__name__}") from None
    return out
