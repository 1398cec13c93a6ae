"""The SDP bridge against a real etcd, with bridges as separate processes as operators run them.

One etcd and one buffer root serve the whole module, and the tests run in file order as one
story: bridge "a" starts before etcd; the seed's SBI is assigned with bridges "a" and "b"
running; after the release both are SIGKILLed mid-run, and bridge "c" adopts the run; etcd is
restarted under it; the bad-input and failing-step cases run on bridge "c" while the seed's
run goes on; at last the seed's batch PB is FINISHED.  Submissions are counted from the logs:
every submission logs ``Submitted processing block <id>`` in its bridge's log, and every
started run logs ``Running processing block <id>`` in the run's log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import EtcdServer

from dag.cli import main
from dag.sdp import assign, read_sbi
from steps.configdb import ConfigDB, PBState, ProcessingBlock, open_backend
from steps.processes import process_alive

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "examples" / "sbi-mvp01-20200523-00000.json"
SBI_ID = "sbi-mvp01-20200523-00000"
REALTIME, BATCH = "pb-mvp01-20200523-00000", "pb-mvp01-20200523-00001"
SMALL = {
    "n_workers": 1,
    "nfreqwin": 2,
    "ntimes": 2,
    "rmax": 300,
    "npixel": 128,
    "cellsize": 0.002,
    "niter": 50,
    "nmajor": 1,
}
WORKFLOW = {"type": "batch", "id": "batch_imaging", "version": "0.2.0"}
REALTIME_WORKFLOW = {"type": "realtime", "id": "test_realtime", "version": "0.2.2"}
RUN_S = 120  # a tiny DAG run takes ~25 s on two cores; leave room for a loaded machine


class Site:
    """An etcd, a buffer root and the bridge processes started on them."""

    def __init__(self, etcd: EtcdServer, root: Path) -> None:
        self.etcd = etcd
        self.url = etcd.url
        self.root = root
        self.buffers = root / "buffers"
        self.bridges: dict[str, subprocess.Popen[bytes]] = {}

    def start_bridge(self, name: str) -> subprocess.Popen[bytes]:
        with open(self.log_path(name), "ab") as log:
            process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "dag", "bridge", "--config-db", self.url),
                    *("--engine", "local", "--buffer-root", str(self.buffers)),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        self.bridges[name] = process
        return process

    def log_path(self, name: str) -> Path:
        return self.root / f"bridge-{name}.log"

    def log(self, name: str) -> str:
        path = self.log_path(name)
        return path.read_text() if path.exists() else ""

    def wait_log(self, name: str, text: str, timeout_s: float = 30) -> None:
        wait_for(lambda: text in self.log(name), timeout_s, f"{text!r} in bridge {name}'s log")

    def state(self, pb_id: str) -> PBState | None:
        with ConfigDB(open_backend(self.url)) as db:
            return db.run(lambda txn: txn.get_state(pb_id))

    def owner(self, pb_id: str) -> Any:
        with ConfigDB(open_backend(self.url)) as db:
            return db.run(lambda txn: txn.get_owner(pb_id))

    def wait_status(self, pb_id: str, status: str, timeout_s: float = RUN_S) -> PBState:
        def reached() -> bool:
            state = self.state(pb_id)
            return state is not None and state.status == status

        wait_for(reached, timeout_s, f"{pb_id} {status} (is {self.state(pb_id)})")
        state = self.state(pb_id)
        assert state is not None
        return state

    def assign(self, sbi: dict[str, Any], *args: str) -> None:
        path = self.root / f"{sbi['id']}.json"
        path.write_text(json.dumps(sbi))
        assert main(["sdp", "assign", str(path), "--config-db", self.url, *args]) == 0

    def submissions(self, pb_id: str) -> int:
        marker = f"Submitted processing block {pb_id} "
        return sum(self.log(name).count(marker) for name in self.bridges)

    def runs_started(self, pb_id: str) -> int:
        log = self.buffers / ".runs" / f"batch-imaging-{pb_id}.log"
        return log.read_text().count(f"Running processing block {pb_id} ") if log.exists() else 0

    def close(self) -> None:
        for process in self.bridges.values():
            if process.poll() is None:
                process.terminate()
                process.wait(10)
        for log in (self.buffers / ".runs").glob("*.log"):  # runs still going: stop them
            state = self.state(log.stem.removeprefix("batch-imaging-"))
            run = getattr(state, "run", None) or {}
            if run.get("pid") and process_alive(run["pid"], run["name"]):
                os.killpg(run["pid"], signal.SIGKILL)
        self.etcd.stop()


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def status_table(capsys: pytest.CaptureFixture[str], site: Site) -> str:
    capsys.readouterr()
    assert main(["sdp", "status", "--config-db", site.url]) == 0
    return capsys.readouterr().out


def batch_pb(pb_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": pb_id, "workflow": WORKFLOW, "parameters": SMALL, **fields}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    import shutil

    binary = shutil.which("etcd")
    if binary is None:
        pytest.skip("etcd binary not found (install the Debian package etcd-server)")
    root = tmp_path_factory.mktemp("bridge")
    site = Site(EtcdServer(binary, root / "etcd"), root)
    yield site
    site.close()


def test_etcd_down_at_start_retries_with_backoff_then_connects(site: Site) -> None:
    bridge = site.start_bridge("a")
    site.wait_log("a", "retrying in 1.0 s")
    assert bridge.poll() is None, "the bridge must wait for etcd, not exit"
    log = site.log("a")
    assert f"Configuration database unavailable at {site.url}" in log
    assert log.index("retrying in 0.5 s") < log.index("retrying in 1.0 s")
    site.etcd.start()
    site.wait_log("a", f"Connected to {site.url}; watching processing blocks")


def test_assigned_batch_pb_waits_while_the_realtime_pb_runs(site: Site, capsys) -> None:
    site.start_bridge("b")  # two bridges from now on
    site.wait_log("b", "Connected to")
    args = [arg for name, value in SMALL.items() for arg in ("-p", f"{name}={value}")]
    assert main(["sdp", "assign", str(SEED), "--config-db", site.url, *args]) == 0

    site.wait_status(REALTIME, "RUNNING", 10)
    site.wait_status(BATCH, "WAITING", 10)
    time.sleep(2.5)  # several reconciliation rounds of both bridges
    state = site.state(BATCH)
    assert state is not None and state.status == "WAITING" and not state.resources_available
    table = status_table(capsys, site)
    assert f"{SBI_ID}  ACTIVE" in table
    assert "realtime:test_realtime:0.2.2  RUNNING" in table
    assert "batch:batch_imaging:0.1.1     WAITING" in table
    for name in ("a", "b"):
        site.wait_log(name, "INFO:batch_imaging:Waiting for resources to be available")


def test_release_starts_the_batch_pb_exactly_once_with_two_bridges(site: Site) -> None:
    assert main(["sdp", "release", SBI_ID, "--config-db", site.url]) == 0
    assert site.state(REALTIME).status == "FINISHED"  # type: ignore[union-attr]
    running = site.wait_status(BATCH, "RUNNING", 30)
    assert running.resources_available
    assert getattr(running, "workflow_run", None) == f"batch-imaging-{BATCH}"
    wait_for(lambda: site.owner(BATCH) is not None, 10, "the DAG's claim of the batch PB")
    wait_for(lambda: "pid" in site.state(BATCH).run, 10, "the run's pid")  # type: ignore[union-attr]
    assert site.submissions(BATCH) == 1 and site.runs_started(BATCH) == 1
    submitter = next(name for name in "ab" if "Submitted processing block" in site.log(name))
    assert "INFO:batch_imaging:Resources are available for processing block" in site.log(submitter)


def test_killed_bridges_restarted_adopt_the_run(site: Site) -> None:
    for name in "ab":
        site.bridges[name].send_signal(signal.SIGKILL)
        site.bridges[name].wait(10)
    run = site.state(BATCH).run  # type: ignore[union-attr]
    assert process_alive(run["pid"], run["name"]), "the run outlives its bridge"

    site.start_bridge("c")
    site.wait_log("c", f"Adopted workflow batch-imaging-{BATCH} of processing block {BATCH}")
    state = site.state(BATCH)
    assert state.status == "RUNNING"  # type: ignore[union-attr]
    assert state.run["bridge"]["pid"] == site.bridges["c"].pid  # type: ignore[union-attr]


def test_etcd_restarted_mid_run_the_bridge_carries_on(site: Site) -> None:
    def reserved() -> bool:
        return "buffer-reserve" in (getattr(site.state(BATCH), "steps", None) or {})

    wait_for(reserved, 30, "the buffer reservations")  # then simulate runs for seconds
    site.etcd.stop()
    site.wait_log("c", f"Configuration database unavailable at {site.url}", 15)
    site.etcd.start()
    site.wait_log("c", "is back; carrying on", 30)
    assert site.bridges["c"].poll() is None


def test_invalid_pbs_fail_with_a_reason_others_unaffected(site: Site) -> None:
    sbi = {
        "id": "sbi-invalid",
        "processing_blocks": [
            {"id": "pb-rt", "workflow": REALTIME_WORKFLOW, "parameters": {}},
            batch_pb("pb-ok", dependencies=[{"pb_id": "pb-rt", "type": ["none"]}]),
            batch_pb("pb-unknown", workflow={**WORKFLOW, "id": "no_such_workflow"}),
            batch_pb("pb-no-params", parameters={}),
            batch_pb("pb-bad-params", parameters={**SMALL, "npixel": 33, "nfreqwin": 0}),
            batch_pb("pb-ghost-dep", dependencies=[{"pb_id": "pb-nowhere", "type": []}]),
            batch_pb("pb-cycle-a", dependencies=[{"pb_id": "pb-cycle-b", "type": []}]),
            batch_pb("pb-cycle-b", dependencies=[{"pb_id": "pb-cycle-a", "type": []}]),
            batch_pb("pb-after-bad", dependencies=[{"pb_id": "pb-bad-params", "type": []}]),
        ],
    }
    path = site.root / "sbi-invalid.json"
    path.write_text(json.dumps(sbi))
    with ConfigDB(open_backend(site.url)) as db:  # as other tools may: `sdp assign` refuses it
        assign(db, *read_sbi(path, {}))
        # not an entity at all: written beneath the API
        db.backend.commit({}, {"/pb/pb-not-an-entity": json.dumps({"id": "pb-not-an-entity"})})
    expected = {
        "pb-unknown": "workflow batch:no_such_workflow:0.2.0 is not served here",
        "pb-no-params": "parameters missing",
        "pb-bad-params": "npixel = 33: must be even",
        "pb-ghost-dep": "dependency pb-nowhere does not exist",
        "pb-cycle-a": "cyclic dependency pb-cycle-a -> pb-cycle-b -> pb-cycle-a",
        "pb-cycle-b": "cyclic dependency pb-cycle-b -> pb-cycle-a -> pb-cycle-b",
        "pb-after-bad": "dependency pb-bad-params is FAILED",
        "pb-not-an-entity": "invalid processing block: workflow: Field required",
    }
    for pb_id, reason in expected.items():
        state = site.wait_status(pb_id, "FAILED", 10)
        assert reason in (state.reason or ""), (pb_id, state.reason)
    bad = site.state("pb-bad-params").reason or ""  # type: ignore[union-attr]
    assert bad.startswith("invalid parameters: ") and "nfreqwin = 0" in bad
    assert site.state("pb-rt").status == "RUNNING"  # type: ignore[union-attr]
    assert site.state("pb-ok").status == "WAITING"  # type: ignore[union-attr]
    assert site.bridges["c"].poll() is None
    assert "Processing block pb-unknown FAILED: workflow batch:no_such_workflow" in site.log("c")


def test_failing_step_fails_the_pb_keeps_buffers_and_releases_the_claim(site: Site) -> None:
    vis = site.buffers / "buff-pb-fail-vis"
    (vis / "sky_model.csv").mkdir(parents=True)  # simulate cannot write its sky model there
    site.assign({"id": "sbi-fail", "processing_blocks": [batch_pb("pb-fail")]})
    state = site.wait_status("pb-fail", "FAILED", 60)
    assert "step simulate failed" in (state.reason or ""), state.reason
    assert "sky_model.csv" in (state.reason or "")
    assert set(state.deployments) == {"buff-pb-fail-vis", "buff-pb-fail-img"}
    assert vis.is_dir() and (site.buffers / "buff-pb-fail-img").is_dir()
    wait_for(lambda: site.owner("pb-fail") is None, 15, "the claim of pb-fail to go")
    assert site.submissions("pb-fail") == 1
    site.wait_log("c", "Processing block pb-fail FAILED: workflow batch-imaging-pb-fail Failed")


def test_killed_run_fails_the_pb_and_is_not_resubmitted(site: Site) -> None:
    site.assign({"id": "sbi-lost", "processing_blocks": [batch_pb("pb-lost")]})
    site.wait_status("pb-lost", "RUNNING", 30)
    wait_for(lambda: "pid" in site.state("pb-lost").run, 10, "the run's pid")  # type: ignore[union-attr]
    os.kill(site.state("pb-lost").run["pid"], signal.SIGKILL)  # type: ignore[union-attr]
    state = site.wait_status("pb-lost", "FAILED", 20)
    assert "without recording a phase (killed?); not resubmitted" in (state.reason or "")
    wait_for(lambda: site.owner("pb-lost") is None, 15, "the killed run's claim to go")
    time.sleep(1.5)  # more reconciliation rounds: still one submission
    assert site.submissions("pb-lost") == 1 and site.runs_started("pb-lost") == 1


def test_a_block_claimed_by_hand_is_left_to_its_claim(site: Site) -> None:
    """A batch block another process has claimed (``run-pb`` by hand, ``argo submit``) with
    no run recorded is not submitted, neither while it is claimed nor once it has ended."""
    pb = ProcessingBlock.model_validate(batch_pb("pb-by-hand"))
    with ConfigDB(open_backend(site.url)) as db:
        lease = db.lease(30)

        def create(txn) -> None:
            txn.create_pb(pb)
            assert txn.take_pb(pb.id, lease)

        db.run(create)
        time.sleep(2.5)  # several reconciliation rounds
        assert site.submissions(pb.id) == 0
        db.run(lambda txn: txn.create_state(pb.id, PBState(status="FINISHED")))
        lease.revoke()
        time.sleep(2.5)
    assert site.submissions(pb.id) == 0
    assert site.state(pb.id).status == "FINISHED"  # type: ignore[union-attr]


def test_batch_pb_finishes_with_images_in_its_buffer(site: Site, capsys) -> None:
    finished = site.wait_status(BATCH, "FINISHED")
    image = site.buffers / f"buff-{BATCH}-img"
    for product in ("restored.fits", "residual.fits", "deconvolved.fits"):
        assert (image / product).is_file(), product
    assert set(finished.deployments) == {f"buff-{BATCH}-vis", f"buff-{BATCH}-img"}
    assert site.owner(BATCH) is None, "the claim is released at the end"
    assert site.submissions(BATCH) == 1 and site.runs_started(BATCH) == 1
    assert f"Submitted processing block {BATCH}" not in site.log("c")

    run_log = (site.buffers / ".runs" / f"batch-imaging-{BATCH}.log").read_text()
    seed_lines = [
        f"INFO:batch_imaging:Claimed processing block {BATCH}",
        "INFO:batch_imaging:Waiting for resources to be available",
        "INFO:batch_imaging:Resources are available",
        "INFO:batch_imaging:Creating buffer reservations",
        "INFO:batch_imaging:Running simulation pipeline",
        "INFO:batch_imaging:Running ICAL pipeline",
        "INFO:batch_imaging:Finished processing",
    ]
    positions = [run_log.index(line) for line in seed_lines]
    assert positions == sorted(positions)
    site.wait_log("c", "INFO:batch_imaging:Finished processing", 10)  # copied by its bridge

    table = status_table(capsys, site)
    assert f"{SBI_ID}  FINISHED" in table
    assert f"FINISHED  -      batch-imaging-{BATCH}  buff-{BATCH}-img,buff-{BATCH}-vis" in table
    site.bridges["c"].terminate()
    assert site.bridges["c"].wait(10) == 0
    assert "Bridge stopped" in site.log("c")


def test_bridge_on_the_embedded_store(tmp_path: Path) -> None:
    store = tmp_path / "config"
    log = tmp_path / "bridge.log"
    with open(log, "wb") as output:
        bridge = subprocess.Popen(
            [
                *(sys.executable, "-m", "dag", "bridge", "--config-db", str(store)),
                *("--buffer-root", str(tmp_path / "buffers")),
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    try:
        sbi = {
            "id": "sbi-embedded",
            "processing_blocks": [
                {"id": "pb-rt", "workflow": REALTIME_WORKFLOW, "parameters": {}},
                batch_pb("pb-batch", dependencies=[{"pb_id": "pb-rt", "type": ["none"]}]),
                batch_pb("pb-unknown", workflow={**WORKFLOW, "id": "no_such_workflow"}),
            ],
        }
        path = tmp_path / "sbi.json"
        path.write_text(json.dumps(sbi))
        assert main(["sdp", "assign", str(path), "--config-db", str(store)]) == 0
        with ConfigDB(open_backend(str(store))) as db:

            def statuses() -> dict[str, str]:
                states = {
                    pb: db.run(lambda txn, pb=pb: txn.get_state(pb))
                    for pb in ("pb-rt", "pb-batch", "pb-unknown")
                }
                return {pb: state.status.value for pb, state in states.items() if state}

            expected = {"pb-rt": "RUNNING", "pb-batch": "WAITING", "pb-unknown": "FAILED"}
            wait_for(lambda: statuses() == expected, 20, f"{expected} (log: {log.read_text()})")
    finally:  # Ctrl-C, as SIGTERM (the story's bridge "c"), is a graceful stop: exit 0
        bridge.send_signal(signal.SIGINT)
        assert bridge.wait(10) == 0
    assert "Bridge stopped" in log.read_text()
