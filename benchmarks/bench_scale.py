"""Scale benchmarks: the seed example per step, scaling series, workers and the gridder limit.

Every figure covers the whole process tree (this process, the step processes, the Dask
forkserver and workers), sampled with psutil every ``Monitor.period`` s: wall time, CPU time
(user + system, summed over processes; each process's last sample, so a process living less
than a period is missed) and peak RSS, both of the largest single process and of the tree.

``python -m benchmarks scale_`` runs them all (entries ``scale_<name>``):

- ``seed_end_to_end``: ``batch-imaging run examples/batch_imaging.json`` (n_workers 4), with
  wall (the run's own step table), CPU and peak RSS per step;
- ``scale_nfreqwin``, ``scale_ntimes``, ``scale_rmax``, ``scale_npixel``: the seed parameters
  (n_workers 2) with one setting varied; each point runs simulate, corrupt and calibrate with
  ``nmajor`` 1 (PSF, one dirty image, one predict + residual, the final predict + residual:
  6 of the 14 gridder calls per window of the default ``nmajor`` 5), in this process, and
  the fitted exponent of time against visibilities (or pixels);
- ``workers_*``: the same work (seed, ``nmajor`` 1: simulate, corrupt, calibrate, the steps
  that use Dask) with 1 worker x 1 thread, and n_workers 1, 2 and 4 by the thread rule
  (1 x 2, 2 x 1, 4 x 1 on 2 cores); the forkserver starts once per benchmark process, in
  simulate's time;
- ``largest_simulate_corrupt``: simulate and corrupt of the largest configuration;
- ``image_cubes``: the largest image cubes (32 x 2048^2) on few visibilities through
  ``batch-imaging run``: each step's peak RSS, the step processes' included;
- ``gridder_limit``: the calibrate step of the seed (n_workers 2, ``nmajor`` 5) against the
  same ducc0 calls (per band) made directly on the same uvw, one thread each, divided by
  the cores;
- ``gridder_rmax``: one direct ducc0 invert and predict per point of the rmax series, and
  their exponent against the visibilities (the gridder's own growth).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from steps.params import Params

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "examples" / "batch_imaging.json"
STEP_LINE = re.compile(r"^INFO:batch_imaging:\s+(\S+)\s+Succeeded\s+([0-9.]+) s")


class Monitor:
    """Samples a process tree: CPU seconds, peak RSS per process and of the tree, by group.

    ``group(process)`` names the group a process belongs to (None: this process's own).
    """

    period = 0.1

    def __init__(self, group: Callable[[psutil.Process], str | None] = lambda p: None) -> None:
        self.group = group
        self.cpu: dict[int, tuple[str | None, float]] = {}
        self.peak_process: dict[str | None, float] = {}
        self.peak_tree: dict[str | None, float] = {}
        self._stop = threading.Event()
        self._names: dict[int, str | None] = {}
        self._start: dict[int, float] = {}  # CPU seconds of processes already running

    def _sample(self) -> None:
        me = psutil.Process()
        tree: dict[str | None, float] = {}
        for proc in [me, *me.children(recursive=True)]:
            try:
                if proc.pid not in self._names:
                    self._names[proc.pid] = self.group(proc)
                name = self._names[proc.pid]
                times = proc.cpu_times()
                rss = proc.memory_info().rss / 2**20
            except psutil.Error:
                continue
            self.cpu[proc.pid] = (name, times.user + times.system - self._start.get(proc.pid, 0.0))
            self.peak_process[name] = max(self.peak_process.get(name, 0.0), rss)
            tree[name] = tree.get(name, 0.0) + rss
        for name, rss in tree.items():
            self.peak_tree[name] = max(self.peak_tree.get(name, 0.0), rss)

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()

    @contextmanager
    def running(self) -> Iterator[Monitor]:
        me = psutil.Process()
        for proc in [me, *me.children(recursive=True)]:
            times = proc.cpu_times()
            self._start[proc.pid] = times.user + times.system
        thread = threading.Thread(target=self._loop, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()
            self._sample()

    def cpu_s(self, name: str | None = None, every: bool = False) -> float:
        return sum(c for g, c in self.cpu.values() if every or g == name)


def step_of(proc: psutil.Process) -> str | None:
    """The step a process works for: the ``step NAME`` process it is or descends from."""
    for p in [proc, *proc.parents()]:
        args = p.cmdline()
        if "step" in args and args.index("step") + 1 < len(args):
            return args[args.index("step") + 1]
    return None


def seed_end_to_end() -> dict[str, Any]:
    """The seed example through ``batch-imaging run``: per step wall, CPU and peak RSS."""
    return end_to_end(SEED)


def end_to_end(parameters: Path) -> dict[str, Any]:
    """A run of the parameters file through ``batch-imaging run``, each step in its own
    process as a user runs it: per step wall, CPU and peak RSS."""
    monitor = Monitor(step_of)
    with tempfile.TemporaryDirectory() as root, monitor.running():
        started = time.perf_counter()
        run = subprocess.run(
            [sys.executable, "-m", "dag", "run", str(parameters), "--buffer-root", root],
            capture_output=True,
            text=True,
            check=True,
        )
        wall = time.perf_counter() - started
    walls = {
        m.group(1): float(m.group(2))
        for m in map(STEP_LINE.match, run.stderr.splitlines())
        if m is not None
    }
    steps = {
        name: {
            "wall_s": wall_s,
            "cpu_s": round(monitor.cpu_s(name), 2),
            "peak_rss_process_mib": round(monitor.peak_process.get(name, 0.0)),
            "peak_rss_tree_mib": round(monitor.peak_tree.get(name, 0.0)),
        }
        for name, wall_s in walls.items()
        if wall_s > 0.0
    }
    return {
        "end_to_end_s": round(wall, 2),
        "cpu_s": round(monitor.cpu_s(every=True), 2),
        "peak_rss_process_mib": round(max(monitor.peak_process.values())),
        "steps": steps,
    }


def run_steps(params: Params, steps: tuple[str, ...], buffers: Any = None) -> dict[str, Any]:
    """Run ``steps`` in this process (their Dask workers in others); time and memory each.

    Into ``buffers`` if given, else into a temporary directory.
    """
    import importlib

    from steps.buffers import Buffers

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as root:
        buffers = buffers or Buffers.of(params, Path(root))
        for name in steps:
            module = importlib.import_module(f"steps.{name}")
            monitor = Monitor(lambda proc: None if proc.pid == os.getpid() else "workers")
            with monitor.running():
                started = time.perf_counter()
                module.run(params, buffers)
                wall = time.perf_counter() - started
            out[name] = {
                "wall_s": round(wall, 2),
                "cpu_s": round(monitor.cpu_s(every=True), 2),
                "peak_rss_process_mib": round(max(monitor.peak_process.values())),
                "peak_rss_coordinator_mib": round(monitor.peak_process.get(None, 0.0)),
                "peak_rss_worker_mib": round(monitor.peak_process.get("workers", 0.0)),
            }
    return out


def _point(**overrides: Any) -> dict[str, Any]:
    params = Params(**{"n_workers": 2, "nmajor": 1, **overrides})
    steps = run_steps(params, ("simulate", "corrupt", "calibrate"))
    nbl = _baselines(params.rmax)
    return {
        "nvis": params.nfreqwin * params.ntimes * nbl,
        "npixel": params.npixel,
        "simulate_corrupt_s": round(steps["simulate"]["wall_s"] + steps["corrupt"]["wall_s"], 2),
        "calibrate_s": steps["calibrate"]["wall_s"],
        "peak_rss_process_mib": max(s["peak_rss_process_mib"] for s in steps.values()),
        "steps": steps,
    }


def _baselines(rmax: float) -> int:
    from steps.simulate import observation

    return len(observation(Params(rmax=rmax))[1].antenna1)


def _exponent(x: list[float], y: list[float]) -> float:
    """Slope of log y against log x (least squares)."""
    return round(float(np.polyfit(np.log(x), np.log(y), 1)[0]), 3)


def _series(name: str, values: tuple, against: str = "nvis") -> dict[str, Any]:
    points = {str(v): _point(**{name: v}) for v in values}
    x = [float(p[against]) ** (2 if against == "npixel" else 1) for p in points.values()]
    fits = {
        f"exponent_{key}_vs_{'pixels' if against == 'npixel' else 'nvis'}": _exponent(
            x, [p[key] for p in points.values()]
        )
        for key in ("simulate_corrupt_s", "calibrate_s")
    }
    return {**fits, "points": points}


def scale_nfreqwin() -> dict[str, Any]:
    return _series("nfreqwin", (8, 16, 32))


def scale_ntimes() -> dict[str, Any]:
    return _series("ntimes", (5, 20, 60))


def scale_rmax() -> dict[str, Any]:
    return _series("rmax", (750.0, 1500.0, 3000.0))


def scale_npixel() -> dict[str, Any]:
    return _series("npixel", (512, 1024, 2048), against="npixel")


def _workers(n: int, threads: int | None = None, nmajor: int = 1) -> dict[str, Any]:
    """Seed work (calibrate ``nmajor`` 1, or as given) with ``n`` workers (``threads`` each
    if given)."""
    from steps import dask_ee

    if threads is not None:
        dask_ee.threads_per_worker = lambda _: threads  # this benchmark's process only
    steps = run_steps(Params(n_workers=n, nmajor=nmajor), ("simulate", "corrupt", "calibrate"))
    return {k: v["wall_s"] for k, v in steps.items()} | {
        "cores": os.cpu_count(),
        "threads_per_worker": dask_ee.threads_per_worker(n),
        "heavy_s": round(sum(v["wall_s"] for v in steps.values()), 2),
        "peak_rss_process_mib": max(v["peak_rss_process_mib"] for v in steps.values()),
    }


def largest_simulate_corrupt() -> dict[str, Any]:
    """simulate and corrupt of the largest configuration (nfreqwin 32, ntimes 60, rmax 3000,
    npixel 2048), n_workers 2: peak RSS of any process against the dataset's size."""
    params = Params(n_workers=2, nfreqwin=32, ntimes=60, rmax=3000.0, npixel=2048)
    steps = run_steps(params, ("simulate", "corrupt"))
    nvis = params.nfreqwin * params.ntimes * _baselines(params.rmax)
    return {"nvis": nvis, "visibilities_mib": round(nvis * 8 / 2**20), "steps": steps}


def largest_calibrate() -> dict[str, Any]:
    """simulate, corrupt and calibrate (nmajor 1) of the largest configuration, n_workers 2:
    peak RSS of the workers (streamed windows) and of the coordinator."""
    params = Params(n_workers=2, nfreqwin=32, ntimes=60, rmax=3000.0, npixel=2048, nmajor=1)
    steps = run_steps(params, ("simulate", "corrupt", "calibrate"))
    nvis = params.nfreqwin * params.ntimes * _baselines(params.rmax)
    return {"nvis": nvis, "visibilities_mib": round(nvis * 8 / 2**20), "steps": steps}


def image_cubes() -> dict[str, Any]:
    """The largest image cubes (32 windows of 2048^2) on few visibilities (ntimes 5, rmax
    300 m), nmajor 1, n_workers 2, through ``batch-imaging run``: each step's processes'
    memory for the cubes."""
    settings = {"n_workers": 2, "nfreqwin": 32, "ntimes": 5, "rmax": 300.0, "npixel": 2048}
    params = Params(**settings, nmajor=1)
    with tempfile.TemporaryDirectory() as folder:
        parameters = Path(folder) / "cubes.json"
        parameters.write_text(params.model_dump_json(include={*settings, "nmajor"}))
        run = end_to_end(parameters)
    return {"cube_mib": round(params.nfreqwin * params.npixel**2 * 8 / 2**20), **run}


def _ducc0_uvw(uvw: np.ndarray) -> np.ndarray:
    """Our (..., 3) uvw in metres as ``imaging`` hands them to ducc0 (u and v swapped)."""
    return np.ascontiguousarray(uvw.reshape(-1, 3)[:, (1, 0, 2)])


def _ducc0_args(params: Params) -> tuple[dict[str, Any], dict[str, int]]:
    """The keyword arguments of ``imaging``'s ducc0 calls (one thread), and the image size."""
    common = {
        "pixsize_x": params.cellsize,
        "pixsize_y": params.cellsize,
        "epsilon": params.epsilon,
        "do_wgridding": True,
        "divide_by_n": False,
        "nthreads": 1,
        "flip_v": True,
        "flip_w": True,
    }
    return common, {"npix_x": params.npixel, "npix_y": params.npixel}


def gridder_rmax() -> dict[str, Any]:
    """The gridder alone over the rmax series (750, 1500, 3000 m): one invert and one predict
    of a band of the seed's 4 first windows at 1024^2 on each array's uvw, called directly
    (one thread, best of 3), and the exponent of their time against the visibilities: the
    growth ``scale_rmax`` measures for calibrate, without our code."""
    from ducc0.wgridder.experimental import dirty2vis, vis2dirty

    from steps.science import imaging
    from steps.simulate import observation

    points = {}
    for rmax in (750.0, 1500.0, 3000.0):
        params = Params(rmax=rmax)
        obs = observation(params)[1]
        uvw, freqs = _ducc0_uvw(obs.uvw), obs.frequencies[:4]
        common, size = _ducc0_args(params)
        complex_type = np.result_type(imaging.real_type(params.epsilon), np.complex64)
        vis = np.ones((len(uvw), len(freqs)), complex_type)
        seconds = {"invert_s": [], "predict_s": []}
        for _ in range(3):
            t0 = time.perf_counter()
            dirty = vis2dirty(uvw=uvw, freq=freqs, vis=vis, **size, **common)
            t1 = time.perf_counter()
            dirty2vis(uvw=uvw, freq=freqs, dirty=dirty, **common)
            seconds["invert_s"].append(t1 - t0)
            seconds["predict_s"].append(time.perf_counter() - t1)
        points[str(rmax)] = {
            "stations": len(obs.antenna_names),
            "max_abs_w_m": round(float(np.abs(obs.uvw[..., 2]).max()), 1),
            "nvis": params.nfreqwin * vis.shape[0],
            **{key: round(min(values), 3) for key, values in seconds.items()},
        }
    nvis = [p["nvis"] for p in points.values()]
    return {
        "exponent_gridder_vs_nvis": _exponent(
            nvis, [p["invert_s"] + p["predict_s"] for p in points.values()]
        ),
        "points": points,
    }


def gridder_limit() -> dict[str, Any]:
    """calibrate (seed, n_workers 2) against the same ducc0 calls made directly, per core:
    per band, one single-window invert per window for the PSFs, for the residuals of every
    final cycle (the last, and those ICAL might have stopped after) and for the final
    residuals if the last cycle changed the model, in every other major cycle one invert
    over the band per Taylor term, and one predict per Taylor term after every cycle that
    changed the model (unchanged models reuse their prediction), by ``imaging.predict`` of an
    image confined to the final model's support, as ICAL's own predictions are."""
    import zarr
    from ducc0.wgridder.experimental import vis2dirty

    from steps import store
    from steps.buffers import Buffers
    from steps.calibrate import settings_of
    from steps.science import ical, imaging

    params = Params(n_workers=2)
    with tempfile.TemporaryDirectory() as root:
        buffers = Buffers.of(params, Path(root))
        steps = run_steps(params, ("simulate", "corrupt", "calibrate"), buffers)
        record = json.loads(buffers.convergence.read_text())
        group = zarr.open_group(buffers.corrupted, mode="r")
        ours = group["UVW"][:].reshape(-1, 3)
        uvw = _ducc0_uvw(ours)
        freqs = group["frequency"][:]
        used = zarr.open_group(buffers.ical_model, mode="r")["TAYLOR"][0] != 0
        real = imaging.real_type(params.epsilon)
        common, size = _ducc0_args(params)
        settings = settings_of(
            params, store.layout_of(store.open_store(buffers.corrupted)).integration_time
        )
        members = ical.band_members(len(freqs), uvw.shape[0], settings)
        nt = min(params.nmoment, len(freqs))
        cycles = record["cycles"]
        npredict = sum(cycle["components"] > 0 for cycle in cycles)
        final = sum(ical.may_be_last(cycles[:i], i, settings) for i in range(len(cycles) - 1))
        joint = len(cycles) - 1 - final  # every cycle but the final ones
        singles = 2 + final + (cycles[-1]["components"] > 0)  # per window
        direct, calls = 0.0, 0
        for m in members:
            band = slice(int(m[0]), int(m[-1]) + 1)
            vis = group["VISIBILITY"][:, :, band, 0].reshape(-1, len(m))
            vis = vis.astype(np.result_type(real, np.complex64))
            for c in range(len(m)):  # PSF, last cycle's (and final) residual of each window
                t0 = time.perf_counter()
                vis2dirty(
                    uvw=uvw, freq=freqs[band][c : c + 1], vis=vis[:, c : c + 1], **size, **common
                )
                direct += singles * (time.perf_counter() - t0)
            t0 = time.perf_counter()
            dirty = vis2dirty(uvw=uvw, freq=freqs[band], vis=vis, **size, **common)
            t1 = time.perf_counter()
            model = np.where(used, dirty, 0.0)
            t2 = time.perf_counter()
            imaging.predict(model, ours, freqs[band], params.cellsize, params.epsilon)
            direct += nt * (joint * (t1 - t0) + npredict * (time.perf_counter() - t2))
            calls += singles * len(m) + nt * (joint + npredict)
    cores = min(os.cpu_count() or 1, params.n_workers)
    return {
        "calibrate_s": steps["calibrate"]["wall_s"],
        "ical_wall_s": record["wall_s"],
        "ical_gridder_s_in_tasks": record["gridder_s"],
        "bands": len(members),
        "ducc0_calls": calls,
        "direct_ducc0_s": round(direct, 2),
        "direct_ducc0_per_core_s": round(direct / cores, 2),
        "calibrate_over_direct_per_core": round(steps["calibrate"]["wall_s"] / (direct / cores), 3),
        "ical_over_direct_per_core": round(record["wall_s"] / (direct / cores), 3),
    }


BENCHMARKS: dict[str, Callable[[], dict[str, Any]]] = {
    "scale_seed_end_to_end": seed_end_to_end,
    "scale_workers_1x1": lambda: _workers(1, 1),
    "scale_workers_1": lambda: _workers(1),
    "scale_workers_2": lambda: _workers(2),
    "scale_workers_4": lambda: _workers(4),
    "scale_workers_1x1_seed": lambda: _workers(1, 1, Params().nmajor),
    "scale_workers_2_seed": lambda: _workers(2, nmajor=Params().nmajor),
    "scale_largest_simulate_corrupt": largest_simulate_corrupt,
    "scale_largest_calibrate": largest_calibrate,
    "scale_image_cubes": image_cubes,
    "scale_gridder_limit": gridder_limit,
    "scale_gridder_rmax": gridder_rmax,
    "scale_nfreqwin": scale_nfreqwin,
    "scale_ntimes": scale_ntimes,
    "scale_rmax": scale_rmax,
    "scale_npixel": scale_npixel,
}
