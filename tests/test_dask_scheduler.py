"""The heavy steps on an existing Dask cluster: real ``dask scheduler`` and ``dask worker``
processes on loopback, given to the workflow as ``dask_scheduler``."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dask.distributed import Client

from tests.cli import batch_imaging

SMALL = {
    "nfreqwin": 2,
    "ntimes": 2,
    "rmax": 300.0,
    "npixel": 128,
    "cellsize": 0.002,
    "niter": 50,
    "nmajor": 1,
    "global_solution": True,  # the coordinator's reduction of the windows' equations
}
BIN = Path(sys.executable).parent


@pytest.fixture
def cluster(tmp_path):
    scheduler_file = tmp_path / "scheduler.json"
    processes = [
        subprocess.Popen(
            [
                BIN / "dask",
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--dashboard-address",
                ":0",
                "--scheduler-file",
                str(scheduler_file),
            ],
            stderr=subprocess.DEVNULL,
        )
    ]
    deadline = time.monotonic() + 60
    while not scheduler_file.exists():
        assert time.monotonic() < deadline, "the scheduler did not start"
        time.sleep(0.1)
    address = json.loads(scheduler_file.read_text())["address"]
    processes.append(
        subprocess.Popen(
            [
                BIN / "dask",
                "worker",
                address,
                "--nworkers",
                "2",
                "--nthreads",
                "1",
                "--host",
                "127.0.0.1",
            ],
            stderr=subprocess.DEVNULL,
        )
    )
    with Client(address) as client:
        client.wait_for_workers(2, timeout=60)
    yield address
    for process in reversed(processes):
        process.terminate()
        process.wait(timeout=30)


def test_steps_run_on_the_given_scheduler(tmp_path, cluster):
    params = tmp_path / "params.json"
    params.write_text(json.dumps(SMALL))
    result = batch_imaging(
        "run", str(params), "--buffer-root", str(tmp_path / "b"), "-p", f"dask_scheduler={cluster}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Dask EE: scheduler {cluster}" in result.stderr
    assert "LocalCluster" not in result.stderr and "dashboard http" not in result.stderr
    with Client(cluster) as client:
        prefixes = client.run_on_scheduler(
            lambda dask_scheduler: list(dask_scheduler.task_prefixes)
        )
    for task in ("predict_window", "corrupt_window", "band_equations", "band_cycle", "finish_band"):
        assert task in prefixes, prefixes


def test_a_step_waits_for_the_workers_of_an_external_cluster():
    from dask.distributed import LocalCluster

    from steps.dask_ee import wait_for_workers

    with (
        LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as one,
        Client(one) as client,
    ):
        assert wait_for_workers(client, 1, 5.0) == 1
        assert wait_for_workers(client, 2, 0.5) == 1  # goes on with the one there is
        started = time.monotonic()  # none joins for settle_s: no need to wait any longer
        assert wait_for_workers(client, 4, 60.0, settle_s=1.0) == 1
        assert time.monotonic() - started < 10
    with (
        LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as none,
        Client(none) as client,
        pytest.raises(RuntimeError, match="no Dask worker joined"),
    ):
        wait_for_workers(client, 2, 0.5)


def _after(band: list, delay: float, shared, index: int) -> tuple[int, float]:
    time.sleep(delay)
    return index, float(shared.sum())


def test_the_mapper_hands_results_on_in_band_order_and_scatters_shared_arguments_once():
    """Later bands finish first; the results still come in band order, and an argument all
    bands share is one scattered object on the cluster, not one per band."""
    import numpy as np
    from dask.distributed import LocalCluster

    from steps.calibrate import dask_mapper

    shared = np.arange(4.0)
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=2, processes=False, dashboard_address=":0"
        ) as local,
        Client(local) as client,
    ):
        results = dask_mapper(client, [[], [], [], []])(
            _after, [(0.4 - 0.1 * i, shared, i) for i in range(4)]
        )
        arrays = [key for key in client.who_has() if str(key).startswith("ndarray")]
        assert len(arrays) == 1
        assert list(results) == [(i, 6.0) for i in range(4)]


def _kill_worker() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_bands_whose_scattered_inputs_die_with_a_worker_are_submitted_again(caplog):
    """Scattered data has no recipe: killing the worker that holds the argument every band
    shares cancels the bands' tasks; the mapper submits them again and the results are
    whole and in order."""
    import numpy as np
    from dask.distributed import LocalCluster

    from steps.calibrate import dask_mapper

    shared = np.arange(4.0)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as local,
        Client(local) as client,
    ):
        results = dask_mapper(client, [[], [], [], []])(
            _after, [(1.0, shared, i) for i in range(4)]
        )
        (holder,) = next(
            where for key, where in client.who_has().items() if str(key).startswith("ndarray")
        )
        with contextlib.suppress(Exception):  # the worker dies before it answers
            client.run(_kill_worker, workers=[holder])
        assert list(results) == [(i, 6.0) for i in range(4)]
    assert "lost its inputs with a worker; submitting it again" in caplog.text


def test_dask_logs_in_the_seeds_format() -> None:
    """Dask's own handlers in the processes a step starts (its workers, which do not set up
    logging) write LEVEL:name:message too."""
    worker = "import logging, distributed; logging.getLogger('distributed.worker').error('lost')"
    code = (
        "import subprocess, sys; from steps.log import setup; setup(); "
        f"subprocess.run([sys.executable, '-c', {worker!r}], check=True)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stderr.splitlines() == ["ERROR:distributed.worker:lost"]
