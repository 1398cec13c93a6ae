"""Atomic writes: every product appears complete under its name, or not at all."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def temporary_name(path: Path) -> Path:
    """A unique hidden name beside ``path`` to build it under (``manifest.LEFTOVER``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def replace_dir(tmp: Path, path: Path) -> Path:
    """Move the directory built as ``tmp`` to ``path``; one already there is moved aside
    first and removed only after, so that ``path`` is never a mixture of the two (killed
    between the renames, it is missing, and the hidden leftovers go with the next step's
    clean-up: the step is then made anew)."""
    path = Path(path)
    if path.exists():
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
        path.rename(old)
        Path(tmp).rename(path)
        shutil.rmtree(old)
    else:
        Path(tmp).rename(path)
    return path


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A hidden temporary name beside ``path``, renamed onto it when the block succeeds
    (removed if it fails); ``manifest.remove_temporaries`` clears those of a killed writer."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, data: Any, **dump: Any) -> None:
    write_text(path, json.dumps(data, **{"indent": 2, **dump}) + "\n")
