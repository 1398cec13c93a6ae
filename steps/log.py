"""Logging in the seed's format (``INFO:batch_imaging:...``) and step progress."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

LOG = logging.getLogger("batch_imaging")
T = TypeVar("T")


def setup(debug: bool = False) -> None:
    """Log to stderr as the seed did: ``logging.basicConfig()``'s LEVEL:name:message."""
    logging.basicConfig(format=logging.BASIC_FORMAT, stream=sys.stderr)
    LOG.setLevel(logging.DEBUG if debug else logging.INFO)
    for noisy in ("distributed", "numba", "asyncio", "urllib3", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING if debug else logging.ERROR)


def progress(items: Iterable[T], total: int, what: str) -> Iterator[T]:
    """Yield items while reporting N/M to ``$ARGO_PROGRESS_FILE`` (Argo) and to the log."""
    path = os.environ.get("ARGO_PROGRESS_FILE")
    started = time.monotonic()
    for done, item in enumerate(items, start=1):
        yield item
        if path:
            Path(path).write_text(f"{done}/{total}\n")
        LOG.info("%s: %d/%d done (%.1f s)", what, done, total, time.monotonic() - started)
