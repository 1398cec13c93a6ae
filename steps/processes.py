"""Processes on this host: the cores this one may use, whether one recorded by its pid runs."""

from __future__ import annotations

import os
from pathlib import Path


def process_alive(pid: int, marker: str = "") -> bool:
    """Whether process ``pid`` on this host is alive (not a zombie) and its command line
    contains ``marker`` (so that a reused pid does not count)."""
    proc = Path(f"/proc/{pid}")
    try:
        if proc.is_dir():
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            return state not in ("Z", "X") and marker in (proc / "cmdline").read_text()
        os.kill(pid, 0)
    except (ProcessLookupError, FileNotFoundError):
        return False
    except PermissionError:
        return True
    return True


def cores() -> int:
    """The CPUs this process may run on (its affinity: a cpuset, ``taskset``, a batch job's
    share), not all the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
