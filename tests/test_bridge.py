"""The SDP bridge against a real etcd, with bridges as separate processes as operators run them.

One etcd and one buffer root serve the whole module; the tests run in file order and share
the bridges they leave running (bridge "a" lives until the kill test).  Submissions are
counted from the logs: every submission logs ``Submitted processing block <id>`` in its
bridge's log, and every started run logs ``Running processing block <id>`` in the run's log.
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
from dag.runner import process_alive
from steps.configdb import ConfigDB, PBState, open_backend

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


def test_seed_scenario_with_two_bridges(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.start_bridge("b")
    site.wait_log("b", "Connected to")
    args = [arg for name, value in SMALL.items() for arg in ("-p", f"{name}={value}")]
    assert main(["sdp", "assign", str(SEED), "--config-db", site.url, *args]) == 0

    site.wait_status(REALTIME, "RUNNING", 10)
    site.wait_status(BATCH, "WAITING", 10)
    time.sleep(2.5)  # several reconciliation rounds of both bridges
    state = site.state(BATCH)
    assert state is not None and state.status == "WAITING" and not state.resources_available
    capsys.readouterr()
    assert main(["sdp", "status", "--config-db", site.url]) == 0
    table = capsys.readouterr().out
    assert f"{SBI_ID}  ACTIVE" in table
    assert "realtime:test_realtime:0.2.2  RUNNING" in table
    assert "batch:batch_imaging:0.1.1     WAITING" in table

    assert main(["sdp", "release", SBI_ID, "--config-db", site.url]) == 0
    assert site.state(REALTIME).status == "FINISHED"  # type: ignore[union-attr]
    running = site.wait_status(BATCH, "RUNNING", 30)
    assert running.resources_available
    finished = site.wait_status(BATCH, "FINISHED")

    image = site.buffers / "buff-pb-mvp01-20200523-00001-img"
    for product in ("restored.fits", "residual.fits", "deconvolved.fits"):
        assert (image / product).is_file(), product
    assert set(finished.deployments) == {
        "buff-pb-mvp01-20200523-00001-vis",
        "buff-pb-mvp01-20200523-00001-img",
    }
    assert getattr(finished, "workflow_run", None) == f"batch-imaging-{BATCH}"
    assert site.owner(BATCH) is None, "the claim is released at the end"
    assert site.submissions(BATCH) == 1 and site.runs_started(BATCH) == 1
    submitter = next(
        name for name in site.bridges if "Submitted processing block" in site.log(name)
    )
    wait_for(lambda: "Finished processing" in site.log(submitter), 10, "the run's last lines")
    log = site.log(submitter)
    seed_lines = [
        "INFO:batch_imaging:Waiting for resources to be available",
        "INFO:batch_imaging:Resources are available",
        f"INFO:batch_imaging:Claimed processing block {BATCH}",
        "INFO:batch_imaging:Finished processing",
    ]
    for line in seed_lines:
        assert line in log, line

    capsys.readouterr()
    assert main(["sdp", "status", "--config-db", site.url]) == 0
    table = capsys.readouterr().out
    assert f"{SBI_ID}  FINISHED" in table
    assert f"FINISHED  -      batch-imaging-{BATCH}  buff-{BATCH}-img,buff-{BATCH}-vis" in table

    site.bridges["b"].terminate()
    assert site.bridges["b"].wait(10) == 0
    assert "Bridge stopped" in site.log("b")


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
    site.assign(sbi)
    with ConfigDB(open_backend(site.url)) as db:  # not an entity at all: written beneath the API
        db.backend.commit({}, {"/pb/pb-not-an-entity": json.dumps({"id": "pb-not-an-entity"})})
    expected = {
        "pb-unknown": "workflow batch:no_such_workflow:0.2.0 is not served here",
        "pb-no-params": "parameters missing",
        "pb-bad-params": "npixel = 33: must be even",
        "pb-ghost-dep": "dependency pb-nowhere does not exist",
        "pb-cycle-a": "cyclic dependency pb-cycle-a -> pb-cycle-b -> pb-cycle-a",
        "pb-cycle-b": "cyclic dependency pb-cycle-b -> pb-cycle-a -> pb-cycle-b",
        "pb-after-bad": "dependency pb-bad-params is FAILED",
        "pb-not-an-entity": "invalid processing block: ",
    }
    for pb_id, reason in expected.items():
        state = site.wait_status(pb_id, "FAILED", 10)
        assert reason in (state.reason or ""), (pb_id, state.reason)
    bad = site.state("pb-bad-params").reason or ""  # type: ignore[union-attr]
    assert bad.startswith("invalid parameters: ") and "nfreqwin = 0" in bad
    assert site.state("pb-rt").status == "RUNNING"  # type: ignore[union-attr]
    assert site.state("pb-ok").status == "WAITING"  # type: ignore[union-attr]
    assert site.bridges["a"].poll() is None
    assert "Processing block pb-unknown FAILED: workflow batch:no_such_workflow" in site.log("a")


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
    site.wait_log("a", "Processing block pb-fail FAILED: workflow batch-imaging-pb-fail Failed")


def test_bridge_killed_mid_run_adopts_and_survives_etcd_restart(site: Site) -> None:
    site.assign({"id": "sbi-adopt", "processing_blocks": [batch_pb("pb-adopt")]})
    site.wait_status("pb-adopt", "RUNNING", 30)
    site.bridges["a"].send_signal(signal.SIGKILL)
    site.bridges["a"].wait(10)
    assert site.state("pb-adopt").status == "RUNNING", "the run outlives its bridge"  # type: ignore[union-attr]

    site.start_bridge("c")
    site.wait_log("c", "Adopted workflow batch-imaging-pb-adopt of processing block pb-adopt")
    site.etcd.stop()  # restarted while bridge c follows the run
    site.wait_log("c", f"Configuration database unavailable at {site.url}", 15)
    site.etcd.start()
    site.wait_log("c", "is back; carrying on", 30)

    state = site.wait_status("pb-adopt", "FINISHED")
    assert (site.buffers / "buff-pb-adopt-img" / "restored.fits").is_file()
    assert site.submissions("pb-adopt") == 1 and site.runs_started("pb-adopt") == 1
    assert "Submitted processing block pb-adopt" in site.log("a")
    assert "Submitted processing block" not in site.log("c")
    assert state.run["bridge"]["pid"] == site.bridges["c"].pid  # type: ignore[attr-defined]
    assert site.bridges["c"].poll() is None
