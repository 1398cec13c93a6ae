"""``batch-imaging run``: the embedded default — one processing block, run by the local engine."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from dag.local import LocalEngine
from dag.render import template_manifest
from dag.workflow import NAME
from steps import params as parameters
from steps.configdb import ConfigDB, open_backend
from steps.configdb.entities import PBState, PBStatus, ProcessingBlock, Workflow, new_pb_id
from steps.log import LOG

WORKFLOW = Workflow(type="batch", id="batch_imaging", version="0.2.0")


def embedded_db(buffer_root: Path) -> str:
    """The embedded configuration store of a buffer root."""
    return str((buffer_root / ".sdp-config").resolve())


def run_local(
    params_file: Path, buffer_root: Path, overrides: dict[str, str], config_db: str | None = None
) -> str:
    """Create the processing block, run the DAG on this machine, return the workflow phase."""
    buffer_root.mkdir(parents=True, exist_ok=True)
    config_db = config_db or embedded_db(buffer_root)
    decoded = parameters.decode_strings(overrides)
    raw = json.loads(Path(params_file).read_text()) if Path(params_file).is_file() else {}
    db = ConfigDB(open_backend(config_db))
    try:
        pb_id = (
            decoded.get("pb_id")
            or raw.get("pb_id")
            or new_pb_id("local", datetime.date.today(), db.run(lambda txn: txn.list_pbs()))
        )
        params = parameters.load(params_file, **decoded, pb_id=pb_id, config_db=config_db)
        register(db, params, raw)
    finally:
        db.close()
    engine = LocalEngine(template_manifest(), buffer_root)
    run = engine.run(params.as_strings(), name=f"{NAME}-{params.pb_id}")
    LOG.info("Workflow %s %s", run.name, run.phase)
    for node in run.nodes.values():
        LOG.info("  %-24s %-10s %6.1f s %s", node.name, node.phase, node.duration, node.message)
    return run.phase


def register(db: ConfigDB, params: parameters.Params, raw: dict) -> None:
    """Create (or reset, on a re-run) the processing block; as the processing controller,
    mark its resources available (a local run has no dependencies)."""
    pb = ProcessingBlock(id=params.pb_id, workflow=WORKFLOW, parameters=raw)
    state = PBState(status=PBStatus.STARTING, resources_available=True)
    for txn in db.txn():
        if txn.get_pb(pb.id) is None:
            txn.create_pb(pb)
        if txn.get_state(pb.id) is None:
            txn.create_state(pb.id, state)
        else:
            txn.update_state(pb.id, **state.model_dump(), reason=None)
