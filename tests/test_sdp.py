"""Operator commands ``sdp assign|release|status`` on the embedded store and on a real etcd."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dag.cli import main
from dag.runner import WORKFLOW, follow, gone_run
from dag.sdp import read_sbi
from steps.configdb import ConfigDB, EtcdBackend, PBState, PBStatus, open_backend
from steps.configdb.entities import ProcessingBlock
from steps.processes import started_at

if TYPE_CHECKING:
    from conftest import EtcdServer

SEED = Path(__file__).resolve().parents[1] / "examples" / "sbi-mvp01-20200523-00000.json"
SBI_ID = "sbi-mvp01-20200523-00000"
REALTIME, BATCH = "pb-mvp01-20200523-00000", "pb-mvp01-20200523-00001"


def sdp(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["sdp", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_seed_sbi_is_read_verbatim() -> None:
    sbi, pbs = read_sbi(SEED, {})
    assert sbi.id == SBI_ID and sbi.status == "ACTIVE" and sbi.max_length == 21600.0
    assert sbi.scan_types[0]["id"] == "science"
    assert (sbi.pb_realtime, sbi.pb_batch) == ([REALTIME], [BATCH])
    assert not hasattr(sbi, "processing_blocks")
    realtime, batch = pbs
    assert realtime.workflow.id == "test_realtime" and realtime.sbi_id == SBI_ID
    assert batch.workflow.id == "batch_imaging" and batch.workflow.version == "0.1.1"
    assert batch.parameters["buffer_vis"] == "buff-pb-mvp01-20200523-00001-vis"
    assert [d.pb_id for d in batch.dependencies] == [REALTIME]
    assert batch.dependencies[0].type == ["none"]


def test_overrides_go_into_batch_pbs_only() -> None:
    _, (realtime, batch) = read_sbi(SEED, {"npixel": 128, "n_workers": 1})
    assert realtime.parameters == {}
    assert batch.parameters["npixel"] == 128 and batch.parameters["n_workers"] == 1
    assert batch.parameters["nfreqwin"] == 8


def test_assign_status_release(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "config")
    code, out, _ = sdp(capsys, "assign", str(SEED), "--config-db", store, "-p", "npixel=128")
    assert code == 0 and out == f"Assigned {SBI_ID}: processing blocks {REALTIME},{BATCH}\n"
    code, _, err = sdp(capsys, "assign", str(SEED), "--config-db", store)
    assert code == 2 and f"cannot assign {SBI_ID}: /sb/{SBI_ID} already exists" in err

    with ConfigDB(open_backend(store)) as db:
        assert db.run(lambda txn: txn.get_pb(BATCH)).parameters["npixel"] == 128
        lease = db.lease(10)
        for txn in db.txn():
            txn.create_state(REALTIME, PBState(status="RUNNING"))
            buffers = {"buff-x-img": {"type": "buffer", "path": "/buffer/buff-x-img"}}
            state = PBState(status="RUNNING", deployments=buffers, workflow_run="batch-imaging-x")
            txn.create_state(BATCH, state)
            txn.take_pb(BATCH, lease)
        code, out, _ = sdp(capsys, "status", "--config-db", store)
        lease.revoke()
    lines = out.splitlines()
    assert lines[0].split() == ["SBI", "STATUS", "REAL-TIME", "PBS", "BATCH", "PBS"]
    assert lines[1].split() == [SBI_ID, "ACTIVE", REALTIME, BATCH]
    header = ["PB", "SBI", "WORKFLOW", "STATUS", "OWNER", "WORKFLOW RUN", "BUFFERS"]
    assert re.split(r"\s{2,}", lines[3]) == header
    assert lines[4].split() == [
        *(REALTIME, SBI_ID, "realtime:test_realtime:0.2.2", "RUNNING", "-", "-", "-")
    ]
    owner = f"{socket.gethostname()}:{os.getpid()}"
    assert lines[5].split() == [
        *(BATCH, SBI_ID, "batch:batch_imaging:0.1.1", "RUNNING", owner, "batch-imaging-x"),
        "buff-x-img",
    ]

    code, out, _ = sdp(capsys, "release", SBI_ID, "--config-db", store)
    assert (
        code == 0
        and out == f"Released {SBI_ID}: real-time processing blocks FINISHED: {REALTIME}\n"
    )
    with ConfigDB(open_backend(store)) as db:
        assert db.run(lambda txn: txn.get_state(REALTIME)).status == PBStatus.FINISHED
        assert db.run(lambda txn: txn.get_state(BATCH)).status == PBStatus.RUNNING
        assert db.run(lambda txn: txn.get_sbi(SBI_ID)).status == "FINISHED"
        db.run(lambda txn: txn.update_state(BATCH, status="FAILED", reason="step image failed"))
    code, out, _ = sdp(capsys, "status", "--config-db", store)
    assert out.endswith(f"\n\n{BATCH}: step image failed\n")
    assert sdp(capsys, "release", "sbi-unknown", "--config-db", store)[0] == 2  # bad input


def test_status_says_when_a_local_run_is_gone(tmp_path: Path, capsys) -> None:
    """A run killed outright (SIGKILL) cannot record its end: status says its process is
    gone instead of showing the block RUNNING as if nothing happened, and how to run it again
    on the same buffers."""
    store = str(tmp_path / "config")
    assert sdp(capsys, "assign", str(SEED), "--config-db", store)[0] == 0
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    running = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "batch-imaging-x"]
    )
    with ConfigDB(open_backend(store)) as db:
        for pid, pb in ((ended.pid, BATCH), (running.pid, REALTIME)):
            run = {"hostname": socket.gethostname(), "pid": pid, "name": "batch-imaging-x"}
            run["started_at"] = started_at(pid) or 1.0
            run["buffer_root"] = str(tmp_path / "buffers")  # where its buffers are
            db.run(
                lambda txn, pb=pb, run=run: txn.create_state(pb, PBState(status="RUNNING", run=run))
            )
    live = {"hostname": socket.gethostname(), "pid": running.pid, "name": "batch-imaging-x"}
    try:
        out = sdp(capsys, "status", "--config-db", store)[1]
        assert gone_run(PBState(status="RUNNING", run={**live, "started_at": 1.0}))  # reused pid
        assert gone_run(PBState(status="RUNNING", run=live)) is None  # a bridge's: by its name
    finally:
        running.kill()
    assert f"{BATCH}: RUNNING, but its run (process {ended.pid} on " in out
    again = f"run-pb {BATCH} --config-db {Path(store).resolve()} --buffer-root {tmp_path}/buffers`"
    assert f"`batch-imaging {again} runs" in out
    assert f"{REALTIME}: RUNNING" not in out  # its run's process lives


def test_release_before_the_bridge_saw_the_realtime_pb(tmp_path: Path, capsys) -> None:
    store = str(tmp_path / "config")
    assert sdp(capsys, "assign", str(SEED), "--config-db", store)[0] == 0
    assert sdp(capsys, "release", SBI_ID, "--config-db", store)[0] == 0
    with ConfigDB(open_backend(store)) as db:
        assert db.run(lambda txn: txn.get_state(REALTIME)).status == PBStatus.FINISHED
        assert db.run(lambda txn: txn.get_state(BATCH)) is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "invalid JSON at line 1"),
        ("[]", "an SBI must be a JSON object"),
        (json.dumps({"id": "sbi x"}), "Scheduling block instance id 'sbi x' does not match"),
        (
            json.dumps({"id": "sbi-1", "processing_blocks": [{"id": "pb-1"}]}),
            "workflow: required but missing",
        ),
        (
            json.dumps(
                {
                    "id": "sbi-1",
                    "processing_blocks": [
                        {"id": "pb-1", "workflow": {"type": "batch", "id": "x", "version": "1"}},
                        {"id": "pb-1", "workflow": {"type": "batch", "id": "x", "version": "1"}},
                    ],
                }
            ),
            "duplicate processing block id(s): pb-1",
        ),
    ],
)
def test_invalid_sbi_files(tmp_path: Path, capsys, content: str, message: str) -> None:
    path = tmp_path / "sbi.json"
    path.write_text(content)
    code, _, err = sdp(capsys, "assign", str(path), "--config-db", str(tmp_path / "config"))
    assert code == 2 and message in err
    assert not (tmp_path / "config" / "store.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-p", "nfreqwin=abc"], f"processing block {BATCH}: invalid parameters: nfreqwin = 'abc'"),
        (["-p", "bogus=1"], f"processing block {BATCH}: invalid parameters: bogus: unknown key"),
        (["-p", "npixel=33"], "npixel = 33: must be even"),
    ],
)
def test_assign_refuses_parameters_a_run_would(
    tmp_path: Path, capsys, args: list[str], message: str
) -> None:
    """Parameters the bridge would fail the block for are bad input here, and nothing is
    written: the corrected assign then succeeds."""
    store = str(tmp_path / "config")
    code, out, err = sdp(capsys, "assign", str(SEED), "--config-db", store, *args)
    assert code == 2 and not out and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "config").exists()
    assert sdp(capsys, "assign", str(SEED), "--config-db", store)[0] == 0


def test_assign_refuses_a_batch_pb_without_parameters(tmp_path: Path, capsys) -> None:
    sbi = json.loads(SEED.read_text())
    sbi["processing_blocks"][1]["parameters"] = {}
    path = tmp_path / "sbi.json"
    path.write_text(json.dumps(sbi))
    code, _, err = sdp(capsys, "assign", str(path), "--config-db", str(tmp_path / "config"))
    assert code == 2 and f"processing block {BATCH}: parameters missing" in err


def test_a_mistyped_store_is_not_created(tmp_path: Path, capsys) -> None:
    """Commands that read (or update) a store refuse a path with none; assign creates it."""
    missing = tmp_path / "no-such-store"
    for argv in (["sdp", "status"], ["sdp", "release", SBI_ID], ["outputs"], ["run-pb", BATCH]):
        capsys.readouterr()
        code = main([*argv, "--config-db", str(missing)])
        err = capsys.readouterr().err
        assert code == 2 and f"no configuration store at {missing}:" in err, argv
        assert not missing.exists(), argv
    assert sdp(capsys, "assign", str(SEED), "--config-db", str(missing))[0] == 0


def test_config_db_defaults_to_sdp_config_host_and_port(
    etcd_server: EtcdServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = EtcdBackend(port=etcd_server.client_port)
    backend.client.delete("\0", range_end="\0")
    backend.close()
    monkeypatch.delenv("SDP_CONFIG_BACKEND", raising=False)
    monkeypatch.setenv("SDP_CONFIG_HOST", "127.0.0.1")
    monkeypatch.setenv("SDP_CONFIG_PORT", str(etcd_server.client_port))
    assert sdp(capsys, "assign", str(SEED))[0] == 0
    code, out, _ = sdp(capsys, "status")
    assert code == 0 and f"{SBI_ID}  ACTIVE" in out
    with ConfigDB(open_backend(etcd_server.url)) as db:
        assert db.run(lambda txn: txn.list_pbs()) == [REALTIME, BATCH]


def test_unreachable_config_db_is_a_clear_error(capsys, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"etcd://127.0.0.1:{sock.getsockname()[1]}"
    assert sdp(capsys, "status", "--config-db", url)[0] == 1
    assert f"Configuration database unavailable at {url}" in caplog.text


def test_a_run_started_again_is_seen_running(tmp_path: Path) -> None:
    """``run-pb`` records its own process in the run it runs again (the hint above), so that
    status no longer calls that run gone while it runs; a run of another name is left as
    it is."""
    store = str(tmp_path / "config")
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    run = {"hostname": socket.gethostname(), "pid": ended.pid, "name": "batch-imaging-x"}
    with ConfigDB(open_backend(store)) as db:
        for pb in (BATCH, REALTIME):
            db.run(
                lambda txn, pb=pb: txn.create_pb(
                    ProcessingBlock(id=pb, workflow=WORKFLOW, parameters={})
                )
            )
            db.run(lambda txn, pb=pb: txn.create_state(pb, PBState(status="FAILED", run=run)))
        db.run(lambda txn: follow(txn, BATCH, "batch-imaging-x", tmp_path))
        db.run(lambda txn: follow(txn, REALTIME, "batch-imaging-y", tmp_path))
        again = db.run(lambda txn: txn.get_state(BATCH))
        other = db.run(lambda txn: txn.get_state(REALTIME))
    assert gone_run(again.model_copy(update={"status": "RUNNING"})) is None
    assert (again.run["pid"], again.run["buffer_root"]) == (os.getpid(), str(tmp_path.resolve()))
    assert other.run == run
