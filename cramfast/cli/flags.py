"""The flags that compress, sweep and study share, each declared once: its type and check, its
choices and its help. A program adds the ones it takes with ``add_flags``; what differs between
programs (a default, a repeatable --model) is passed there, never a second declaration.

    add_flags(parser, "--model", "--dtype", "--max-steps", defaults={"--max-steps": 600})
    run(prog, command, flags=setting_flags(parser))   # a bad setting names its flag
"""
from __future__ import annotations

import argparse

from cramfast.cli.tools import at_least, seconds
from cramfast.models import DTYPES
from cramfast.ops import BACKENDS
from cramfast.presets import PRESETS
from cramfast.settings import help_text

# flag -> (the setting it sets or None, argparse keywords)
SHARED: dict[str, tuple[str | None, dict]] = {
    "--model": (None, dict(help="HF folder, cached HF id, or smollm2-135m-q4 (the default)")),
    "--dtype": (None, dict(choices=sorted(DTYPES), help="model weights (default fp32)")),
    "--device": (None, dict(help="cpu, cuda, cuda:1 ... (default: cuda if there is one)")),
    "--backend": (None, dict(choices=BACKENDS, help="the fused ops' implementation "
                             "(default auto)")),
    "--preset": ("preset", dict(choices=sorted(PRESETS), help="fast (fewer steps) or paper (the "
                                "published settings)")),
    "--set": (None, dict(action="append", metavar="KEY=VALUE", help="any setting that changes "
                         "results (docs/algorithm.md), e.g. --set stall_steps=100 (repeatable)")),
    "--max-steps": ("max_steps", dict(type=at_least(0), help=help_text("max_steps"))),
    "--patience": ("patience", dict(type=at_least(1), help=help_text("patience"))),
    "--lr": ("lr", dict(type=float, help=help_text("lr"))),
    "--max-slots": ("max_slots", dict(type=at_least(1), help=help_text("max_slots"))),
    "--checkpoint-every": ("checkpoint_seconds", dict(type=seconds, metavar="SECONDS",
                                                      help=help_text("checkpoint_seconds"))),
    "--threads": (None, dict(type=at_least(1), help="CPU threads (default: the cores torch "
                             "would use, at most the cores not busy with other work)")),
}


def add_flags(parser: argparse.ArgumentParser, *names: str, defaults: dict | None = None,
              **overrides: dict) -> None:
    """Add the shared flags ``names`` to ``parser``. ``defaults`` maps a flag to its default in
    this program (shown in its help); ``overrides`` (keyed by the flag's dest, e.g. model=)
    change how a flag is collected (action, dest), never its type or check."""
    defaults = defaults or {}
    for name in names:
        setting, kwargs = SHARED[name]
        kwargs = dict(kwargs, help=kwargs["help"].replace("%", "%%"))
        dest = name.removeprefix("--").replace("-", "_")
        extra = overrides.get(dest, {})
        if set(extra) - {"action", "dest", "help"}:
            raise ValueError(f"{name}: only action, dest and help may differ between programs")
        kwargs.update(extra)
        if name in defaults:
            kwargs["default"] = defaults[name]
            if defaults[name] not in (None, []):
                kwargs["help"] = f"{kwargs['help']} (default %(default)s)"
        action = parser.add_argument(name, **kwargs)
        action.cramfast_setting = setting


def setting_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """{setting: flag} for the shared flags ``parser`` has, for cli.tools.run's error hint."""
    return {action.cramfast_setting: action.option_strings[0]
            for action in parser._actions if getattr(action, "cramfast_setting", None)}
