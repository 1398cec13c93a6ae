"""One small pipeline run (with ``export_ms``), shared by the product tests of several modules.

The steps run in this process through ``run_step``, as their containers run them, so the PB
state's timeline is recorded and the report step writes the previews and the report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
from dask.distributed import LocalCluster

from dag.runner import embedded_db, register
from steps import calibrate, corrupt, image, simulate
from steps import params as parameters
from steps.buffers import BUFFER_ROOT_ENV, Buffers
from steps.configdb import ConfigDB, open_backend
from steps.dask_ee import SCHEDULER_ENV
from steps.runner import OUTPUTS_ENV, run_step

RAW = {
    "pb_id": "pb-test-20260101-00000",
    "n_workers": 1,
    "nfreqwin": 3,
    "ntimes": 3,
    "rmax": 200,
    "npixel": 128,
    "cellsize": 0.002,
    "niter": 200,
    "nmajor": 2,
    "export_ms": True,
}
STEPS = ("simulate", "corrupt", "calibrate", "image", "report", "release")


@dataclass(frozen=True)
class SmallRun:
    """Where the shared run's products are."""

    root: Path
    params: parameters.Params
    buffers: Buffers


_CACHE: list[SmallRun] = []


def small_run(factory: pytest.TempPathFactory) -> SmallRun:
    """The shared run, executed on first use."""
    if not _CACHE:
        root = factory.mktemp("small-run")
        params = parameters.parse({**RAW, "config_db": embedded_db(root)})
        with ConfigDB(open_backend(params.config_db)) as db:
            register(db, params, RAW)
        env = {
            BUFFER_ROOT_ENV: str(root),
            OUTPUTS_ENV: str(root / "outputs"),
            "WORKFLOW_NAME": "test-run",
            "WORKFLOW_STATUS": "Succeeded",
        }
        with mock.patch.dict(os.environ, env):
            for step in STEPS:
                run_step(step, params.as_strings())
        _CACHE.append(SmallRun(root, params, Buffers.of(params, root)))
    return _CACHE[0]


def run_in_process(params: parameters.Params, buffers: Buffers) -> None:
    """simulate -> corrupt -> calibrate -> image on an in-process Dask cluster (no PB state)."""
    buffers.vis.mkdir(parents=True)
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=4, processes=False, dashboard_address=None
        ) as cluster,
        pytest.MonkeyPatch.context() as patch,
    ):
        patch.setenv(SCHEDULER_ENV, cluster.scheduler_address)
        for step in (simulate, corrupt, calibrate, image):
            step.run(params, buffers)
