"""Run one step as its container does: parse parameters, run, write Argo output parameters."""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path

from steps.buffers import Buffers
from steps.log import LOG
from steps.params import parse_strings

OUTPUTS_ENV = "BATCH_IMAGING_OUTPUTS"


def write_outputs(outputs: dict[str, str]) -> None:
    """Write output parameters where the template's ``valueFrom.path`` reads them."""
    directory = Path(os.environ.get(OUTPUTS_ENV, "/tmp/outputs"))
    directory.mkdir(parents=True, exist_ok=True)
    for name, value in outputs.items():
        (directory / name).write_text(value)


def run_step(name: str, raw: dict[str, str]) -> int:
    """Run step ``name`` with string parameters; return its exit code."""
    params = parse_strings(raw)
    module = importlib.import_module(f"steps.{name.replace('-', '_')}")
    started = time.monotonic()
    buffers = Buffers.of(params)
    outputs = module.run(params, buffers)
    LOG.debug("step %s took %.1f s", name, time.monotonic() - started)
    write_outputs({key: str(value) for key, value in (outputs or {}).items()})
    return 0
