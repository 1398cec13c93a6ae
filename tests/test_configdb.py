"""Configuration database: both backends against the same behaviour, etcd being a real server."""

from __future__ import annotations

import datetime
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pydantic import ValidationError

from steps.configdb import (
    SBI,
    Backend,
    ConfigCollision,
    ConfigDB,
    ConfigDBUnavailable,
    ConfigNotFound,
    Deployment,
    EtcdBackend,
    FileBackend,
    PBState,
    PBStatus,
    ProcessingBlock,
    Transaction,
    connect,
    new_pb_id,
    open_backend,
)
from steps.configdb.backend import _EtcdWatch
from steps.configdb.entities import DEPLOYMENT_ID_RULE, PB_ID_RULE

if TYPE_CHECKING:
    from conftest import EtcdServer

REPO = Path(__file__).resolve().parents[1]
HOLDER = """
import sys, time
from steps.configdb import ConfigDB, open_backend
db = ConfigDB(open_backend(sys.argv[1]))
lease = db.lease(2)
assert db.run(lambda txn: txn.take_pb(sys.argv[2], lease))
print("claimed", flush=True)
time.sleep(60)
"""


def _pb(pb_id: str, **extra: object) -> ProcessingBlock:
    workflow = {"type": "batch", "id": "batch_imaging", "version": "0.2.0"}
    return ProcessingBlock.model_validate({"id": pb_id, "workflow": workflow, **extra})


@pytest.fixture(params=["etcd", "file"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return f"file://{tmp_path / 'configdb'}"
    server: EtcdServer = request.getfixturevalue("etcd_server")
    backend = EtcdBackend(port=server.client_port)
    backend.client.delete("\0", range_end="\0")
    backend.close()
    return server.url


@pytest.fixture
def db(db_url: str) -> Iterator[ConfigDB]:
    with ConfigDB(open_backend(db_url)) as config:
        yield config


def _raw(backend: Backend, key: str) -> str | None:
    """The value stored under a depth-tagged wire key, read beneath the API."""
    if isinstance(backend, EtcdBackend):
        values = backend.client.get(key)
        return values[0].decode() if values else None
    assert isinstance(backend, FileBackend)
    entry = json.loads(backend.store.read_text())["keys"].get(key)
    return entry and entry["value"]


def _wait_for(condition: Callable[[], object], timeout_s: float) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, "condition not met in time"
        time.sleep(0.05)
    return time.monotonic() - started


def test_crud_and_wire_format(db: ConfigDB) -> None:
    pb_id = "pb-test-20240101-00000"
    for txn in db.txn():
        txn.create_sbi(SBI(id="sbi-test-1", pb_batch=[pb_id]))
        txn.create_pb(_pb(pb_id, sbi_id="sbi-test-1", dependencies=[{"pb_id": "pb-rt-1"}]))
        txn.create_state(pb_id, PBState(status=PBStatus.STARTING))
        txn.create_deployment(Deployment(id=f"proc-{pb_id}-dask", type="helm", args={"n": 2}))

    state = db.run(lambda txn: txn.update_state(pb_id, status="WAITING", run_name="wf-abc"))
    assert state.status is PBStatus.WAITING and state.model_extra == {"run_name": "wf-abc"}
    db.run(lambda txn: txn.update_sbi("sbi-test-1", status="FINISHED"))

    txn = Transaction(db.backend)
    assert txn.get_pb(pb_id) == _pb(pb_id, sbi_id="sbi-test-1", dependencies=[{"pb_id": "pb-rt-1"}])
    assert txn.get_state(pb_id) == state
    assert txn.get_sbi("sbi-test-1").status == "FINISHED"
    assert txn.list_pbs() == [pb_id] and txn.list_pbs("pb-other") == []
    assert txn.list_sbis() == ["sbi-test-1"]
    assert txn.list_deployments() == [f"proc-{pb_id}-dask"]
    assert txn.get_deployment(f"proc-{pb_id}-dask").args == {"n": 2}
    assert txn.get_pb("pb-missing") is None and txn.get_state("pb-missing") is None

    raw_pb = _raw(db.backend, f"2/pb/{pb_id}")
    assert raw_pb == json.dumps(json.loads(raw_pb), indent=2, sort_keys=True)
    assert json.loads(_raw(db.backend, f"3/pb/{pb_id}/state"))["run_name"] == "wf-abc"
    assert _raw(db.backend, f"/pb/{pb_id}") is None
    assert _raw(db.backend, "2/sb/sbi-test-1") is not None

    with pytest.raises(ConfigCollision, match=pb_id):
        db.run(lambda txn: txn.create_pb(_pb(pb_id)))
    with pytest.raises(ConfigNotFound):
        db.run(lambda txn: txn.update_state("pb-missing", status="RUNNING"))
    assert db.run(lambda txn: txn.delete_deployment(f"proc-{pb_id}-dask"))
    assert db.run(lambda txn: txn.list_deployments()) == []


def test_invalid_ids_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as error:
        _pb("bad id!")
    assert "'bad id!'" in str(error.value) and PB_ID_RULE in str(error.value)
    with pytest.raises(ValueError, match=r"Processing block id 'x{65}'"):
        Transaction(FileBackend(tmp_path)).get_pb("x" * 65)
    with pytest.raises(ValidationError, match="Scheduling block instance id 'sbi/1'"):
        SBI(id="sbi/1")
    Deployment(id="d" * 96, type="local")
    with pytest.raises(ValidationError) as error:
        Deployment(id="d" * 97, type="helm")
    assert DEPLOYMENT_ID_RULE in str(error.value)
    with pytest.raises(ValidationError):
        Deployment(id="proc-x", type="docker")
    with pytest.raises(ValidationError):
        _pb("pb-x", dependencies=[{"pb_id": "pb x", "type": ["none"]}])


def test_new_pb_id() -> None:
    day = datetime.date(2024, 3, 5)
    assert new_pb_id("bridge", day, []) == "pb-bridge-20240305-00000"
    existing = ["pb-bridge-20240305-00000", "pb-bridge-20240305-00007", "pb-bridge-20240304-00042"]
    assert new_pb_id("bridge", day, existing) == "pb-bridge-20240305-00008"


def test_conflicting_transactions_retry(db: ConfigDB, db_url: str) -> None:
    db.run(lambda txn: txn.create_pb(_pb("pb-count")))
    db.run(lambda txn: txn.create_state("pb-count", PBState(status="RUNNING", counter=0)))

    def increment(txn: Transaction) -> None:
        state = txn.get_state("pb-count")
        txn.update_state("pb-count", counter=state.counter + 1)

    def worker() -> None:
        with ConfigDB(open_backend(db_url)) as mine:
            for _ in range(50):
                mine.run(increment)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert db.run(lambda txn: txn.get_state("pb-count")).counter == 100


def test_claim_with_lease(db: ConfigDB, db_url: str) -> None:
    db.run(lambda txn: txn.create_pb(_pb("pb-claim")))
    with ConfigDB(open_backend(db_url)) as other, db.lease(2) as lease, other.lease(2) as theirs:
        assert db.run(lambda txn: txn.take_pb("pb-claim", lease))
        assert not other.run(lambda txn: txn.take_pb("pb-claim", theirs))
        time.sleep(2.5)  # past the TTL: the keep-alive thread holds the claim
        owner = other.run(lambda txn: txn.get_owner("pb-claim"))
        assert owner is not None and owner.pid == os.getpid()
        assert not other.run(lambda txn: txn.take_pb("pb-claim", theirs))
        lease.revoke()
        assert other.run(lambda txn: txn.take_pb("pb-claim", theirs))
        assert other.run(lambda txn: txn.release_pb("pb-claim"))
    with pytest.raises(ConfigNotFound):
        db.run(lambda txn: txn.take_pb("pb-unknown", theirs))


def test_killed_holder_loses_claim(db: ConfigDB, db_url: str) -> None:
    db.run(lambda txn: txn.create_pb(_pb("pb-held")))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, db_url, "pb-held"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "claimed\n"
        assert db.run(lambda txn: txn.get_owner("pb-held")).pid == holder.pid
        with db.lease(2) as lease:
            assert not db.run(lambda txn: txn.take_pb("pb-held", lease))
            holder.send_signal(signal.SIGKILL)
            holder.wait()
            waited = _wait_for(lambda: db.run(lambda txn: txn.get_owner("pb-held")) is None, 6)
            assert waited < 4
            assert db.run(lambda txn: txn.take_pb("pb-held", lease))
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def _collect(db: ConfigDB) -> tuple[list[str], threading.Event, threading.Thread]:
    """Watch /pb/ on a thread; return the keys seen, a stop flag and the thread."""
    keys: list[str] = []
    stop = threading.Event()
    started = threading.Event()

    def loop() -> None:
        batches = db.watch_pbs(timeout_s=0.1)
        for batch in batches:
            started.set()
            keys.extend(event.key for event in batch)
            if stop.is_set():
                batches.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    assert started.wait(5)
    return keys, stop, thread


def test_watch_sees_new_pb(db: ConfigDB) -> None:
    db.run(lambda txn: txn.create_pb(_pb("pb-before")))
    keys, stop, thread = _collect(db)
    db.run(lambda txn: txn.create_pb(_pb("pb-after")))
    db.run(lambda txn: txn.create_state("pb-after", PBState(status="STARTING")))
    _wait_for(lambda: "/pb/pb-after/state" in keys, 5)
    assert "/pb/pb-after" in keys and "/pb/pb-before" not in keys
    stop.set()
    thread.join(5)
    assert not thread.is_alive()


def test_etcd_restart_reconnects_and_resumes_watch(etcd_server: EtcdServer) -> None:
    with ConfigDB(open_backend(etcd_server.url)) as db:
        db.run(lambda txn: txn.create_pb(_pb("pb-restart-1")))
        keys, stop, thread = _collect(db)
        etcd_server.stop()
        with pytest.raises(ConfigDBUnavailable, match=etcd_server.url):
            db.run(lambda txn: txn.get_pb("pb-restart-1"))
        etcd_server.start()
        assert db.run(lambda txn: txn.get_pb("pb-restart-1")) is not None
        db.run(lambda txn: txn.create_pb(_pb("pb-restart-2")))
        _wait_for(lambda: "/pb/pb-restart-2" in keys, 10)
        stop.set()
        thread.join(5)


def test_quiet_watch_is_no_outage(
    etcd_server: EtcdServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A watch on an idle etcd outlives its read timeout with no warning, and still sees
    what changes afterwards."""
    monkeypatch.setattr(_EtcdWatch, "READ_TIMEOUT_S", 0.2)
    with (
        ConfigDB(open_backend(etcd_server.url)) as db,
        caplog.at_level(logging.DEBUG, "batch_imaging"),
    ):
        keys, stop, thread = _collect(db)
        _wait_for(lambda: caplog.text.count("quiet for 0.2 s") >= 2, 5)
        db.run(lambda txn: txn.create_pb(_pb("pb-after-quiet")))
        _wait_for(lambda: "/pb/pb-after-quiet" in keys, 5)
        stop.set()
        thread.join(5)
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_unreachable_server(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"etcd://127.0.0.1:{sock.getsockname()[1]}"  # bound but not listening: refused
    with pytest.raises(ConfigDBUnavailable, match=url):
        open_backend(url)
    with caplog.at_level(logging.INFO, "batch_imaging"), pytest.raises(ConfigDBUnavailable):
        connect(url, retries=2, backoff_s=0.01)
    assert caplog.messages[0].startswith(f"Waiting for configuration database at {url}")
    assert len(caplog.messages) == 2


def test_open_backend_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(open_backend(str(tmp_path / "a")), FileBackend)
    assert isinstance(open_backend(f"file://{tmp_path}/b"), FileBackend)
    with pytest.raises(ValueError, match="etcd://HOST:PORT, file://PATH"):
        open_backend("http://127.0.0.1:2379")
    monkeypatch.setenv("SDP_CONFIG_BACKEND", "file")
    monkeypatch.setenv("SDP_CONFIG_PATH", str(tmp_path / "c"))
    assert open_backend().url == f"file://{tmp_path / 'c'}"
    monkeypatch.setenv("SDP_CONFIG_BACKEND", "memory")
    with pytest.raises(ValueError, match="'memory' is not supported"):
        open_backend()
