"""The SDP bridge: watches processing blocks and runs each batch_imaging PB as one DAG.

It plays the SDP processing controller's part for the PBs it serves:

- real-time ``test_realtime`` PBs are only tracked: RUNNING on assignment (``sdp release``
  makes them FINISHED);
- a batch ``batch_imaging`` PB is validated (workflow, parameters, dependencies; an invalid
  one becomes FAILED with a reason), set WAITING, marked ``resources_available`` once every
  dependency is FINISHED, then submitted as workflow ``batch-imaging-<pb_id>``.

Exactly once: the run record (``state.run``) is written in a compare-and-swap transaction
BEFORE the submission, so a second bridge, a restarted one or a redelivered event finds it and
follows the run instead of submitting again.  The record names the bridge following the run;
a bridge on the same host takes over (adopts) the runs of a bridge that has died.  The run's
phase is mirrored into the PB status: the DAG's claim and release steps set RUNNING and
FINISHED/FAILED themselves, and the bridge sets FINISHED/FAILED when they could not (a killed
run, a terminated Argo workflow).  A failed run is never resubmitted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from dag.runner import (
    HOSTNAME,
    check_buffer_root,
    config_db_url,
    existing_db,
    find_run_process,
    given_or_embedded,
    now,
    pb_params,
    pods_db,
    run_leftovers,
    run_name,
    run_pb,
    start_detached,
    this_process,
)
from steps.configdb import (
    ConfigDB,
    ConfigDBUnavailable,
    PBState,
    PBStatus,
    Transaction,
    open_backend,
)
from steps.log import LOG
from steps.params import Params, ParamsError
from steps.processes import process_alive

BATCH = ("batch", "batch_imaging")
REALTIME = ("realtime", "test_realtime")
FINAL = frozenset({PBStatus.FINISHED, PBStatus.FAILED, PBStatus.CANCELLED})
SERVES = f"{':'.join(BATCH)} (and tracks {':'.join(REALTIME)})"


@dataclass(frozen=True)
class Outcome:
    """What an engine knows of a run: its phase (Argo's words; ``Ended``: the local process
    is gone, its recorded phase tells how it ended; ``Missing``: no such run), a message, and
    fields to merge into the run record."""

    phase: str
    message: str = ""
    fields: dict[str, Any] = field(default_factory=dict)


class Engine(Protocol):
    """Where the bridge runs workflows."""

    name: str

    def submit(self, pb_id: str, params: Params, name: str) -> dict[str, Any]:
        """Start workflow ``name``; return fields to record in the run record."""
        ...

    def check(self, run: dict[str, Any], ours: bool) -> Outcome | None:
        """The run's outcome, or None if this bridge cannot observe it (another host)."""
        ...


class LocalRuns:
    """The local engine, each run a detached ``batch-imaging run-pb`` process whose output
    (``<buffer root>/.runs/<name>.log``) the bridge following it copies to its own log."""

    name = "local"

    def __init__(self, buffer_root: Path) -> None:
        self.buffer_root = buffer_root.resolve()
        self._children: dict[str, Any] = {}
        self._offsets: dict[str, int] = {}

    def submit(self, pb_id: str, params: Params, name: str) -> dict[str, Any]:
        log = self.buffer_root / ".runs" / f"{name}.log"
        self._offsets[name] = log.stat().st_size if log.exists() else 0
        process = start_detached(params.config_db, pb_id, self.buffer_root, name, log)
        self._children[name] = process
        return {
            "pid": process.pid,
            "hostname": HOSTNAME,
            "log": str(log),
            "buffer_root": str(self.buffer_root),
        }

    def check(self, run: dict[str, Any], ours: bool) -> Outcome | None:
        name = run["name"]
        if run.get("hostname", run["bridge"]["hostname"]) != HOSTNAME:
            return None
        child = self._children.get(name)
        if child is not None and child.poll() is not None:  # reap our own child
            del self._children[name]
        pid = (
            run.get("pid")
            or (child.pid if child else None)
            or find_run_process(name, str(self.buffer_root))
        )
        alive = pid is not None and process_alive(pid, name)
        if ours:  # after the liveness check, so that a finished run's last lines are copied
            self._copy_log(name, run.get("log"))
        if alive:
            return Outcome("Running", fields={"pid": pid, "hostname": HOSTNAME})
        if pid is None:
            return Outcome("Missing", f"workflow {name} never started")
        self._offsets.pop(name, None)
        for leftover in run_leftovers(pid, name):  # steps of a killed run (the claim daemon)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(leftover, signal.SIGTERM)
        return Outcome("Ended", f"process {pid} of workflow {name} on {HOSTNAME} has ended")

    def _copy_log(self, name: str, log: str | None) -> None:
        if not log or not Path(log).is_file():
            return
        with open(log, "rb") as handle:
            handle.seek(self._offsets.setdefault(name, Path(log).stat().st_size))
            text = handle.read()
        complete = text[: text.rfind(b"\n") + 1]
        if complete:
            self._offsets[name] += len(complete)
            sys.stderr.write(complete.decode(errors="replace"))
            sys.stderr.flush()


class ArgoRuns:
    """Argo Workflows through ``dag.argo`` (Hera's WorkflowsService, configured from
    ``ARGO_SERVER``, ``ARGO_TOKEN``, ``ARGO_NAMESPACE`` as the argo CLI is): each run a
    Workflow referencing the installed ``batch-imaging`` WorkflowTemplate, created under the
    run's deterministic name (``dag.argo.submit`` uses generateName, so this adapts it)."""

    name = "argo"

    def __init__(self) -> None:
        from dag import argo

        self.service = argo.service()
        self.namespace = self.service.namespace
        self._body = argo.workflow_body

    def submit(self, pb_id: str, params: Params, name: str) -> dict[str, Any]:
        from hera.exceptions import AlreadyExists
        from hera.workflows.models import Workflow, WorkflowCreateRequest

        if params.dask_cluster and not params.dask_scheduler:
            from dag.workflow import dask_scheduler_address

            params = params.model_copy(update={"dask_scheduler": dask_scheduler_address(pb_id)})
        body = self._body(params)
        body["metadata"] = {**body["metadata"], "name": name}
        body["metadata"].pop("generateName", None)
        request = WorkflowCreateRequest(workflow=Workflow.model_validate(body))
        with contextlib.suppress(AlreadyExists):  # same deterministic name: it is this run
            self.service.create_workflow(request, namespace=self.namespace)
        return {"namespace": self.namespace}

    def check(self, run: dict[str, Any], ours: bool) -> Outcome | None:
        from hera.exceptions import NotFound

        namespace = run.get("namespace", self.namespace)
        try:
            workflow = self.service.get_workflow(run["name"], namespace=namespace)
        except NotFound:
            return Outcome("Missing", f"workflow {run['name']} not found in namespace {namespace}")
        except Exception as exc:  # the server is unreachable or refuses: try again later
            LOG.warning("Cannot get workflow %s from the Argo server: %s", run["name"], exc)
            return None
        status = workflow.status
        phase = (status.phase if status else None) or "Pending"
        return Outcome(phase, (status.message if status else None) or "")


@dataclass
class Decision:
    """What a transaction over one PB decided: the state it left, and an action."""

    state: PBState | None = None
    action: str = ""  # "", "submit" or "follow"
    run: dict[str, Any] = field(default_factory=dict)
    params: Params | None = None
    note: str = ""


class Bridge:
    """Follows the configuration database and runs the PBs it serves with ``engine``."""

    def __init__(
        self,
        url: str,
        engine: Engine,
        poll_s: float = 1.0,
        backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
    ) -> None:
        self.url = url
        self.engine = engine
        self.poll_s = poll_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.me = this_process()
        self._seen: dict[str, tuple[str, str]] = {}
        self._final: set[str] = set()  # PBs final and not followed: no longer read
        self._ended: set[str] = set()  # runs seen to end

    # The loop -------------------------------------------------------------------------
    def serve(self, stop: threading.Event) -> None:
        """Connect (retrying with backoff while the database is down) and reconcile on every
        change and every ``poll_s`` until ``stop`` is set."""
        LOG.info("Bridge for %s with the %s engine on %s", SERVES, self.engine.name, self.url)
        delay = self.backoff_s
        while not stop.is_set():
            try:
                with ConfigDB(open_backend(self.url)) as db:
                    delay = self.backoff_s
                    LOG.info("Connected to %s; watching processing blocks", self.url)
                    self._watch(db, stop)
            except ConfigDBUnavailable as exc:
                LOG.warning("%s; retrying in %.1f s", exc, delay)
                stop.wait(delay)
                delay = min(2 * delay, self.max_backoff_s)
        LOG.info("Bridge stopped (runs it started carry on; a new bridge adopts them)")

    def _watch(self, db: ConfigDB, stop: threading.Event) -> None:
        outage = False
        batches = db.watch_pbs(timeout_s=self.poll_s)
        try:
            for _ in batches:
                if stop.is_set():
                    return
                try:
                    self.reconcile(db)
                except ConfigDBUnavailable as exc:
                    if not outage:
                        LOG.warning("%s; retrying", exc)
                    outage = True
                    continue
                if outage:
                    LOG.info("Configuration database %s is back; carrying on", self.url)
                    outage = False
        finally:
            batches.close()

    def reconcile(self, db: ConfigDB) -> None:
        """Bring every PB not yet final one step further."""
        for pb_id in db.run(lambda txn: txn.list_pbs()):
            if pb_id in self._final:
                continue
            try:
                self._reconcile(db, pb_id)
            except ConfigDBUnavailable:
                raise
            except Exception:  # one PB's trouble must not stop the others
                LOG.exception("Processing block %s: reconciliation failed", pb_id)

    # One processing block -------------------------------------------------------------
    def _reconcile(self, db: ConfigDB, pb_id: str) -> None:
        decision = db.run(lambda txn: self._decide(txn, pb_id))
        self._report(pb_id, decision)
        if decision.action == "submit" and decision.params is not None:
            self._submit(db, pb_id, decision.run["name"], decision.params)
        elif decision.action == "follow":
            self._follow(db, pb_id, decision.run)

    def _decide(self, txn: Transaction, pb_id: str) -> Decision:
        state = txn.get_state(pb_id)
        if state is not None and state.status in FINAL:
            run = dict(getattr(state, "run", None) or {})
            if run.get("bridge") == self.me and run.get("name") not in self._ended:
                return Decision(state, "follow", run)  # until its process ends and is logged
            return Decision(state)
        try:
            pb = txn.get_pb(pb_id)
        except ValueError as exc:
            return self._fail(txn, pb_id, state, f"invalid processing block: {_entity_error(exc)}")
        if pb is None:  # deleted meanwhile
            return Decision(state)
        kind = (pb.workflow.type, pb.workflow.id)
        if kind not in (BATCH, REALTIME):
            reason = (
                f"workflow {pb.workflow.type}:{pb.workflow.id}:{pb.workflow.version} is not "
                f"served here: this bridge serves {SERVES}"
            )
            return self._fail(txn, pb_id, state, reason)
        if kind == REALTIME:
            if state is None:
                state = PBState(status=PBStatus.RUNNING, resources_available=True)
                txn.create_state(pb_id, state)
            return Decision(state)
        run = dict(getattr(state, "run", None) or {})
        if run:
            return Decision(state, "follow", run)
        owner = txn.get_owner(pb_id)
        if owner is not None:  # run by hand (`run-pb`, `argo submit`): not ours to run
            return Decision(state, note=f"claimed by process {owner.pid} on {owner.hostname}")
        reason = ""
        try:
            params = pb_params(pb, self.url)
        except ParamsError as exc:
            reason = _one_line(exc)
        reason = reason or txn.dependency_problem(pb)
        if reason:
            return self._fail(txn, pb_id, state, reason)
        if state is None:
            state = PBState(status=PBStatus.WAITING)
            txn.create_state(pb_id, state)
        pending = [
            d.pb_id for d in pb.dependencies if _status(txn.get_state(d.pb_id)) != PBStatus.FINISHED
        ]
        if pending:
            note = f"dependencies not FINISHED: {', '.join(pending)}"
            if state.status != PBStatus.WAITING:
                state = txn.update_state(pb_id, status=PBStatus.WAITING)
            return Decision(state, note=note)
        name = run_name(pb_id)
        run = {"name": name, "engine": self.engine.name, "bridge": self.me, "requested": now()}
        state = txn.update_state(pb_id, resources_available=True, run=run, workflow_run=name)
        return Decision(state, "submit", run, params)

    def _fail(self, txn: Transaction, pb_id: str, state: PBState | None, reason: str) -> Decision:
        if state is None:
            state = PBState(status=PBStatus.FAILED, reason=reason)
            txn.create_state(pb_id, state)
        else:
            state = txn.update_state(pb_id, status=PBStatus.FAILED, reason=reason)
        return Decision(state)

    def _report(self, pb_id: str, decision: Decision) -> None:
        """Log each PB's status changes once (the seed's wording where it had one)."""
        state = decision.state
        if state is None:
            return
        seen = (state.status.value, decision.note)
        if state.status in FINAL and not decision.action:
            self._final.add(pb_id)
        if self._seen.get(pb_id) == seen:
            return
        self._seen[pb_id] = seen
        if state.status == PBStatus.WAITING and decision.note:
            LOG.info("Processing block %s WAITING: %s", pb_id, decision.note)
            LOG.info("Waiting for resources to be available")
        elif decision.action == "submit":
            LOG.info("Resources are available for processing block %s", pb_id)
        elif state.status == PBStatus.FAILED:
            LOG.error("Processing block %s FAILED: %s", pb_id, state.reason)
        else:
            LOG.info("Processing block %s %s", pb_id, state.status.value)

    def _submit(self, db: ConfigDB, pb_id: str, name: str, params: Params) -> None:
        try:
            fields = self.engine.submit(pb_id, params, name)
        except Exception as exc:
            reason = f"submitting workflow {name} ({self.engine.name} engine) failed: {exc}"
            LOG.error("Processing block %s FAILED: %s", pb_id, reason)
            db.run(lambda txn: self._finish(txn, pb_id, name, "Failed", reason))
            return
        LOG.info(
            "Submitted processing block %s as workflow %s (%s engine%s)",
            pb_id,
            name,
            self.engine.name,
            "".join(f", {k} {v}" for k, v in fields.items()),
        )
        db.run(lambda txn: self._record(txn, pb_id, name, {**fields, "submitted": now()}))

    def _follow(self, db: ConfigDB, pb_id: str, run: dict[str, Any]) -> None:
        follower = run.get("bridge", {})
        ours = follower == self.me
        if not ours and _bridge_alive(follower):
            return  # another live bridge follows it
        outcome = self.engine.check(run, ours)
        if outcome is None:
            return
        if not ours:
            if not db.run(lambda txn: self._adopt(txn, pb_id, run["name"], follower)):
                return
            LOG.info(
                "Adopted workflow %s of processing block %s from stopped bridge %s:%s (%s)",
                run["name"],
                pb_id,
                follower.get("hostname"),
                follower.get("pid"),
                outcome.phase,
            )
        if outcome.phase in ("Pending", "Running"):
            if "submitted" not in run or any(run.get(k) != v for k, v in outcome.fields.items()):
                fields = {**outcome.fields, "submitted": run.get("submitted") or now()}
                db.run(lambda txn: self._record(txn, pb_id, run["name"], fields))
            return
        self._ended.add(run["name"])
        state = db.run(
            lambda txn: self._finish(txn, pb_id, run["name"], outcome.phase, outcome.message)
        )
        if state is not None:
            self._report(pb_id, Decision(state))

    def _adopt(self, txn: Transaction, pb_id: str, name: str, follower: dict[str, Any]) -> bool:
        """Make this bridge the run's follower if ``follower`` still is."""
        run = dict(getattr(txn.get_state(pb_id), "run", None) or {})
        if run.get("name") != name or run.get("bridge") != follower:
            return False
        txn.update_state(pb_id, run={**run, "bridge": self.me})
        return True

    @staticmethod
    def _record(txn: Transaction, pb_id: str, name: str, fields: dict[str, Any]) -> None:
        run = dict(getattr(txn.get_state(pb_id), "run", None) or {})
        if run.get("name") == name:
            txn.update_state(pb_id, run={**run, **fields})

    @staticmethod
    def _finish(
        txn: Transaction, pb_id: str, name: str, phase: str, message: str
    ) -> PBState | None:
        """Mirror a run's end into the PB status unless the DAG's release step already did."""
        state = txn.get_state(pb_id)
        run = dict(getattr(state, "run", None) or {})
        if state is None or state.status in FINAL or run.get("name") != name:
            return None
        if phase == "Ended":  # the local run records its phase before it exits
            recorded = run.get("phase")
            phase, message = (recorded, run.get("message", "")) if recorded else ("Lost", message)
        if phase == "Succeeded":
            return txn.update_state(pb_id, status=PBStatus.FINISHED)
        if phase in ("Failed", "Error"):
            reason = f"workflow {name} {phase}" + (f": {message}" if message else "")
        elif phase == "Lost":
            reason = (
                f"{message} without recording a phase (killed?); not resubmitted — "
                f"see {run.get('log', 'its log')}"
            )
        else:
            reason = f"{message}; not resubmitted"
        return txn.update_state(pb_id, status=PBStatus.FAILED, reason=reason)


def _status(state: PBState | None) -> str:
    return state.status.value if state is not None else "none"


def _bridge_alive(bridge: dict[str, Any]) -> bool:
    """Whether a bridge may be alive: on another host we cannot tell, so assume so."""
    if bridge.get("hostname") != HOSTNAME:
        return True
    pid = int(bridge.get("pid") or 0)
    if pid <= 0 or pid == os.getpid():
        return pid > 0
    return process_alive(pid, started=bridge.get("started_at"))


def _entity_error(exc: ValueError) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'entry'}: {error['msg']}"
            for error in exc.errors()
        )
    return _one_line(exc)


def _one_line(exc: Exception) -> str:
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


# Command line ---------------------------------------------------------------------------
def engine_for(name: str, buffer_root: Path) -> Engine:
    """The engine called ``name``: ``local`` (runs on this machine) or ``argo``."""
    if name == "argo":
        return ArgoRuns()
    return LocalRuns(buffer_root)


def cmd_bridge(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT: a service's graceful stop, so exit 0 (README)."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    url = config_db_url(args.config_db)
    if args.engine == "argo":
        pods_db(url, "--config-db")
    Bridge(url, engine_for(args.engine, Path(args.buffer_root))).serve(stop)
    return 0


def cmd_run_pb(args: argparse.Namespace) -> int:
    root = Path(args.buffer_root)
    url = existing_db(config_db_url(given_or_embedded(args.config_db, root)))
    check_buffer_root(root)
    phase = run_pb(url, args.pb_id, root, args.name or run_name(args.pb_id))
    return 0 if phase == "Succeeded" else 1


def add_commands(subparsers: Any) -> None:
    """Add ``bridge`` and ``run-pb`` to the ``batch-imaging`` command."""
    config_help = "etcd://HOST:PORT or a path (default: SDP_CONFIG_HOST/SDP_CONFIG_PORT)"
    bridge = subparsers.add_parser(
        "bridge", help="watch the SDP configuration DB and run batch_imaging PBs"
    )
    bridge.add_argument("--config-db", default=None, help=config_help)
    bridge.add_argument("--engine", choices=["local", "argo"], default="local")
    bridge.add_argument("--buffer-root", default="buffers", help="local engine's buffers")
    bridge.set_defaults(func=cmd_bridge)

    run = subparsers.add_parser("run-pb", help="run an existing processing block locally")
    run.add_argument("pb_id", help="processing block ID")
    run.add_argument(
        "--config-db",
        default=None,
        help="etcd://HOST:PORT or a path (default: the buffer root's own store, where "
        "`batch-imaging run` put its blocks, if any; else SDP_CONFIG_HOST/SDP_CONFIG_PORT)",
    )
    run.add_argument("--buffer-root", default="buffers", help="where buffers live (./buffers)")
    run.add_argument("--name", default=None, help="workflow name (batch-imaging-<pb_id>)")
    run.set_defaults(func=cmd_run_pb)
