"""release (exit handler): set the PB FINISHED or FAILED from ``{{workflow.status}}``.

It mounts no buffer (a pod waiting for a missing claim would keep the handler from ever
running): buffers are kept as they are, they outlive the run as the SDP's buffer reservations
did, and the report step before it has written the previews and ``report.html``.
"""

from __future__ import annotations

import os
from typing import Any

from steps.buffers import Buffers
from steps.configdb import ConfigDB, PBStatus, connect
from steps.log import LOG
from steps.params import Params
from steps.runner import DAEMON_STEP, EXIT_STEP

# a step still Running when a failed workflow ends was killed before it could record its end
# (SIGKILL after the grace period, a lost node): it did not finish
KILLED = {"phase": "Failed", "message": "ended without recording its end (killed)"}


def _unfinished(name: str, entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and entry.get("phase") == "Running"
        and name not in (DAEMON_STEP, EXIT_STEP)
    )


def run(params: Params, buffers: Buffers) -> dict[str, str]:
    del buffers
    workflow_status = os.environ.get("WORKFLOW_STATUS", "")
    run_name = os.environ.get("WORKFLOW_NAME", "")
    run_uid = os.environ.get("WORKFLOW_UID", "")
    status = PBStatus.FINISHED if workflow_status == "Succeeded" else PBStatus.FAILED

    def release(txn) -> bool:
        state = txn.get_state(params.pb_id)
        if state is None or getattr(state, "workflow_run", run_name) != run_name:
            return False  # not ours: another run holds this block
        if getattr(state, "workflow_uid", None) not in (None, run_uid):
            return False  # another run's of the same name: it claimed or was registered since
        fields: dict[str, Any] = {"status": status}
        if status is PBStatus.FAILED:
            steps = {
                name: entry | KILLED if _unfinished(name, entry) else entry
                for name, entry in (getattr(state, "steps", None) or {}).items()
            }
            failed = [
                f"step {name} failed: {entry.get('message') or 'no message'}"
                for name, entry in steps.items()
                if isinstance(entry, dict) and entry.get("phase") == "Failed"
            ]
            fields["reason"] = "; ".join(
                [f"workflow {run_name} {workflow_status or 'ended'}", *failed]
            )
            fields["steps"] = steps
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
