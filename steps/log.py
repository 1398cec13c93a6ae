"""Logging in the seed's format (``INFO:batch_imaging:...``) and step progress."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

LOG = logging.getLogger("batch_imaging")
T = TypeVar("T")


def setup(debug: bool = False) -> None:
    """Log to stderr as the seed did: ``logging.basicConfig()``'s LEVEL:name:message."""
    logging.basicConfig(format=logging.BASIC_FORMAT, stream=sys.stderr)
    LOG.setLevel(logging.DEBUG if debug else logging.INFO)
    for noisy in ("distributed", "numba", "asyncio", "urllib3", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING if debug else logging.ERROR)


def progress(items: Iterable[T], total: int, what: str) -> Iterator[T]:
    """Yield items while reporting N/M: to ``$ARGO_PROGRESS_FILE`` (the Argo UI), as a
    progress bar on a terminal, and to the log otherwise."""
    path = os.environ.get("ARGO_PROGRESS_FILE")
    started = time.monotonic()
    with tqdm(total=total, desc=what, unit="window", disable=not sys.stderr.isatty()) as bar:
        for done, item in enumerate(items, start=1):
            yield item
            bar.update()
            if path:
                Path(path).write_text(f"{done}/{total}\n")
            if bar.disable:
                elapsed = time.monotonic() - started
                LOG.info("%s: %d/%d done (%.1f s)", what, done, total, elapsed)
