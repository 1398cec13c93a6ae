"""Scale: time-chunked stores, per-(window, time chunk) tasks, and the thread rule."""

import json
import logging
import os
import subprocess
import sys
import urllib.request

import dask
import numpy as np
import zarr

from steps import corrupt, simulate, store
from steps.dask_ee import engine, local_workers, map_tasks, threads_per_worker


def layout(ntime: int = 5, nfreq: int = 2) -> store.Layout:
    rng = np.random.default_rng(3)
    return store.Layout(
        times=5e9 + 60.0 * np.arange(ntime),
        frequencies=1e8 + 1e6 * np.arange(nfreq),
        channel_width=1e6,
        antenna1=np.array([0, 0, 1]),
        antenna2=np.array([1, 2, 2]),
        antenna_names=["s0", "s1", "s2"],
        uvw=rng.normal(scale=100.0, size=(ntime, 3, 3)),
        integration_time=60.0,
    )


def test_time_chunks_cover_the_times_and_default_to_whole_small_stores(tmp_path):
    tmp = store.create(tmp_path / "v.zarr", layout(), {"antenna_names": ["s0", "s1", "s2"]}, 2)
    group = zarr.open_group(tmp)
    assert group["VISIBILITY"].chunks == (2, 3, 1, 1)
    assert group["UVW"].chunks == (2, 3, 3)
    assert store.time_chunks(tmp) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    whole = store.create(tmp_path / "w.zarr", layout(), {"antenna_names": ["s0", "s1", "s2"]})
    assert store.time_chunks(whole) == [slice(0, 5)]
    per_time = store.CHUNK_BYTES // 8
    assert store.default_time_chunk(100, per_time // 10) == 10
    assert store.default_time_chunk(100, per_time * 4) == 1


def test_chunked_simulate_and_corrupt_match_whole_windows(tmp_path):
    """Per-(window, time chunk) tasks give the same bits as one task per window."""
    attrs = {"antenna_names": ["s0", "s1", "s2"]}
    lmn = np.array([[0.01, -0.02], [0.02, 0.005], [0.0, 0.0]])
    lmn[2] = np.sqrt(1 - lmn[0] ** 2 - lmn[1] ** 2)
    flux = np.array([[1.0, 0.9], [2.0, 1.8]])
    shape = np.zeros((2, 3))
    phases = np.random.default_rng(4).normal(size=(2, 5, 3))
    gains = np.exp(1j * phases)
    out = {}
    for chunk in (2, 5):
        model = store.create(tmp_path / f"m{chunk}.zarr", layout(), attrs, chunk)
        keys = [(i, t) for i in range(2) for t in store.time_chunks(model)]
        for key in keys:
            simulate.predict_window(*key, model, lmn, flux, shape)
        target = store.create(tmp_path / f"c{chunk}.zarr", layout(), attrs, chunk)
        for key in keys:
            corrupt.corrupt_window(*key, model, target, gains)
        out[chunk] = [store.read_window(target, i)[0] for i in range(2)]
    for a, b in zip(out[2], out[5], strict=True):
        np.testing.assert_array_equal(a, b)
        assert np.all(a != 0)


def _thread_env() -> tuple[str | None, int]:
    from distributed import get_worker

    return os.environ.get("OMP_NUM_THREADS"), get_worker().state.nthreads


def test_workers_never_exceed_the_cores():
    cores = os.cpu_count() or 1
    for n in (1, 2, 3, 4, 16):
        assert 1 <= local_workers(n) <= min(n, cores)
        assert local_workers(n) * threads_per_worker(n) <= cores
    with engine(2, [__name__]) as client:
        results = map_tasks(client, "env", lambda _: _thread_env(), [(0,), (1,)])
    threads = threads_per_worker(2)
    assert results == [(str(threads), threads)] * 2


def test_a_worker_dying_while_the_cluster_starts_only_restarts_it(tmp_path, caplog):
    """A worker process that dies before it joins (here: on its first start, through a Dask
    worker preload) fails that start; the cluster is started again and the step goes on."""
    died = tmp_path / "died"
    preload = tmp_path / "die_once.py"
    preload.write_text(
        f"import os, pathlib\nif not pathlib.Path({str(died)!r}).exists():\n"
        f"    pathlib.Path({str(died)!r}).touch()\n    os._exit(1)\n"
    )
    caplog.set_level(logging.INFO, logger="batch_imaging")
    with (
        dask.config.set({"distributed.worker.preload": [str(preload)]}),
        engine(2) as client,
    ):
        assert map_tasks(client, "w", lambda _: os.getpid(), [(0,)])[0] != os.getpid()
    assert died.exists()
    assert "the cluster failed to start (Nanny failed to start.); starting it again" in caplog.text


def test_a_pods_cpu_request_caps_the_cores(monkeypatch):
    """Kubernetes sets no CPU affinity for a request: ``PYTHON_CPU_COUNT`` (the template
    passes ``requests.cpu``) caps the workers x threads, never above the affinity."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(64)))  # a 64-core node
    monkeypatch.setenv("PYTHON_CPU_COUNT", "2")
    assert (local_workers(4), threads_per_worker(4)) == (2, 1)
    assert (local_workers(1), threads_per_worker(1)) == (1, 2)
    monkeypatch.setenv("PYTHON_CPU_COUNT", "128")
    assert local_workers(128) == 64
    monkeypatch.delenv("PYTHON_CPU_COUNT")
    assert threads_per_worker(4) == 16


def test_the_logged_dashboard_link_serves_the_dask_dashboard(caplog):
    caplog.set_level(logging.INFO, logger="batch_imaging")
    with engine(1) as client, urllib.request.urlopen(client.dashboard_link, timeout=30) as page:
        html = page.read().decode()
    assert f"dashboard {client.dashboard_link}" in caplog.text
    assert "Dask Diagnostic UI" in html, html[:300]  # not "Dask needs bokeh"


PRESTART = """
import json, multiprocessing.forkserver as fs, os, sys
from steps.dask_ee import engine, map_tasks, prestart
prestart(2, ["steps.corrupt"])
server = fs._forkserver._forkserver_pid
with engine(2, ["steps.corrupt"]) as client:
    seen = map_tasks(client, "w", lambda _: (os.getppid(), "steps.corrupt" in sys.modules), [(0,)])
print(json.dumps([server, "steps.corrupt" in sys.modules, *seen[0]]))
"""


def test_prestarted_forkserver_imports_the_step_and_forks_the_workers():
    """The runner starts the workers' forkserver before importing the step itself: the
    workers are forked from that server, with the step module already imported."""
    env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-c", PRESTART], env=env, capture_output=True, text=True, check=True
    )
    server, in_step, parent, in_worker = json.loads(done.stdout.splitlines()[-1])
    assert server and not in_step  # the step process itself has not imported it yet
    assert parent == server and in_worker
