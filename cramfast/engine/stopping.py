"""A polite stop: a run asked to stop by a signal saves every text in flight, then ends.

A scheduler that preempts a job (SLURM's ``--signal``, Kubernetes, a user's ``kill`` or Ctrl-C)
sends SIGTERM or SIGINT some time before it kills. Inside ``stop_on_signals()``, the first of
them does not kill: every optimization loop that checkpoints (compressor.optimize with a
checkpointer) saves every text in flight at its next host sync, hands over the texts finished
there, and raises Stopped, so a rerun loses no step. With no such loop running the process
stops at once (nothing is in flight; finished rows are already stored). A second signal (a
second or more after the first: not the same one delivered twice) stops at once.

    with stop_on_signals(lambda line: print(line, file=sys.stderr)):
        for index, result in compress_iter(texts, checkpoint="ckpt/"):
            ...                         # a SIGTERM ends the loop with Stopped, ckpt/ up to date

A loop waits for its next sync: at most sync_every steps of its batch.
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# A signal within this long of the first is the same stop delivered twice, not a second one:
# Ctrl-C reaches every process of the terminal's group, and a wrapper (torchrun, a script's
# trap) that forwards it makes a copy.
ECHO_SECONDS = 1.0


class Stopped(Exception):
    """The run ended on ``signum``; ``saved``: the texts in flight then saved (None when it
    ended at once, between loops)."""

    def __init__(self, signum: int, saved: int | None = None):
        self.signum, self.saved = signum, saved
        where = ("no loop was running" if saved is None
                 else f"{saved} text(s) in flight saved at the sync")
        super().__init__(f"stopped by {signal.Signals(signum).name}: {where}")


_lock = threading.Lock()
_asked: list = []                   # once a stop is asked: [signal, time.monotonic()]
_saving_loops = 0                   # optimization loops that save their texts on a stop
_installed = False


def stop_signal() -> int | None:
    """The signal that asked this process to stop, or None."""
    return _asked[0] if _asked else None


@contextlib.contextmanager
def saving_loop():
    """Marks an optimization loop that saves its texts and raises Stopped at its next sync."""
    global _saving_loops
    with _lock:
        _saving_loops += 1
    try:
        yield
    finally:
        with _lock:
            _saving_loops -= 1


@contextlib.contextmanager
def stop_on_signals(announce: Callable[[str], None] = lambda line: None):
    """Within this block SIGTERM and SIGINT (those not ignored) ask for a polite stop (the
    module docstring); ``announce`` gets one line when they do. Main thread only (Python's
    signal rule); nested uses keep the outer handlers."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if _asked:
            if time.monotonic() - _asked[1] < ECHO_SECONDS:     # the same stop, sent twice
                return
            raise Stopped(signum)                   # a second stop: at once
        _asked.extend((signum, time.monotonic()))
        with _lock:
            loops = _saving_loops
        if not loops:
            raise Stopped(signum)
        announce(f"{signal.Signals(signum).name}: saving every text in flight at the next sync, "
                 "then stopping (a second signal stops at once)")

    # a signal the process was started ignoring stays ignored (SIGINT of a job started with &)
    previous = {s: signal.signal(s, handler) for s in SIGNALS
                if signal.getsignal(s) is not signal.SIG_IGN}
    _installed = True
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
        _installed = False
        _asked.clear()
