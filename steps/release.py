"""release (exit handler): set the PB FINISHED or FAILED from ``{{workflow.status}}``.

Buffers are kept: they outlive the run, as the SDP's buffer reservations did.
"""

from __future__ import annotations

import os

from steps.buffers import Buffers
from steps.configdb import ConfigDB, PBStatus, connect
from steps.log import LOG
from steps.params import Params

OUTPUTS = ("status",)


def run(params: Params, buffers: Buffers) -> dict[str, str]:
    del buffers
    workflow_status = os.environ.get("WORKFLOW_STATUS", "")
    run_name = os.environ.get("WORKFLOW_NAME", "")
    status = PBStatus.FINISHED if workflow_status == "Succeeded" else PBStatus.FAILED

    def release(txn) -> bool:
        state = txn.get_state(params.pb_id)
        if state is None or getattr(state, "workflow_run", run_name) != run_name:
            return False  # not ours: another run holds this block
        fields = {"status": status}
        if status is PBStatus.FAILED:
            fields["reason"] = f"workflow {run_name} {workflow_status or 'ended'}"
        txn.update_state(params.pb_id, **fields)
        return True

    with ConfigDB(connect(params.config_db or None)) as db:
        ours = db.run(release)
    if not ours:
        LOG.warning("Processing block %s is held by another run; left unchanged", params.pb_id)
        return {"status": "unchanged"}
    if status is PBStatus.FINISHED:
        LOG.info("Finished processing")
    else:
        LOG.error("Processing block %s FAILED (workflow %s)", params.pb_id, workflow_status)
    return {"status": status.value}
