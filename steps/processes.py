"""Processes on this host: the cores this one may use, whether one recorded by its pid runs,
and ending this one once its work is done."""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path
from typing import NoReturn

import psutil

ENGINE_PID_ENV = "BATCH_IMAGING_ENGINE_PID"  # set by the local engine in each pod it starts


def process_alive(pid: int, marker: str = "", started: float | None = None) -> bool:
    """Whether process ``pid`` on this host is alive (not a zombie), its command line
    contains ``marker`` and, if ``started`` is given, it started then (``started_at``): so
    that a reused pid does not count."""
    proc = Path(f"/proc/{pid}")
    try:
        if proc.is_dir():
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            alive = state not in ("Z", "X") and marker in (proc / "cmdline").read_text()
            return alive and (started is None or started_at(pid) == started)
        os.kill(pid, 0)
    except (ProcessLookupError, FileNotFoundError):
        return False
    except PermissionError:
        return True
    return True


def started_at(pid: int) -> float | None:
    """When process ``pid`` started (epoch seconds, to 10 ms), None if there is none: with
    the pid it names one process, whatever later reuses the pid."""
    try:
        return round(psutil.Process(pid).create_time(), 2)
    except psutil.Error:
        return None


def cores() -> int:
    """The CPUs this process may use: those it may run on (its affinity: a cpuset,
    ``taskset``, a batch job's share), or fewer where ``PYTHON_CPU_COUNT`` says so (a pod's
    CPU request, which sets no affinity; unlike Python 3.13, never more than the affinity)."""
    if hasattr(os, "sched_getaffinity"):
        available = len(os.sched_getaffinity(0))
    else:
        available = os.cpu_count() or 1
    asked = os.environ.get("PYTHON_CPU_COUNT", "").strip()
    return max(1, min(available, int(asked))) if asked.isdigit() else available


def end(code: int) -> NoReturn:
    """End this process with exit status ``code`` once its work is done: the exit handlers
    run and the streams are flushed as at a normal exit, but the interpreter does not tear
    down its modules one by one (≈ 1.3 s after a heavy step's imports on 2 cores)."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
