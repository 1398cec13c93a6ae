"""Run the DAG on this machine with the local engine.

``batch-imaging run`` creates a processing block in the embedded store and runs it in-process;
``batch-imaging run-pb`` runs an EXISTING processing block of any configuration database, and
:func:`start_detached` starts that as a process in its own session, so that it outlives the
bridge that started it (a restarted bridge adopts it from the PB state).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dag.local import LocalEngine
from dag.render import template_manifest
from dag.workflow import NAME
from steps import params as parameters
from steps import resources
from steps.configdb import ConfigDB, Transaction, connect, open_backend, url_from_env
from steps.configdb.entities import (
    ENDED,
    PBState,
    PBStatus,
    ProcessingBlock,
    Workflow,
    new_pb_id,
)
from steps.log import LOG
from steps.processes import ENGINE_PID_ENV, cores, process_alive, started_at

WORKFLOW = Workflow(type="batch", id="batch_imaging", version="0.2.0")
HOSTNAME = socket.gethostname()
ARTIFACT_REPOSITORY_ENV = "BATCH_IMAGING_ARTIFACT_REPOSITORY"
UNFINISHED = (PBStatus.STARTING, PBStatus.WAITING, PBStatus.RUNNING)


def artifact_repository(given: Path | None = None) -> Path | None:
    """The local artifact repository: ``given``, else ``$BATCH_IMAGING_ARTIFACT_REPOSITORY``
    (inherited by runs a bridge starts), else none."""
    if given is None and os.environ.get(ARTIFACT_REPOSITORY_ENV):
        given = Path(os.environ[ARTIFACT_REPOSITORY_ENV])
    return given.resolve() if given is not None else None


def config_db_url(value: str | None) -> str:
    """``--config-db`` (``etcd://HOST:PORT``, ``file://PATH`` or a path), or the SDP_CONFIG_*
    environment (SDP_CONFIG_HOST/PORT) as the SDP; ParamsError for a malformed URL."""
    if not value:
        return url_from_env()
    if "://" not in value:
        return str(Path(value).resolve())
    parts = urlsplit(value)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme == "file" or (
        parts.scheme == "etcd" and parts.hostname and port and parts.path in ("", "/")
    ):
        return value
    raise parameters.ParamsError(
        f"config_db = {value!r}: must be etcd://HOST:PORT (PORT 1-65535), file://PATH or a path"
    )


def pods_db(url: str, name: str) -> str:
    """``url`` if a cluster's pods can reach it (etcd://HOST:PORT, HOST not this machine's
    loopback, which is each pod's own), else ParamsError naming ``name``: an embedded store
    lies on this machine only."""
    if not url.startswith("etcd://"):
        why = "etcd://HOST:PORT (not the embedded file store)"
    elif _loopback(urlsplit(url).hostname or ""):
        why = "etcd://HOST:PORT with a HOST the pods reach (a loopback address is each pod's own)"
    else:
        return url
    raise parameters.ParamsError(
        f"{name} {url}: the pods must reach the configuration database, so it must be {why}"
    )


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def existing_db(url: str) -> str:
    """``url`` (as ``config_db_url`` gives it), refused (ParamsError) if it names an embedded
    store that does not exist: a command that only reads or updates must not create one."""
    path = url.removeprefix("file://")
    if url.startswith("etcd://") or Path(path).is_dir():
        return url
    raise parameters.ParamsError(
        f"no configuration store at {path}: give the directory `batch-imaging run` or "
        "`sdp assign` created, or etcd://HOST:PORT"
    )


def embedded_db(buffer_root: Path) -> str:
    """The embedded configuration store of a buffer root."""
    return str((buffer_root / ".sdp-config").resolve())


def given_or_embedded(config_db: str | None, buffer_root: Path) -> str | None:
    """``--config-db``; else None where SDP_CONFIG_HOST names the SDP's database; else the
    embedded store of the buffer root if its runs made one (the blocks of ``batch-imaging
    run`` are there); else None (the SDP_CONFIG_* defaults)."""
    if config_db is None and not os.environ.get("SDP_CONFIG_HOST"):
        local = buffer_root / ".sdp-config"
        return embedded_db(buffer_root) if local.exists() else None
    return config_db


def check_buffer_root(path: Path) -> None:
    """ParamsError naming ``--buffer-root`` if ``path`` is, or lies under, something other
    than a directory, or one where this process cannot create a directory (tried, and
    removed: os.access says yes to root even under /proc)."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    subject = "" if existing == path else f": {existing}"
    if not existing.is_dir():
        raise parameters.ParamsError(
            f"--buffer-root {path}{subject} is not a directory: give a directory"
        )
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".batch-imaging-probe-", dir=existing))
    except OSError:
        raise parameters.ParamsError(
            f"--buffer-root {path}{subject} is not writable: give a directory this user can "
            "write to"
        ) from None


def is_batch_imaging(pb: ProcessingBlock) -> bool:
    """Whether the block runs this workflow (any version)."""
    return (pb.workflow.type, pb.workflow.id) == (WORKFLOW.type, WORKFLOW.id)


def run_name(pb_id: str) -> str:
    """The deterministic workflow name of a processing block's run."""
    return f"{NAME}-{pb_id}"


def pb_params(pb: ProcessingBlock, config_db: str) -> parameters.Params:
    """The workflow parameters of a processing block; ParamsError says they are missing or
    names each bad field."""
    if not pb.parameters:
        raise parameters.ParamsError(
            "parameters missing: a batch_imaging PB needs its parameters object (see "
            "examples/batch_imaging.json; `batch-imaging params schema` lists every field)"
        )
    identity = {"pb_id": pb.id, "config_db": config_db, "sbi_id": pb.sbi_id or ""}
    try:
        return parameters.parse({**pb.parameters, **identity})
    except parameters.ParamsError as exc:
        raise parameters.ParamsError(f"invalid parameters: {exc}") from None


def run_local(
    params_file: Path,
    buffer_root: Path,
    overrides: dict[str, str],
    config_db: str | None = None,
    artifacts: Path | None = None,
) -> str:
    """Create the processing block, run the DAG on this machine, return the workflow phase.

    Everything is validated (parameters, memory and disk, an artifact repository where
    artifacts are asked for) before anything is written."""
    raw = parameters.read(params_file)
    requested = {**raw, **parameters.decode_strings(overrides)} if isinstance(raw, dict) else raw
    checked = parameters.parse(requested)
    runs_here(checked)
    check_buffer_root(buffer_root)
    artifacts = artifact_repository(artifacts)
    if checked.artifacts and artifacts is None:
        raise parameters.ParamsError(
            "artifacts: true needs an artifact repository: give --artifact-repository DIR "
            f"(or set ${ARTIFACT_REPOSITORY_ENV})"
        )
    resources.check(checked, buffer_root, buffer_root)
    given = config_db or requested.get("config_db")  # --config-db, else the parameters'
    config_db = config_db_url(given) if given else embedded_db(buffer_root)
    buffer_root.mkdir(parents=True, exist_ok=True)
    db = ConfigDB(open_backend(config_db))
    try:
        pb_id = requested.get("pb_id") or new_pb_id(
            "local", datetime.date.today(), db.run(lambda txn: txn.list_pbs())
        )
        params = parameters.parse({**requested, "pb_id": pb_id, "config_db": config_db})
        running = running_pid(db.run(lambda txn: txn.get_state(pb_id)))
        if running is not None:
            raise RuntimeError(
                f"processing block {pb_id} is already being run by process {running} on "
                f"{HOSTNAME}: wait for it to end, or stop it"
            )
        uid = str(uuid.uuid4())  # the run's: its exit handler, and no other's, may end the block
        register(db, params, requested, uid, buffer_root)
    finally:
        db.close()
    phase = execute(params, buffer_root, run_name(params.pb_id), artifacts, uid)
    if phase != "Succeeded":
        again = ["batch-imaging", "run", str(params_file), "--buffer-root", str(buffer_root)]
        for name, value in {**overrides, "pb_id": pb_id}.items():
            again += ["-p", f"{name}={value}"]
        again += ["--config-db", str(given)] if given else []
        again += ["--artifact-repository", str(artifacts)] if artifacts else []
        LOG.info("Run it again, reusing its complete steps: %s", shlex.join(again))
    return phase


def runs_here(params: parameters.Params) -> None:
    """Refuse (ParamsError) what only a cluster can run: the DaskCluster resource needs the
    dask-kubernetes operator."""
    if params.dask_cluster:
        raise parameters.ParamsError(
            "dask_cluster = true: a DaskCluster needs Kubernetes with the dask-kubernetes "
            "operator; the local engine starts a Dask cluster in each heavy step (leave it "
            "false, or give dask_scheduler = tcp://HOST:PORT)"
        )


def engine_arguments(params: parameters.Params) -> dict[str, str]:
    """The workflow's arguments for the local engine: the block's parameters, with this
    machine's cores as the CPU request and limit the block does not give (a local "pod" is
    the whole machine, where a cluster's is its request: ``processes.cores``)."""
    machine = str(cores())
    given = params.model_fields_set
    return {
        **params.as_strings(),
        **{name: machine for name in ("cpu_request", "cpu_limit") if name not in given},
    }


def execute(
    params: parameters.Params,
    buffer_root: Path,
    name: str,
    artifacts: Path | None = None,
    uid: str | None = None,
) -> str:
    """Run the rendered workflow template with the local engine; return its phase.

    If the engine cannot even start the workflow (no exit handler ran), the processing
    block is marked FAILED with the reason here."""
    engine = LocalEngine(
        template_manifest(), buffer_root, artifact_repository=artifact_repository(artifacts)
    )
    try:
        runs_here(params)  # a block the bridge runs here was not checked by `run`
        run = engine.run(engine_arguments(params), name=name, uid=uid)
    except Exception as exc:
        with ConfigDB(connect(params.config_db)) as db:
            reason = f"workflow {name} could not run: {exc}"
            db.run(lambda txn: txn.update_state(params.pb_id, status="FAILED", reason=reason))
        raise
    LOG.info("Workflow %s %s", run.name, run.phase)
    for node in run.nodes.values():
        line = (
            f"  {node.name:<24} {node.phase:<10} {node.duration:6.1f} s {node.progress:<5} "
            f"{node.message}"
        )
        LOG.info("%s", line.rstrip())
        for artifact, path in node.artifacts.items():
            LOG.info("    artifact %-18s %s", artifact, path)
    return run.phase


def running_pid(state: PBState | None) -> int | None:
    """The live process on this host, other than this one, running the block whose state
    this is, if any."""
    run = getattr(state, "run", None) or {}
    pid = run.get("pid")
    if run.get("hostname") != HOSTNAME or not pid or pid == os.getpid():
        return None
    return pid if _alive(run) else None


def this_process() -> dict[str, Any]:
    """This process as the PB state records a run or a bridge: host, pid and start time."""
    return {"hostname": HOSTNAME, "pid": os.getpid(), "started_at": started_at(os.getpid())}


def followed_here(name: str) -> dict[str, Any]:
    """A record of local run ``name`` submitted now by this process, which follows it (so
    that bridges leave it alone)."""
    me = this_process()
    return {"name": name, "engine": "local", "bridge": me, **me, "submitted": now()}


def running_here(buffer_root: Path) -> dict[str, Any]:
    """A run's record of this process running it, and where its buffers are."""
    return {**this_process(), "buffer_root": str(buffer_root.resolve())}


def _alive(run: dict) -> bool:
    """Whether the local run recorded on this host still runs: its pid with its start time
    (a `batch-imaging run`), or with the workflow's name (a bridge's run-pb process)."""
    if "started_at" in run:
        return process_alive(run["pid"], started=run["started_at"])
    return process_alive(run["pid"], run["name"])


def gone_run(state: PBState | None) -> str | None:
    """Why an unfinished block is not running any more: its local run's process on this host
    is gone (killed outright: it could not record its end); None if not known to be."""
    run = getattr(state, "run", None) or {}
    pid = run.get("pid")
    if state is None or state.status not in UNFINISHED:
        return None
    if run.get("hostname") != HOSTNAME or not pid or _alive(run):
        return None
    return f"its run (process {pid} on {HOSTNAME}) is gone"


def register(
    db: ConfigDB,
    params: parameters.Params,
    requested: dict,
    uid: str | None = None,
    buffer_root: Path | None = None,
) -> None:
    """Create (or reset, on a re-run) the processing block with the ``requested`` parameters
    (the file's with the command line's); as the processing controller, mark its resources
    available (its dependencies, if any, have FINISHED) and record this process as the run's
    follower, so that a bridge on the same database leaves it alone. A re-run starts a fresh
    timeline and clears the previous reason; a block another run has claimed (on Argo,
    another host), that an Argo workflow runs (its claim step may not have started yet), or
    whose dependencies have not FINISHED, is refused and left as it is.
    ``uid`` is the workflow uid of the run to come: the exit handler of an earlier run of the
    same name then leaves the block to it; ``buffer_root``, where its buffers are, goes into
    the run's record."""
    run = followed_here(run_name(params.pb_id))
    if buffer_root is not None:
        run |= running_here(buffer_root)
    state = PBState(
        status=PBStatus.STARTING,
        resources_available=True,
        run=run,
        workflow_uid=uid,
        steps={},
    )
    for txn in db.txn():
        refuse_claimed(txn, params.pb_id)
        current = txn.get_state(params.pb_id)
        elsewhere = dict(getattr(current, "run", None) or {})
        if elsewhere.get("engine") == "argo" and current.status in UNFINISHED:
            raise RuntimeError(
                f"processing block {params.pb_id} is {current.status.value} as Argo workflow "
                f"{elsewhere.get('name')}: wait for it to end, or stop it (argo stop)"
            )
        pb = txn.get_pb(params.pb_id)  # an existing block keeps its SBI and dependencies
        pending = txn.unfinished_dependencies(pb) if pb is not None else []
        if pending:
            raise RuntimeError(
                f"processing block {params.pb_id} depends on {', '.join(pending)}, not "
                "FINISHED: run it once they are (the bridge waits for them)"
            )
        pb = (
            pb.model_copy(update={"parameters": requested})
            if pb is not None
            else ProcessingBlock(id=params.pb_id, workflow=WORKFLOW, parameters=requested)
        )
        txn.put_pb(pb)
        if txn.get_state(pb.id) is None:
            txn.create_state(pb.id, state)
        else:
            txn.update_state(pb.id, **state.model_dump())


def refuse_ended(state: PBState | None, pb_id: str) -> None:
    """Refuse to run again a block that has ended (``run`` resets one, to run it again)."""
    status = getattr(state, "status", None)
    if status in ENDED:
        raise RuntimeError(
            f"processing block {pb_id} is {status.value}: a block runs once (`batch-imaging "
            f"outputs {pb_id}` lists its products; `batch-imaging run PARAMS.json -p "
            f"pb_id={pb_id}` resets it and runs it again)"
        )


def refuse_claimed(txn: Transaction, pb_id: str) -> None:
    """Refuse a block another process has claimed (it is running it)."""
    owner = txn.get_owner(pb_id)
    if owner is not None:
        raise RuntimeError(
            f"processing block {pb_id} is claimed by process {owner.pid} on "
            f"{owner.hostname} ({' '.join(owner.command)}): wait for its run to end, or "
            "stop it (a claim whose holder died expires within seconds)"
        )


def follow(txn: Transaction, pb_id: str, name: str, buffer_root: Path) -> None:
    """Record this process as the one running workflow ``name`` of the block (in the run
    record naming that workflow, or a new one, following itself, where none is), so that
    ``sdp status`` sees a run started again with ``run-pb`` alive, and where its buffers
    are, and a bridge leaves a block run by hand to it.  A block that has ended (FINISHED or
    CANCELLED), that another process has claimed, or whose recorded run is alive elsewhere
    is refused: a block runs once, one run at a time."""
    state = txn.get_state(pb_id)
    refuse_ended(state, pb_id)
    refuse_claimed(txn, pb_id)
    run = dict(getattr(state, "run", None) or {})
    pid = running_pid(state)
    if pid is not None:
        raise RuntimeError(
            f"processing block {pb_id} is being run by process {pid} ({run.get('name')}): "
            "wait for it to end, or stop it"
        )
    if not run:  # run by hand: this process follows its run, as `run` does (bridges leave it)
        run = followed_here(name)
        if state is None:
            txn.create_state(pb_id, PBState(status=PBStatus.STARTING))
    if run.get("name") == name:
        txn.update_state(pb_id, run={**run, **running_here(buffer_root)})


def run_pb(config_db: str, pb_id: str, buffer_root: Path, name: str) -> str:
    """Run an existing processing block as workflow ``name``; record the phase in its state
    (``run.phase``) and return it."""
    with ConfigDB(connect(config_db)) as db:
        pb = db.run(lambda txn: txn.get_pb(pb_id))
        if pb is None:
            raise ValueError(f"processing block {pb_id} does not exist in {config_db}")
        db.run(lambda txn: follow(txn, pb_id, name, buffer_root))
    LOG.info("Running processing block %s as workflow %s (pid %d)", pb_id, name, os.getpid())
    outcome = {"phase": "", "message": ""}
    try:
        outcome["phase"] = execute(pb_params(pb, config_db), buffer_root, name)
    except Exception as exc:  # the engine could not run it: say why in the PB state
        outcome = {"phase": "Error", "message": f"{type(exc).__name__}: {exc}"}
        LOG.error("Workflow %s could not run: %s", name, outcome["message"])
    outcome["finished"] = now()
    with ConfigDB(connect(config_db)) as db:

        def record(txn) -> None:
            run = dict(getattr(txn.get_state(pb_id), "run", None) or {})
            if run.get("name") == name:
                txn.update_state(pb_id, run={**run, **outcome})

        db.run(record)
    return outcome["phase"]


def now() -> str:
    """The time now (UTC, ISO 8601 to the second), as the PB state records times."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def start_detached(
    config_db: str, pb_id: str, buffer_root: Path, name: str, log: Path
) -> subprocess.Popen[bytes]:
    """Start ``batch-imaging run-pb`` in a new session, logging to ``log``: it survives its
    parent (a bridge restart)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [
        *(sys.executable, "-m", "dag", "run-pb", pb_id),
        *("--config-db", config_db, "--buffer-root", str(buffer_root), "--name", name),
    ]
    with open(log, "ab") as output:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _processes(entry: str) -> Iterator[tuple[int, list[str]]]:
    """(pid, the NUL-separated items of ``/proc/<pid>/<entry>``) of each readable process."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            yield int(proc.name), (proc / entry).read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue


def run_leftovers(engine: int, name: str) -> list[int]:
    """Live processes that the local engine of pid ``engine`` started for workflow ``name``,
    and theirs (their environment says so): the steps a killed run left behind, never those
    of another run."""
    marks = {f"WORKFLOW_NAME={name}", f"{ENGINE_PID_ENV}={engine}"}
    return [
        pid
        for pid, environ in _processes("environ")
        if marks <= set(environ) and process_alive(pid)
    ]


def find_run_process(name: str, buffer_root: str) -> int | None:
    """The pid of a live ``run-pb`` process on this host running workflow ``name`` in
    ``buffer_root``, if any."""
    for pid, argv in _processes("cmdline"):
        if {"run-pb", name, buffer_root} <= set(argv) and process_alive(pid, name):
            return pid
    return None
