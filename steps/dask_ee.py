"""The Dask execution engine of a heavy step: a LocalCluster of ``n_workers``, or a scheduler."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from dask.distributed import Client, LocalCluster, as_completed

from steps.log import LOG, progress

SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"


def threads_per_worker(n_workers: int) -> int:
    """Cores per worker so that workers x (ducc0/numpy threads) never exceed the cores."""
    return max(1, (os.cpu_count() or 1) // n_workers)


@contextmanager
def engine(n_workers: int) -> Iterator[Client]:
    """Start (or connect to) the Dask EE for the duration of a step."""
    address = os.environ.get(SCHEDULER_ENV)
    LOG.info("Deploying Dask EE")
    quiet = logging.DEBUG if LOG.isEnabledFor(logging.DEBUG) else logging.WARNING
    logging.getLogger("distributed").setLevel(quiet)
    if address:
        with Client(address) as client:
            LOG.info("Dask EE: scheduler %s", address)
            yield client
        return
    threads = threads_per_worker(n_workers)
    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads,
            processes=True,
            dashboard_address=":0",
            silence_logs=quiet,
            env={"OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads)},
        ) as cluster,
        Client(cluster) as client,
    ):
        LOG.info(
            "Dask EE: %d workers x %d threads, dashboard %s",
            n_workers,
            threads,
            client.dashboard_link,
        )
        yield client


def map_windows(
    client: Client, what: str, task: Callable[..., Any], count: int, *args: Any
) -> list:
    """Run ``task(index, *args)`` for every frequency window; results in window order."""
    futures = {client.submit(task, index, *args, pure=False): index for index in range(count)}
    results: list[Any] = [None] * count
    for future in progress(as_completed(futures), count, what):
        results[futures[future]] = future.result()
    return results
