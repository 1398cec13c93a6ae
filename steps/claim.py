"""claim: take the processing block, wait until its resources are available, set RUNNING.

The claim is an etcd-lease-bound owner key, so it must be held by a live process: this step
runs as an Argo *daemon* that signals readiness (the ``claimed`` output file) once the block is
RUNNING and keeps its lease alive until the DAG ends; if the run dies, the owner key expires.

A controller (the SDP bridge, ``batch-imaging run``) records the run it submits in the
block's state and marks its resources available.  A run no controller marked them for
(``argo submit`` of a block ``sdp assign`` created, whose state the step runner's first
record creates; ``run-pb`` by hand) is its own controller: the claim marks the resources
available once every dependency of the block has FINISHED.  A new run (another workflow
uid) starts an empty step timeline and clears the previous reason.  A block that has ended
(FINISHED, CANCELLED) is not claimed again: a block runs once (on Argo, a new block runs it
again; ``batch-imaging run`` resets one locally).
"""

from __future__ import annotations

import os
import signal
import threading

from steps.buffers import Buffers
from steps.configdb import ConfigDB, Lease, PBStatus, connect
from steps.configdb.entities import ENDED
from steps.log import LOG
from steps.params import Params
from steps.runner import write_outputs

POLL_S = 0.5
LEASE_TTL_S = 10


class ClaimError(RuntimeError):
    """The processing block is missing or already owned."""


def run(params: Params, buffers: Buffers) -> dict[str, str]:
    del buffers
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    run_name = os.environ.get("WORKFLOW_NAME", "")
    run_uid = os.environ.get("WORKFLOW_UID", "")

    def take(txn, lease: Lease) -> bool:
        if txn.get_pb(params.pb_id) is None:
            raise ClaimError(f"processing block {params.pb_id} does not exist")
        state = txn.get_state(params.pb_id)  # the runner's first record made it if need be
        if getattr(state, "status", None) in ENDED:
            raise ClaimError(
                f"processing block {params.pb_id} is {state.status.value}: a block runs once "
                "(assign a new one to run it again; locally, `batch-imaging run -p pb_id=...` "
                "resets it)"
            )
        if not txn.take_pb(params.pb_id, lease):
            return False
        fields = {"status": PBStatus.WAITING, "workflow_run": run_name, "workflow_uid": run_uid}
        if getattr(state, "workflow_uid", None) != run_uid:  # a new run: its own timeline
            steps = dict(getattr(state, "steps", None) or {})
            fields |= {"reason": None, "steps": {k: v for k, v in steps.items() if k == "claim"}}
        txn.update_state(params.pb_id, **fields)
        return True

    def available(txn) -> bool | list[str]:
        """True if the resources are available, else the dependencies waited for; for a run
        no controller marked them for, they are marked available here once every dependency
        has FINISHED, and a dependency that never will (see ``dependency_problem``) fails it."""
        state, pb = txn.get_state(params.pb_id), txn.get_pb(params.pb_id)
        if state is None or pb is None:  # removed meanwhile: wait for the stop
            return []
        if state.resources_available:  # a controller marks them with the run it records
            return True
        problem = txn.dependency_problem(pb)
        if problem:
            raise ClaimError(f"processing block {params.pb_id} cannot start: {problem}")
        pending = txn.unfinished_dependencies(pb)
        if pending:
            return pending
        txn.update_state(params.pb_id, resources_available=True)
        return True

    with ConfigDB(connect(params.config_db or None)) as db:  # closed however the claim ends
        leases = [db.lease(LEASE_TTL_S)]  # the claim's, and any it took again
        lease = leases[0]
        try:
            if not db.run(lambda txn: take(txn, lease)):
                raise ClaimError(f"processing block {params.pb_id} is already claimed")
            LOG.info("Claimed processing block %s", params.pb_id)
            LOG.info("Waiting for resources to be available")
            waited: list[str] = []
            while not stop.is_set():
                pending = db.run(available)
                if pending is True:
                    break
                if pending and pending != waited:
                    LOG.info("Waiting for the dependencies %s to finish", ", ".join(pending))
                waited = pending
                stop.wait(POLL_S)
            else:
                return {}
            LOG.info("Resources are available")
            db.run(lambda txn: txn.update_state(params.pb_id, status=PBStatus.RUNNING))
            write_outputs({"claimed": params.pb_id})
            hold(stop, db, leases, params.pb_id)
            return {}
        finally:
            for held in leases:
                held.revoke()


def hold(stop: threading.Event, db: ConfigDB, leases: list[Lease], pb_id: str) -> None:
    """Hold the claim until the DAG ends (SIGTERM) or whoever started this step is gone.

    A lease that expired (its refresh stalled, or the database was out of reach, for a TTL)
    is replaced by a new one if nobody took the block meanwhile: nothing else can have run
    it.  A claim another process took fails the step, which must stop the run."""
    parent = os.getppid()
    while not stop.wait(1.0):
        if leases[-1].lost.is_set():
            leases.append(db.lease(LEASE_TTL_S))
            if not db.run(lambda txn: txn.take_pb(pb_id, leases[-1])):
                raise ClaimError(
                    f"lost the claim on processing block {pb_id}: its lease expired and "
                    "another process claimed it"
                )
            LOG.warning(
                "The claim's lease on %s expired; nobody took the block: claimed again", pb_id
            )
        if os.getppid() != parent:  # the engine died: let the lease go with us
            LOG.warning("The workflow engine is gone; giving up the claim on %s", pb_id)
            return
