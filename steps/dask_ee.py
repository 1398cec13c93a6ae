"""The Dask execution engine of a heavy step: a LocalCluster of ``n_workers``, or a scheduler.

Worker processes of a LocalCluster are forked from a ``forkserver`` that has imported the
step's module once (``preload``), so starting 4 workers costs one import (≈ 2 s) instead of
four spawned interpreters importing numpy, xarray, zarr and ducc0 each (≈ 19 s for 4 workers
on 2 cores, start to close, measured in ``benchmarks/README.md``).

Thread rule: ``processes x threads per worker <= cores``.  A LocalCluster runs
``local_workers(n) = min(n, cores)`` worker processes (asking for more workers than cores
only adds contention: 4 workers on 2 cores made calibrate ≈ 1.3x slower than 2), each with
``threads_per_worker(n) = max(1, cores // local_workers(n))`` Dask threads, and the native
thread pools of the worker processes (OpenMP, OpenBLAS, MKL, numba) are capped at the same
number (the forkserver's environment and the workers').  The gridder (ducc0) is always
called with one thread: the windows and time chunks give the parallelism, and
multi-threaded gridding is not bit-reproducible under CPU contention.  Cores are those the
process may run on (its CPU affinity).  An external scheduler (``DASK_SCHEDULER_ADDRESS``)
brings its own workers and is used as it is, once they have stopped joining.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.forkserver
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import dask
from dask.distributed import Client, LocalCluster, as_completed
from distributed.utils import get_mp_context

from steps.log import LOG, progress
from steps.processes import cores

SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"
WORKER_WAIT_S = 600.0  # how long a step waits for an external cluster's first workers
WORKER_SETTLE_S = 30.0  # ... and for more after the last one joined
WORKER_POLL_S = 0.5
CLUSTER_STARTS = 3  # attempts at starting a LocalCluster (a worker may die while it starts)
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def local_workers(n_workers: int) -> int:
    """Worker processes of a LocalCluster: ``n_workers``, but no more than the cores."""
    return max(1, min(n_workers, cores()))


def threads_per_worker(n_workers: int) -> int:
    """Cores per worker so that workers x (numpy/numba threads) never exceed the cores."""
    return max(1, cores() // local_workers(n_workers))


def _forkserver(preload: Sequence[str], threads: int) -> None:
    """Fork workers from a server that imported ``preload`` once, with capped thread pools."""
    dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"})
    get_mp_context()  # distributed's own preload first, so that ours below is the one kept
    multiprocessing.get_context("forkserver").set_forkserver_preload(
        ["distributed", "dask.distributed", *preload]
    )
    for name in THREAD_ENV[:3]:  # inherited by the forkserver when it starts (first worker)
        os.environ.setdefault(name, str(threads))


def prestart(n_workers: int, preload: Sequence[str]) -> None:
    """Start the workers' forkserver now, so that it imports ``preload`` on another core while
    the step imports its own modules and reads its inputs (nothing to do for a scheduler)."""
    if not os.environ.get(SCHEDULER_ENV):
        _forkserver(preload, threads_per_worker(n_workers))
        multiprocessing.forkserver.ensure_running()


@contextmanager
def engine(n_workers: int, preload: Sequence[str] = ()) -> Iterator[Client]:
    """Start (or connect to) the Dask EE for the duration of a step.

    ``preload``: modules the tasks come from, imported once by the forkserver.
    """
    address = os.environ.get(SCHEDULER_ENV)
    LOG.info("Deploying Dask EE")
    quiet = logging.DEBUG if LOG.isEnabledFor(logging.DEBUG) else logging.WARNING
    logging.getLogger("distributed").setLevel(quiet)
    if address:
        with Client(address) as client:
            LOG.info("Dask EE: scheduler %s", address)
            wait_for_workers(client, n_workers)
            yield client
        return
    threads, processes = threads_per_worker(n_workers), local_workers(n_workers)
    _forkserver(preload, threads)
    with (
        _local_cluster(
            n_workers=processes,
            threads_per_worker=threads,
            processes=True,
            dashboard_address=":0",
            silence_logs=quiet,
            env={name: str(threads) for name in THREAD_ENV},
        ) as cluster,
        Client(cluster) as client,
    ):
        LOG.info(
            "Dask EE: %d workers x %d threads%s, dashboard %s",
            processes,
            threads,
            f" (n_workers {n_workers}, at most one per core)" if processes < n_workers else "",
            client.dashboard_link,
        )
        yield client


def _local_cluster(**options: Any) -> LocalCluster:
    """A started LocalCluster. A worker that dies before it joins (killed, out of memory)
    fails the start ("Nanny failed to start"; Dask closes what had started): the cluster is
    then started again, at most ``CLUSTER_STARTS`` times in all."""
    attempt = 1
    while True:
        try:
            return LocalCluster(**options)
        except RuntimeError as exc:
            if attempt == CLUSTER_STARTS:
                raise
            attempt += 1
            LOG.warning("Dask EE: the cluster failed to start (%s); starting it again", exc)


def wait_for_workers(
    client: Client,
    n_workers: int,
    timeout_s: float | None = None,
    settle_s: float = WORKER_SETTLE_S,
) -> int:
    """Wait until ``n_workers`` workers have joined the scheduler (a DaskCluster scales up
    beside the run); go on with those there are once none has joined for ``settle_s`` (a
    scheduler with fewer workers than asked), or after ``timeout_s`` if any joined."""
    timeout_s = WORKER_WAIT_S if timeout_s is None else timeout_s
    started = time.monotonic()
    have, changed = _workers(client), started
    if have < n_workers:
        LOG.info(
            "Dask EE: %d of %d workers joined; waiting for more (at most %g s, %g s after the "
            "last one joined if any has)",
            have, n_workers, timeout_s, settle_s,
        )  # fmt: skip
    while have < n_workers:
        now = time.monotonic()
        if now - started >= timeout_s or (have and now - changed >= settle_s):
            break
        time.sleep(WORKER_POLL_S)
        if (count := _workers(client)) != have:
            have, changed = count, time.monotonic()
    if have == 0:
        raise RuntimeError(
            f"no Dask worker joined the scheduler {client.scheduler.address} in {timeout_s:g} s"
        )
    if have < n_workers:
        LOG.warning("Dask EE: %d of %d workers joined; going on with them", have, n_workers)
    return min(have, n_workers)


def _workers(client: Client) -> int:
    return len(client.scheduler_info()["workers"])


def map_tasks(
    client: Client, what: str, task: Callable[..., Any], keys: Sequence, *args: Any
) -> list:
    """Run ``task(*key, *args)`` for every key tuple (a progress bar); results in key order."""
    futures = {client.submit(task, *key, *args, pure=False): i for i, key in enumerate(keys)}
    results: list[Any] = [None] * len(keys)
    for future in progress(as_completed(futures), len(keys), what):
        results[futures[future]] = future.result()
    return results
