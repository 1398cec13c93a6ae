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
    """Log to stderr as the seed did: ``logging.basicConfig()``'s LEVEL:name:message (also
    Dask's handlers, here and in the worker processes, set up when Dask is imported)."""
    logging.basicConfig(format=logging.BASIC_FORMAT, stream=sys.stderr)
    os.environ.setdefault("DASK_DISTRIBUTED__ADMIN__LOG_FORMAT", logging.BASIC_FORMAT)
    LOG.setLevel(logging.DEBUG if debug else logging.INFO)
    for noisy in ("distributed", "numba", "asyncio", "urllib3", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING if debug else logging.ERROR)


class Progress:
    """N/M of a step's work, reported to ``$ARGO_PROGRESS_FILE`` (the Argo UI, from 0/M on),
    as a progress bar on a terminal, and to the log otherwise (unless ``log`` is false: the
    caller logs each item itself)."""

    def __init__(self, total: int, what: str, unit: str, log: bool = True) -> None:
        self.total, self.what, self.log, self.done = total, what, log, 0
        self.path = os.environ.get("ARGO_PROGRESS_FILE")
        self.started = time.monotonic()
        self.bar = tqdm(total=total, desc=what, unit=unit, disable=not sys.stderr.isatty())
        self._report()

    def _report(self) -> None:
        if self.path:
            Path(self.path).write_text(f"{self.done}/{self.total}\n")

    def advance(self, items: int = 1) -> None:
        """More items done."""
        self.done += items
        self.bar.update(items)
        self._report()
        if self.bar.disable and self.log:
            elapsed = time.monotonic() - self.started
            LOG.info("%s: %d/%d done (%.1f s)", self.what, self.done, self.total, elapsed)

    def finish(self) -> None:
        """The items left are not needed (the work stopped early): report all done."""
        self.advance(self.total - self.done)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *_: object) -> None:
        self.bar.close()


def progress(items: Iterable[T], total: int, what: str, unit: str = "window") -> Iterator[T]:
    """Yield items while reporting their ``Progress``."""
    with Progress(total, what, unit) as bar:
        for item in items:
            yield item
            bar.advance()
