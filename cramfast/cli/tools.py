"""What every command line of cramfast shares: bad input is one line on stderr and exit code 2,
naming the flag to change; Ctrl-C is one line and exit code 130 (a run that checkpoints first
saves its texts in flight: 128 + the signal's number); library chatter (loading bars,
config warnings) stays quiet so that the line a user needs is not buried."""
from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable

from cramfast.engine.stopping import Stopped
from cramfast.errors import CramfastError
from cramfast.settings import RESULT_SETTINGS, SettingError


def run(prog: str, command: Callable[[], int], flags: dict[str, str] | None = None,
        interrupted: str = "interrupted") -> int:
    """Run ``command``; a CramfastError becomes "PROG: error: MESSAGE" and exit 2 (a bad setting
    also says which flag sets it: ``flags`` maps setting names to this program's flags, other
    result-changing settings are set with --set), KeyboardInterrupt "PROG: " + ``interrupted``
    and 130, a polite stop by signal S (engine/stopping.py) its line and 128 + S."""
    quiet_libraries()
    warnings.formatwarning = lambda message, *args, **kwargs: f"{prog}: warning: {message}\n"
    try:
        return command()
    except SettingError as exc:
        print(f"{prog}: error: {exc}{_flag_hint(exc.name, flags or {})}", file=sys.stderr)
        return 2
    except CramfastError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except Stopped as exc:              # a polite stop (engine/stopping.py): nothing lost
        print(f"{prog}: {exc}; {interrupted}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, "NAME: error: MESSAGE", exit 2 (argparse would print
    the usage too); NAME is the module of ``prog`` ("python -m cramfast.study" -> cramfast.study),
    the prefix run gives the same program's other errors."""

    def error(self, message):
        if message.startswith("argument "):
            message = message[len("argument "):]
        name = self.prog.removeprefix("python -m ").split()[0]
        self.exit(2, f"{name}: error: {message}\n")


def seconds(value: str) -> float:
    """An argparse type: a number of seconds >= 0."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {value!r}") from None
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 seconds, got {value}")
    return number


def at_least(low: int):
    """An argparse type: an integer >= ``low``."""
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
        if number < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {number}")
        return number
    return parse


def csv_ints(value: str) -> list[int]:
    """An argparse type for a list flag: "8,12,16" -> [8, 12, 16]; anything else (a negative
    number, a word, nothing) is refused by argparse in one line naming the flag."""
    try:
        ints = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        ints = []
    if not ints or min(ints) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0, got {value!r}")
    return ints


def _flag_hint(name: str, flags: dict[str, str]) -> str:
    if name in flags:
        return f" (flag {flags[name]})"
    if name in RESULT_SETTINGS:
        return f" (flag --set {name}=VALUE)"
    return ""


def quiet_libraries() -> None:
    """Loading bars and config warnings of transformers off (they would bury the one line a user
    needs to read); errors still surface."""
    from transformers.utils import logging
    logging.disable_progress_bar()
    logging.set_verbosity_error()
