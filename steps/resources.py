"""Up-front estimates of memory and disk, so absurd sizes fail before any work starts."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import psutil

from steps.params import Params, ParamsError, station_count
from steps.processes import cores

GIB = 1024**3
VIS_BYTES = 8 + 4 + 1  # complex64 visibility, float32 weight, bool flag per sample
WORKING_COPIES = 8  # complex128 copies a window task holds: data, model, residual, gains...
IMAGE_ARRAYS = 12  # float64 npixel^2 planes a window task holds: dirty, PSF, model, ...
GRID_OVERSAMPLING = 2.0  # ducc0's uv grid is at most ~2x the image in each axis


@dataclass(frozen=True)
class Estimate:
    """Bytes a run needs."""

    worker: float  # one Dask task (one frequency window)
    coordinator: float  # the step process: MS-MFS's planes, or the per-window models
    disk: float  # the three visibility stores and the image cubes

    def describe(self) -> str:
        return (
            f"~{self.worker / GIB:.1f} GiB per worker, ~{self.coordinator / GIB:.1f} GiB "
            f"for the step, ~{self.disk / GIB:.1f} GiB of disk"
        )


def estimate(params: Params, root: Path | None = None) -> Estimate:
    """Memory and disk a run of these parameters needs (an upper-bound estimate); a
    ``buffer:`` layout is read under ``root`` (else this pod's buffer root)."""
    nstations = station_count(params.configuration, params.rmax, root)
    samples = params.ntimes * nstations * (nstations - 1) / 2  # per window
    pixels = params.npixel**2
    grid = (GRID_OVERSAMPLING * params.npixel) ** 2 * 16
    worker = samples * 16 * WORKING_COPIES + pixels * 8 * IMAGE_ARRAYS + grid
    # MS-MFS's Taylor terms (and the last cycle's, undone if a cycle diverges), moments and
    # couplings on the step process (the cubes stream through the store); per-window
    # algorithms also keep each window's model, a cycle's increments and the last cycle's
    planes = 9 * params.nmoment + (3 * params.nfreqwin if params.algorithm != "mmclean" else 0)
    coordinator = pixels * 8 * planes
    disk = 3 * samples * params.nfreqwin * VIS_BYTES + 3 * params.nfreqwin * pixels * 8
    return Estimate(worker=worker, coordinator=coordinator, disk=disk)


def memory_available() -> float:
    """Bytes this process may use: the cgroup limit if any, else the machine's memory."""
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < psutil.virtual_memory().total:
            return float(text)
    return float(psutil.virtual_memory().total)


def check(params: Params, disk: Path | None = None, root: Path | None = None) -> Estimate:
    """Raise ParamsError when the run cannot fit this machine's memory or the disk holding
    ``disk`` (a buffer, or the directory it will be made in); ``root`` as for ``estimate``."""
    need = estimate(params, root)
    memory = memory_available()
    workers = min(params.n_workers, cores())
    if need.worker * workers + need.coordinator > memory:
        raise ParamsError(
            f"npixel = {params.npixel}, ntimes = {params.ntimes}, rmax = {params.rmax}, "
            f"nfreqwin = {params.nfreqwin}, n_workers = {params.n_workers}: the run needs "
            f"{need.describe()}, more than the {memory / GIB:.1f} GiB of memory available"
        )
    if disk is not None:
        existing = next(p for p in [Path(disk), *Path(disk).parents] if p.exists())
        free = shutil.disk_usage(existing).free
        if need.disk > free:
            raise ParamsError(
                f"the run needs {need.describe()}, more than the {free / GIB:.1f} GiB free "
                f"under {disk}"
            )
    return need
