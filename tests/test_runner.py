"""The step runner's contract: a step writes exactly the output parameters it declares."""

import datetime
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from dag.runner import WORKFLOW, embedded_db, follow, register, run_leftovers
from steps import manifest, runner
from steps import params as parameters
from steps.buffers import BUFFER_ROOT_ENV, Buffers
from steps.claim import ClaimError
from steps.configdb import ConfigDB, open_backend
from steps.configdb.backend import wire_key
from steps.configdb.entities import Dependency, PBState, ProcessingBlock
from steps.metrics import step_timings
from steps.processes import ENGINE_PID_ENV, started_at


@pytest.fixture
def block(tmp_path, monkeypatch):
    raw = {"pb_id": "pb-runner-20261201-00000"}
    params = parameters.parse({**raw, "config_db": embedded_db(tmp_path)})
    with ConfigDB(open_backend(params.config_db)) as db:
        register(db, params, raw)
    buffers = Buffers.of(params, tmp_path)
    buffers.vis.mkdir(), buffers.img.mkdir()  # the volumes, as mounted in a pod
    monkeypatch.setenv(BUFFER_ROOT_ENV, str(tmp_path))
    monkeypatch.setenv(runner.OUTPUTS_ENV, str(tmp_path / "outputs"))
    return params, tmp_path


def _phase(params: parameters.Params, step: str) -> str:
    with ConfigDB(open_backend(params.config_db)) as db:
        return db.run(lambda txn: txn.get_state(params.pb_id)).steps[step]["phase"]


def test_a_step_writes_its_declared_outputs(block):
    params, root = block
    assert runner.run_step("buffer-reserve", params.as_strings()) == 0
    written = sorted(p.name for p in (root / "outputs").iterdir())
    assert written == sorted(runner.OUTPUTS["buffer-reserve"])
    assert _phase(params, "buffer-reserve") == "Succeeded"


def test_a_step_returning_undeclared_outputs_fails_and_is_marked_failed(block, monkeypatch):
    params, root = block
    monkeypatch.setitem(runner.OUTPUTS, "buffer-reserve", ("buffer_vis",))
    with pytest.raises(RuntimeError, match=r"returned the outputs \['buffer_img', 'buffer_vis'\]"):
        runner.run_step("buffer-reserve", params.as_strings())
    assert _phase(params, "buffer-reserve") == "Failed"
    assert not (root / "outputs").exists()


def _terminal() -> None:
    """SIGINT as a foreground shell leaves it, whatever this test process has."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _blocking() -> None:
    """SIGINT blocked, as a launcher's thread may leave it (blocked signals survive exec)."""
    _terminal()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def _claim(params: parameters.Params, launcher) -> subprocess.Popen:
    """The claim step of ``params``'s block, started by ``launcher``, waiting for resources."""
    raw = ["-p", f"pb_id={params.pb_id}", "-p", f"config_db={params.config_db}"]
    step = subprocess.Popen(
        [sys.executable, "-m", "dag", "step", "claim", *raw],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},  # SIGABRT prints where it is stuck
        preexec_fn=launcher,
    )
    assert step.stderr is not None
    lines = []
    while "Waiting for resources" not in (line := step.stderr.readline()):
        assert line, "".join(lines)  # the step ended before it waited
        lines.append(line)
    return step


@pytest.mark.parametrize("launcher", [_terminal, _blocking])
def test_ctrl_c_ends_a_step_quietly(block, launcher):
    """Ctrl-C reaches every step of a run: a waiting claim ends with 130, one log line and
    its step recorded Failed, also when its launcher left SIGINT blocked."""
    params, _ = block
    step = _claim(params, launcher)
    watchdog = threading.Timer(60, step.send_signal, [signal.SIGABRT])  # fails, not hangs
    watchdog.start()
    try:
        step.send_signal(signal.SIGINT)
        rest = step.stderr.read()  # type: ignore[union-attr]
        assert step.wait(timeout=30) == 130, rest
    finally:
        watchdog.cancel()
        step.kill()
    assert "WARNING:batch_imaging:Interrupted" in rest and "Traceback" not in rest, rest
    assert _phase(params, "claim") == "Failed"


def test_a_step_started_ignoring_ctrl_c_keeps_ignoring_it(block):
    """A launcher that ignores SIGINT (a shell's background job) keeps its steps immune to
    Ctrl-C; SIGTERM still stops them."""
    params, _ = block
    step = _claim(params, lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        step.send_signal(signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):
            step.wait(timeout=1.5)
        step.terminate()
        assert step.wait(timeout=30) == 0  # the claim lets go of the block when stopped
    finally:
        step.kill()


def test_sigterm_is_recorded_as_the_step_stopped(block, monkeypatch, caplog):
    """SIGTERM (the engine stopping the workflow, a deadline, the kubelet) ends a step as
    Failed with the reason, and the process with 143, as killed by it; a second SIGTERM, or
    the grace period's alarm, would end it at once."""
    params, _ = block

    def terminated(params, buffers):
        assert signal.getsignal(signal.SIGTERM) is runner._stop  # else SIGTERM ends pytest
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the step")

    monkeypatch.setattr("steps.buffer_reserve.run", terminated)
    try:
        with pytest.raises(runner.Stopped) as stopped:
            runner.run_step("buffer-reserve", params.as_strings())
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        grace = signal.alarm(0)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert 0 < grace <= runner.STOP_GRACE_S
    assert stopped.value.code == 128 + signal.SIGTERM
    with ConfigDB(open_backend(params.config_db)) as db:
        entry = db.run(lambda txn: txn.get_state(params.pb_id)).steps["buffer-reserve"]
    assert (entry["phase"], entry["message"]) == ("Failed", "Stopped (SIGTERM)")
    assert "Step buffer-reserve: Stopped (SIGTERM)" in caplog.text


def test_a_failed_workflow_marks_steps_that_never_ended_as_failed(block, monkeypatch):
    """A step killed outright (SIGKILL after the grace period) cannot record its end: the exit
    handler of the failed workflow records it Failed, and the reason names it."""
    params, _ = block
    runner.record(params, "calibrate", {"started": "2026-12-01T00:00:00+00:00", "phase": "Running"})
    runner.record(params, "claim", {"started": "2026-12-01T00:00:00+00:00", "phase": "Running"})
    monkeypatch.setenv("WORKFLOW_STATUS", "Failed")
    assert runner.run_step("release", params.as_strings()) == 0
    with ConfigDB(open_backend(params.config_db)) as db:
        state = db.run(lambda txn: txn.get_state(params.pb_id))
    assert state.status == "FAILED"
    assert state.steps["calibrate"]["phase"] == "Failed"
    assert state.steps["claim"]["phase"] == "Running"  # the daemon: stopped by the engine
    assert "step calibrate failed: ended without recording its end (killed)" in state.reason


def test_a_run_whose_claim_failed_leaves_the_block_to_the_run_holding_it(block, monkeypatch):
    """Two runs of one block have the same workflow name (on Argo and here): the one whose
    claim is refused ends, and its exit handler leaves the block to the run that holds the
    claim, told apart by the workflow's uid; that run's own exit handler then ends it."""
    params, _ = block
    name = f"batch-imaging-{params.pb_id}"
    with ConfigDB(open_backend(params.config_db)) as db:
        lease = db.lease(30)

        def take(txn) -> None:
            assert txn.take_pb(params.pb_id, lease)
            txn.update_state(
                params.pb_id, status="RUNNING", workflow_run=name, workflow_uid="holder"
            )

        db.run(take)
        monkeypatch.setenv("WORKFLOW_NAME", name)
        monkeypatch.setenv("WORKFLOW_UID", "second")
        with pytest.raises(ClaimError, match="already claimed"):
            runner.run_step("claim", params.as_strings())
        monkeypatch.setenv("WORKFLOW_STATUS", "Failed")
        assert runner.run_step("release", params.as_strings()) == 0
        state = db.run(lambda txn: txn.get_state(params.pb_id))
        assert state.status == "RUNNING" and state.workflow_uid == "holder"
        assert db.run(lambda txn: txn.get_owner(params.pb_id)) is not None
        monkeypatch.setenv("WORKFLOW_UID", "holder")
        monkeypatch.setenv("WORKFLOW_STATUS", "Succeeded")
        assert runner.run_step("release", params.as_strings()) == 0
        assert db.run(lambda txn: txn.get_state(params.pb_id)).status == "FINISHED"
        lease.revoke()


@pytest.mark.parametrize("status", ["FINISHED", "CANCELLED"])
def test_an_ended_block_is_not_run_again(block, monkeypatch, status):
    """``run-pb`` and the claim refuse a block that has ended (``run`` resets one first)."""
    params, root = block
    name = f"batch-imaging-{params.pb_id}"
    with ConfigDB(open_backend(params.config_db)) as db:
        db.run(lambda txn: txn.update_state(params.pb_id, status=status))
        with pytest.raises(RuntimeError, match=f"is {status}: a block runs once \\(`batch"):
            db.run(lambda txn: follow(txn, params.pb_id, name, root))
        monkeypatch.setenv("WORKFLOW_NAME", name)
        monkeypatch.setenv("WORKFLOW_UID", "again")
        with pytest.raises(ClaimError, match=f"is {status}: a block runs once"):
            runner.run_step("claim", params.as_strings())
        assert db.run(lambda txn: txn.get_owner(params.pb_id)) is None
        assert db.run(lambda txn: txn.get_state(params.pb_id)).status == status


def test_run_pb_refuses_a_block_being_run(block):
    """A block whose recorded run is alive in another process, or that another process has
    claimed, is refused by ``run-pb``: one run at a time."""
    params, root = block
    name = f"batch-imaging-{params.pb_id}"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with ConfigDB(open_backend(params.config_db)) as db:
            run = {"name": name, "hostname": socket.gethostname(), "pid": other.pid}
            run["started_at"] = started_at(other.pid)
            db.run(lambda txn: txn.update_state(params.pb_id, run=run))
            with pytest.raises(RuntimeError, match=f"being run by process {other.pid}"):
                db.run(lambda txn: follow(txn, params.pb_id, name, root))
            db.run(lambda txn: txn.update_state(params.pb_id, run={"name": name}))
            lease = db.lease(30)
            assert db.run(lambda txn: txn.take_pb(params.pb_id, lease))
            with pytest.raises(RuntimeError, match="is claimed by process"):
                db.run(lambda txn: follow(txn, params.pb_id, name, root))
            lease.revoke()
            db.run(lambda txn: follow(txn, params.pb_id, name, root))  # free again: taken
            assert db.run(lambda txn: txn.get_state(params.pb_id)).run["pid"] == os.getpid()
    finally:
        other.kill()
        other.wait()


def test_an_earlier_runs_exit_handler_leaves_a_block_run_again_alone(block, monkeypatch):
    """A run ends (its claim released) and the block is run again before the earlier run's
    exit handler has reported: that handler, of a run of the same name, must leave the
    block to the new run, which ``register`` named by its uid."""
    params, _ = block
    name = f"batch-imaging-{params.pb_id}"
    with ConfigDB(open_backend(params.config_db)) as db:
        db.run(
            lambda txn: txn.update_state(
                params.pb_id, status="RUNNING", workflow_run=name, workflow_uid="earlier"
            )
        )
        register(db, params, {"pb_id": params.pb_id}, uid="again")
    monkeypatch.setenv("WORKFLOW_NAME", name)
    monkeypatch.setenv("WORKFLOW_UID", "earlier")
    monkeypatch.setenv("WORKFLOW_STATUS", "Failed")
    assert runner.run_step("release", params.as_strings()) == 0
    with ConfigDB(open_backend(params.config_db)) as db:
        state = db.run(lambda txn: txn.get_state(params.pb_id))
    assert (state.status, state.workflow_uid) == ("STARTING", "again")


def test_a_local_run_refuses_a_block_an_argo_workflow_runs(block):
    """The bridge submitted the block to Argo, whose claim step has not started yet (a pod
    pulling its image): ``run`` refuses it rather than run it twice."""
    params, _ = block
    argo = {"name": f"batch-imaging-{params.pb_id}", "engine": "argo"}
    with ConfigDB(open_backend(params.config_db)) as db:
        db.run(lambda txn: txn.update_state(params.pb_id, status="WAITING", run=argo))
        with pytest.raises(RuntimeError, match="is WAITING as Argo workflow batch-imaging-pb"):
            register(db, params, {})
        assert db.run(lambda txn: txn.get_state(params.pb_id)).run == argo
        db.run(lambda txn: txn.update_state(params.pb_id, status="FAILED"))
        register(db, params, {})  # an ended one may be run again here


def test_a_local_run_of_an_assigned_block_keeps_its_sbi(tmp_path):
    """``run`` records the parameters that ran; a block an SBI assigned stays that SBI's."""
    db = ConfigDB(open_backend(embedded_db(tmp_path)))
    pb_id = "pb-assigned-20261201-00000"
    pb = ProcessingBlock(id=pb_id, sbi_id="sbi-a-20261201-00000", workflow=WORKFLOW)
    db.run(lambda txn: txn.create_pb(pb))
    register(db, parameters.parse({"pb_id": pb_id}), {"niter": 7})
    stored = db.run(lambda txn: txn.get_pb(pb_id))
    db.close()
    assert (stored.sbi_id, stored.parameters) == ("sbi-a-20261201-00000", {"niter": 7})


def test_a_local_run_refuses_a_block_whose_dependencies_have_not_finished(tmp_path):
    """A block that depends on another (a batch block on its real-time one) runs here only
    once that one has FINISHED; until then ``run`` refuses it and leaves it as it was."""
    db = ConfigDB(open_backend(embedded_db(tmp_path)))
    realtime, batch = "pb-realtime-20261201-00000", "pb-batch-20261201-00000"
    pb = ProcessingBlock(
        id=batch,
        workflow=WORKFLOW,
        dependencies=[Dependency(pb_id=realtime, type=["visibilities"])],
    )
    db.run(lambda txn: txn.create_pb(pb))
    with pytest.raises(RuntimeError, match=f"depends on {realtime} \\(no state\\), not FINISHED"):
        register(db, parameters.parse({"pb_id": batch}), {})
    db.run(lambda txn: txn.create_state(realtime, PBState(status="RUNNING")))
    with pytest.raises(RuntimeError, match=f"depends on {realtime} \\(RUNNING\\)"):
        register(db, parameters.parse({"pb_id": batch}), {})
    assert db.run(lambda txn: txn.get_state(batch)) is None  # left as it was
    db.run(lambda txn: txn.update_state(realtime, status="FINISHED"))
    register(db, parameters.parse({"pb_id": batch}), {})
    assert db.run(lambda txn: txn.get_state(batch)).status == "STARTING"
    db.close()


@pytest.mark.parametrize(
    "text", ["{", "[]", '{"files": []}', '"x"', '{"files": {}, "steps": {"simulate": 1}}']
)
def test_a_damaged_manifest_fails_the_step_naming_it(block, text):
    params, root = block
    buffers = Buffers.of(params, root)
    (buffers.vis / manifest.NAME).write_text(text)
    with pytest.raises(manifest.ManifestError, match=f"{buffers.vis / manifest.NAME}: unreadable"):
        runner.run_step("buffer-reserve", params.as_strings())


def test_step_timings_count_the_running_step_from_its_start(block):
    params, _ = block
    started = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=5)
    runner.record(params, "image", {"started": started.isoformat(), "phase": "Running"})
    runner.record(params, "simulate", {"phase": "Succeeded", "duration_s": 2.5})
    timings = step_timings(params.config_db, params.pb_id, running="image")
    assert timings["simulate"] == 2.5 and 5.0 <= timings["image"] < 7.0
    runner.record(params, "image", {"started": "yesterday", "phase": "Running"})
    assert step_timings(params.config_db, params.pb_id, running="image") == {}  # never fails


def test_a_step_whose_engine_is_gone_ends_at_once():
    """The parent-death signal is set once a step runs: a step whose engine died before that
    (``$BATCH_IMAGING_ENGINE_PID`` is not alive) ends at once, 143, as stopped; one whose
    engine lives runs, its parent or not (a shell the template wraps it in)."""
    code = "from steps.runner import take_signals; take_signals(); print('ran')"

    def step(engine: int) -> subprocess.CompletedProcess:
        env = {**os.environ, ENGINE_PID_ENV: str(engine)}
        command = [sys.executable, "-c", code]
        return subprocess.run(command, env=env, capture_output=True, text=True, check=False)

    assert step(os.getpid()).stdout == "ran\n"
    assert step(1).stdout == "ran\n"  # alive, though not its parent
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    gone = step(ended.pid)
    assert gone.returncode == 143 and gone.stdout == ""
    assert f"engine (pid {ended.pid}) that started this step is gone" in gone.stderr


def test_leftovers_are_the_processes_their_engine_started():
    """What a killed engine left is found by its pid and workflow name in their environment,
    whatever their process group (each step has its own)."""
    engine, name = 4_000_000, "batch-imaging-pb-left-20261202-00000"  # a made-up engine
    env = {**os.environ, "WORKFLOW_NAME": name, ENGINE_PID_ENV: str(engine)}
    code = "import time; print('up', flush=True); time.sleep(60)"
    left = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert left.stdout.readline() == b"up\n"  # past its exec: its environment is the one given
        assert run_leftovers(engine, name) == [left.pid]
        assert run_leftovers(engine + 1, name) == [] and run_leftovers(engine, "other") == []
    finally:
        left.kill()
        left.communicate()
    assert run_leftovers(engine, name) == []


def test_a_new_run_starts_an_empty_timeline(block, monkeypatch):
    """A run's step timeline and reason are its own: ``register`` (``batch-imaging run``)
    and the claim of a run of another uid (run-pb, Argo) start them empty, the claim keeping
    its own entry."""
    params, root = block
    runner.record(params, "calibrate", {"phase": "Failed", "message": "earlier run"})
    with ConfigDB(open_backend(params.config_db)) as db:
        db.run(lambda txn: txn.update_state(params.pb_id, status="FAILED", reason="earlier"))
        register(db, params, {"pb_id": params.pb_id}, uid="second", buffer_root=root)
        state = db.run(lambda txn: txn.get_state(params.pb_id))
        assert (state.steps, state.reason) == ({}, None)
        assert state.run["buffer_root"] == str(root.resolve())  # for `sdp status`'s hint
        runner.record(params, "calibrate", {"phase": "Failed", "message": "second run"})
        db.run(lambda txn: txn.update_state(params.pb_id, status="FAILED", reason="second"))
        monkeypatch.setenv("WORKFLOW_NAME", f"batch-imaging-{params.pb_id}")
        monkeypatch.setenv("WORKFLOW_UID", "third")
        stop = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))  # the DAG ends
        stop.start()
        assert runner.run_step("claim", params.as_strings()) == 0
        state = db.run(lambda txn: txn.get_state(params.pb_id))
    assert list(state.steps) == ["claim"] and state.reason is None
    assert (state.status, state.workflow_uid) == ("RUNNING", "third")


def test_a_run_no_controller_recorded_is_its_own_controller(tmp_path):
    """``argo submit`` of a block ``sdp assign`` created (no state, no run recorded): the
    claim creates the state and marks the resources available once the block's dependency
    has FINISHED, then sets RUNNING."""
    url = embedded_db(tmp_path)
    pb_id, before = "pb-argo-20261202-00001", "pb-argo-20261202-00000"
    with ConfigDB(open_backend(url)) as db:
        db.run(lambda txn: _assign_after(txn, pb_id, before, "RUNNING"))
        step = _argo_claim(tmp_path, url, pb_id)
        try:
            state = _wait(db, pb_id, lambda s: s is not None and s.status == "WAITING")
            time.sleep(1.5)  # its dependency runs: it waits
            state = db.run(lambda txn: txn.get_state(pb_id))
            assert state.status == "WAITING" and not state.resources_available
            assert not (tmp_path / "outputs" / "claimed").exists()
            db.run(lambda txn: txn.update_state(before, status="FINISHED"))
            state = _wait(db, pb_id, lambda s: s.status == "RUNNING")
            assert state.resources_available and state.workflow_uid == "argo-uid"
            assert (tmp_path / "outputs" / "claimed").read_text() == pb_id
            step.terminate()
            assert step.wait(timeout=30) == 0
        finally:
            step.kill()


def test_a_block_run_by_hand_follows_itself_and_is_its_own_controller(tmp_path):
    """``run-pb`` of a block no run was recorded for records its run, followed by itself (a
    bridge leaves it alone), and its claim marks the resources available (no controller
    does), then sets RUNNING."""
    url = embedded_db(tmp_path)
    pb_id = "pb-hand-20261202-00000"
    name = f"batch-imaging-{pb_id}"
    with ConfigDB(open_backend(url)) as db:
        pb = ProcessingBlock(id=pb_id, workflow=WORKFLOW, parameters={})
        db.run(lambda txn: txn.create_pb(pb))
        db.run(lambda txn: follow(txn, pb_id, name, tmp_path))
        state = db.run(lambda txn: txn.get_state(pb_id))
        assert state.status == "STARTING" and not state.resources_available
        assert state.run["name"] == name and state.run["bridge"]["pid"] == os.getpid()
        assert state.run["pid"] == os.getpid()
        step = _argo_claim(tmp_path, url, pb_id, name)
        try:
            state = _wait(db, pb_id, lambda s: s.status == "RUNNING")
            assert state.resources_available
            step.terminate()
            assert step.wait(timeout=30) == 0
        finally:
            step.kill()


def test_a_run_no_controller_recorded_fails_on_a_failed_dependency(tmp_path):
    """... and when a dependency FAILED (it will never finish), the claim fails at once,
    naming it, instead of waiting for the workflow's deadline."""
    url = embedded_db(tmp_path)
    pb_id, before = "pb-argo-20261202-00003", "pb-argo-20261202-00002"
    with ConfigDB(open_backend(url)) as db:
        db.run(lambda txn: _assign_after(txn, pb_id, before, "FAILED"))
    step = _argo_claim(tmp_path, url, pb_id, stderr=subprocess.PIPE)
    try:
        _, log = step.communicate(timeout=60)
    finally:
        step.kill()
    assert step.returncode == 1
    assert f"{pb_id} cannot start: dependency {before} is FAILED" in log


def _assign_after(txn, pb_id: str, before: str, status: str) -> None:
    """Blocks as ``sdp assign`` creates them: ``pb_id`` (no state) depending on ``before``,
    which is ``status``."""
    txn.create_pb(ProcessingBlock(id=before, workflow=WORKFLOW, parameters={}))
    txn.create_state(before, PBState(status=status))
    depends = [Dependency(pb_id=before, type=["visibilities"])]
    txn.create_pb(ProcessingBlock(id=pb_id, workflow=WORKFLOW, parameters={}, dependencies=depends))


def _argo_claim(
    tmp_path, url: str, pb_id: str, name: str = "batch-imaging-x7k2p", **popen
) -> subprocess.Popen:
    """The claim step as an Argo pod of a directly submitted workflow (``name``) runs it."""
    env = {
        **os.environ,
        "WORKFLOW_NAME": name,
        "WORKFLOW_UID": "argo-uid",
        runner.OUTPUTS_ENV: str(tmp_path / "outputs"),
        BUFFER_ROOT_ENV: str(tmp_path),
    }
    command = [sys.executable, "-m", "dag", "step", "claim", "-p", f"pb_id={pb_id}"]
    return subprocess.Popen([*command, "-p", f"config_db={url}"], env=env, text=True, **popen)


def _wait(db: ConfigDB, pb_id: str, done, timeout: float = 30.0) -> PBState:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = db.run(lambda txn: txn.get_state(pb_id))
        if done(state):
            return state
        time.sleep(0.1)
    raise AssertionError(f"{pb_id}: still {state}")


@pytest.mark.parametrize("taken", [False, True])
def test_a_claim_whose_lease_expired_claims_again_unless_taken(block, taken):
    """A lease whose refresh stalled past its TTL is gone, and the block's owner key with it:
    the claim takes the block again if nobody did meanwhile, and fails if somebody did."""
    params, _ = block
    step = _claim(params, _terminal)
    try:
        with ConfigDB(open_backend(params.config_db)) as db:
            _wait(db, params.pb_id, lambda s: s.status == "RUNNING")
            backend = open_backend(params.config_db)
            owner = wire_key(f"/pb/{params.pb_id}/owner")
            with backend._locked() as doc:  # the lease expires, as after a stalled refresh
                doc["leases"].pop(doc["keys"][owner]["lease"])
                backend._write(doc)
            if taken:
                lease = db.lease(30)
                assert db.run(lambda txn: txn.take_pb(params.pb_id, lease))
                assert step.wait(timeout=30) == 1
                assert "its lease expired and another process claimed it" in step.stderr.read()
                lease.revoke()
                return
            deadline = time.monotonic() + 30
            while db.run(lambda txn: txn.get_owner(params.pb_id)) is None:
                assert time.monotonic() < deadline, "the claim was not taken again"
                time.sleep(0.2)
            assert step.poll() is None  # still holding the block
        step.terminate()
        assert step.wait(timeout=30) == 0
        assert "expired; nobody took the block: claimed again" in step.stderr.read()
    finally:
        step.kill()


def test_a_step_process_ends_with_its_exit_handlers_run_and_its_output_flushed():
    program = (
        "import atexit, sys\n"
        "from steps.processes import end\n"
        "atexit.register(lambda: print('handler ran'))\n"
        "sys.stdout.write('buffered, ')\n"
        "end(3)\n"
        "print('not reached')\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (3, "buffered, handler ran\n"), done.stderr
