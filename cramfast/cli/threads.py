"""--threads: how many CPU threads torch uses, by default as many as the machine leaves free."""
from __future__ import annotations

import os
import sys
import time

import torch


def set_threads(threads: int | None, prog: str = "cramfast") -> None:
    """``threads``, else torch's default capped at the cores other work leaves free: on a busy
    machine more threads than free cores make every step many times slower."""
    if threads is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        busy, torch_threads = busy_cores(), torch.get_num_threads()
        threads = default_threads(torch_threads, cores, busy)
        if threads < torch_threads:
            print(f"{prog}: {threads} thread(s): other work keeps {busy} of {cores} cores busy "
                  "(--threads to choose)", file=sys.stderr)
    torch.set_num_threads(threads)


def busy_cores(window: float = 0.25) -> int:
    """Cores other work keeps busy now: the machine's CPU time over a short window while this
    process waits (Linux /proc/stat); elsewhere the 1-minute load average, which also counts
    work that ended in the last minute."""
    try:
        before = _cpu_times()
        time.sleep(window)
        after = _cpu_times()
    except (OSError, ValueError, IndexError):
        return round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    busy, total = (a - b for a, b in zip(after, before))
    return round(busy / max(total, 1) * (os.cpu_count() or 1))


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot: /proc/stat's first line."""
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    total = user + nice + system + idle + iowait + irq + softirq + steal
    return total - idle - iowait, total


def default_threads(torch_threads: int, cores: int, busy: int) -> int:
    """torch's thread count, at most the cores that ``busy`` (busy_cores) leaves free, at least
    one."""
    return max(1, min(torch_threads, cores - busy))
