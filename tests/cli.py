"""The ``batch-imaging`` command run as a user runs it (this installation's console script)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

COMMAND = [sys.executable, "-m", "dag"]


def batch_imaging(
    *argv: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``batch-imaging ARGV`` to the end, capturing its output."""
    return subprocess.run(
        [*COMMAND, *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start(*argv: str) -> subprocess.Popen[str]:
    """Start ``batch-imaging ARGV`` in the background, its log (stderr) piped."""
    return subprocess.Popen([*COMMAND, *argv], stderr=subprocess.PIPE, text=True)
