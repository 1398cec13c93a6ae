"""Atomic writes: every product appears complete under its name, or not at all."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A hidden temporary name beside ``path``, renamed onto it when the block succeeds
    (removed if it fails); ``manifest.remove_temporaries`` clears those of a killed writer."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
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
