"""Run one step as its container does: parse parameters, run, write Argo output parameters.

Each step's start, end, phase and outputs are recorded in the processing block's state
(``steps``), so that operators, the report and the metrics see one timeline for the run,
whichever engine ran it.
"""

from __future__ import annotations

import datetime
import importlib
import os
import time
from pathlib import Path

from steps.buffers import Buffers
from steps.configdb import ConfigDB, connect
from steps.log import LOG
from steps.params import Params, parse_strings

OUTPUTS_ENV = "BATCH_IMAGING_OUTPUTS"


def write_outputs(outputs: dict[str, str]) -> None:
    """Write output parameters where the template's ``valueFrom.path`` reads them."""
    directory = Path(os.environ.get(OUTPUTS_ENV, "/tmp/outputs"))  # noqa: S108 - pod scratch
    directory.mkdir(parents=True, exist_ok=True)
    for name, value in outputs.items():
        (directory / name).write_text(value)


def record(params: Params, step: str, entry: dict) -> None:
    """Merge one step's timeline entry into the PB state."""
    with ConfigDB(connect(params.config_db or None)) as db:

        def merge(txn) -> None:
            state = txn.get_state(params.pb_id)
            steps = dict(getattr(state, "steps", None) or {}) if state else {}
            steps[step] = entry
            txn.update_state(params.pb_id, steps=steps)

        db.run(merge)


def run_step(name: str, raw: dict[str, str]) -> int:
    """Run step ``name`` with string parameters; return its exit code."""
    params = parse_strings(raw)
    module = importlib.import_module(f"steps.{name.replace('-', '_')}")
    started = time.time()
    entry = {"started": _iso(started), "phase": "Running"}
    try:
        outputs = {k: str(v) for k, v in (module.run(params, Buffers.of(params)) or {}).items()}
    except Exception as exc:
        record(
            params,
            name,
            {**entry, "finished": _iso(time.time()), "phase": "Failed", "message": str(exc)},
        )
        raise
    finished = time.time()
    write_outputs(outputs)
    record(
        params,
        name,
        {
            **entry,
            "finished": _iso(finished),
            "phase": "Succeeded",
            "duration_s": round(finished - started, 3),
            "outputs": outputs,
        },
    )
    LOG.debug("step %s took %.1f s", name, finished - started)
    return 0


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="milliseconds")
