"""Disk full and a read-only buffer: a clear error, the PB FAILED, nothing corrupted left.

The buffers live on a small tmpfs mounted by the test (root is needed to mount; CI runs as
root), so the faults are real ENOSPC / EROFS errors from the kernel.
"""

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from steps import manifest, store
from steps.configdb import ConfigDB, open_backend
from tests import cli

SMALL = {
    "n_workers": 1,
    "nfreqwin": 2,
    "ntimes": 3,
    "rmax": 300.0,
    "npixel": 128,
    "cellsize": 0.002,
    "niter": 50,
    "nmajor": 1,
    "pb_id": "pb-fault-20261126-00000",
}
VIS = "buff-pb-fault-20261126-00000-vis"


@pytest.fixture
def tmpfs(tmp_path):
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def state(db: Path) -> dict:
    with ConfigDB(open_backend(str(db))) as config:
        found = config.run(lambda txn: txn.get_state(SMALL["pb_id"]))
    return found.model_dump() if found else {}


def start(tmp_path: Path, root: Path, db: Path) -> subprocess.Popen:
    params = tmp_path / "params.json"
    params.write_text(json.dumps(SMALL))
    return cli.start("run", str(params), "--buffer-root", str(root), "--config-db", str(db))


def test_disk_full_mid_run_fails_cleanly_and_resumes(tmp_path, tmpfs):
    db = tmp_path / "db"
    run = start(tmp_path, tmpfs, db)
    deadline = time.monotonic() + 120
    while state(db).get("steps", {}).get("corrupt", {}).get("phase") != "Running":
        assert run.poll() is None and time.monotonic() < deadline, "corrupt never started"
        time.sleep(0.02)
    free = os.statvfs(tmpfs)
    filler = tmpfs / "filler"
    # leave the corrupt step almost nothing
    with filler.open("wb") as handle, contextlib.suppress(OSError):
        handle.write(b"\0" * (free.f_bavail * free.f_frsize - 4096))
    _, log = run.communicate(timeout=300)
    assert run.returncode == 1, log[-2000:]
    assert "Traceback" not in log
    final = state(db)
    assert final["status"] == "FAILED"
    assert "space" in final["reason"].lower() or "GiB free" in final["reason"], final["reason"]
    again = f"run {tmp_path / 'params.json'} --buffer-root {tmpfs} -p pb_id={SMALL['pb_id']}"
    assert f"Run it again, reusing its complete steps: batch-imaging {again} --config" in log
    vis = tmpfs / VIS
    assert not (vis / "corrupted.zarr").exists(), "a partial store under the final name"
    store.open_store(vis / "model.zarr")  # the completed upstream product is intact
    assert manifest.verify(vis) == []

    filler.unlink()
    resumed = start(tmp_path, tmpfs, db)
    _, log = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, log[-2000:]
    assert "Step simulate: products complete" in log
    assert state(db)["status"] == "FINISHED"


def test_read_only_buffer_fails_cleanly(tmp_path, tmpfs):
    """A read-only buffer root is refused before anything is written; a read-only buffer (a
    volume mounted read-only) fails the step writing to it, and the block with it."""
    db = tmp_path / "db"
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    refused = start(tmp_path, tmpfs, db)
    _, log = refused.communicate(timeout=120)
    assert refused.returncode == 2, log[-2000:]
    assert f"--buffer-root {tmpfs} is not writable" in log
    assert not db.exists()
    root = tmp_path / "root"
    root.mkdir()
    (root / VIS).symlink_to(tmpfs)  # the visibility buffer's volume, read-only
    run = start(tmp_path, root, db)
    _, log = run.communicate(timeout=120)
    assert run.returncode == 1, log[-2000:]
    assert "Traceback" not in log
    final = state(db)
    assert final["status"] == "FAILED"
    assert "read-only" in (final["reason"] + log).lower()
