"""calibrate: ICAL from an empty model (self-calibration with major/minor cycles).

The windows are processed in bands of consecutive windows (``ical.band_members``: a few
windows, bounded in bytes), gridded together in one ducc0 call per Taylor term.  No worker
holds windows between tasks: each task (a band's major cycle) reads its windows from the
visibility store, and their PSFs and last model predictions from this run's scratch
directory, so a worker's memory is bounded by one band per thread, not by the windows it
serves.  Each major cycle sends a band its current model and receives its residual moment
images and solved gains.  MS-MFS CLEAN runs here, on the moments reduced across bands.
Writes the solved gain tables, the calibrated visibilities, the model (``ical_model.zarr``
in the image buffer: the Taylor terms, and each window's model image, PSF and final
residual, written by the window's last task, so that ``image`` need not read the
visibilities again and no process holds the image cubes) and the convergence record
``ical_convergence.json``.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr
from dask.distributed import Client, Future, as_completed
from distributed.client import FutureCancelledError

from steps import atomic, store
from steps.buffers import Buffers
from steps.dask_ee import engine
from steps.log import LOG, Progress
from steps.metrics import phase_rms, shift_removed_phase_rms, station_uvw
from steps.params import Params
from steps.science import gains, ical, imaging, reference_frequency

RESUBMITS = 3  # times a band's task goes again after its scattered inputs were lost
WORSE_FLOOR_RAD = 0.01  # a phase error below this never counts as calibration gone wrong


def settings_of(params: Params, integration_time_s: float) -> ical.Settings:
    """ICAL settings from the parameters, with one gridder thread (``Settings``' default):
    ducc0 with several threads is not bit-reproducible under CPU contention, and ICAL
    amplifies 1e-16 differences; the bands give the parallelism."""
    names = ("t", "g", "b")
    terms = ical.terms_from(
        params.calibration_context,
        {n.upper(): params.first_selfcal(n) for n in names},
        {n.upper(): getattr(params, f"{n}_phase_only") for n in names},
        {n.upper(): getattr(params, f"{n}_interval_s") for n in names},
        integration_time_s,
    )
    return ical.Settings(
        npixel=params.npixel,
        cell_rad=params.cellsize,
        epsilon=params.epsilon,
        weighting=params.weighting,
        robust=params.robust,
        algorithm=params.algorithm,
        scales=tuple(params.scales),
        nmoment=params.nmoment,
        niter=params.niter,
        gain=params.gain,
        threshold=params.threshold,
        fractional_threshold=params.fractional_threshold,
        psf_support=params.psf_support,
        window_shape=params.window_shape,
        nmajor=params.nmajor,
        terms=terms,
        solver_niter=params.solver_niter,
        solver_tol=params.solver_tol,
        global_solution=params.global_solution,
        band_windows=params.band_windows,
    )


@dataclass(frozen=True)
class WindowSource:
    """Where a window is read from: the visibility store, and the run's scratch directory
    holding the window's PSF and last model prediction."""

    index: int
    store: Path
    scratch: Path
    settings: ical.Settings

    def path(self, kind: str, suffix: str = ".npz") -> Path:
        return self.scratch / f"{kind}-{self.index}{suffix}"

    def sumwt(self) -> float:
        """The window's sum of imaging weights, saved with its PSF."""
        return float(np.load(self.path("sumwt", ".npy")))

    def psf(self) -> np.ndarray:
        """The window's PSF, saved by its first task (memory-mapped: read where used)."""
        return np.load(self.path("psf", ".npy"), mmap_mode="r")


class ScratchCache(ical.VersionCache):
    """A window's array of a model version in the scratch directory (a window lives one
    task): its last model prediction, or the last final cycle's residual image."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self, version: int) -> np.ndarray | None:
        if not self.path.exists():
            return None
        with np.load(self.path) as saved:
            return saved["array"] if int(saved["version"]) == version else None

    def store(self, version: int, array: np.ndarray) -> None:
        _save(self.path, version=version, array=array)


def _save(path: Path, *array: np.ndarray, **arrays: Any) -> None:
    """One array as ``.npy`` (memory-mappable), or named arrays as ``.npz``, atomically."""
    with atomic.replacing(path) as tmp, open(tmp, "wb") as out:
        if array:
            np.save(out, *array)
        else:
            np.savez(out, **arrays)


def setting_notes(params: Params, nwin: int) -> list[str]:
    """What the settings cannot do on this data, said before ICAL spends its time."""
    notes = []
    if params.global_solution and params.phase_error > 0 and nwin > 1:
        notes.append(
            "global_solution: one solution for all windows, but the corruption draws each "
            f"window's phases independently (phase_error = {params.phase_error:g} rad per "
            "window, integration and station): it cannot fit them"
        )
    if params.algorithm == "mmclean" and params.nmoment > nwin:
        notes.append(
            f"nmoment = {params.nmoment} with {nwin} window(s): {nwin} Taylor term(s) are "
            "fitted, no more than the windows"
        )
    return notes


def term_record(term: ical.Term, ntimes: int, integration_s: float) -> dict[str, Any]:
    """A calibration term as the ICAL record gives it, with the solution interval in effect
    (at most the whole observation), in integrations and seconds."""
    interval = min(term.interval, ntimes)
    return {
        "name": term.name,
        "first_selfcal": term.first_selfcal,
        "phase_only": term.phase_only,
        "interval_integrations": interval,
        "interval_s": interval * integration_s,
    }


def read_window(source: WindowSource) -> ical.Window:
    """Read one window of the store with its PSF (made and saved the first time)."""
    group = zarr.open_group(source.store, mode="r")
    vis, weight, flag = store.read_window(source.store, source.index)
    psf = None
    if source.path("psf", ".npy").exists():
        psf = (source.psf(), source.sumwt())
    win = ical.make_window(
        source.index,
        float(group["frequency"][source.index]),
        group["UVW"][:],
        vis,
        np.where(flag, 0.0, weight),
        group["baseline_antenna1"][:],
        group["baseline_antenna2"][:],
        len(group.attrs["antenna_names"]),
        source.settings,
        psf,
    )
    if psf is None:
        _save(source.path("sumwt", ".npy"), np.array(win.sumwt))
        _save(source.path("psf", ".npy"), win.psf)
    win.cache = ScratchCache(source.path("prediction"))
    win.final = ScratchCache(source.path("residual"))
    return win


def on_band(fn: Callable[..., Any], band: Sequence[WindowSource], *args: Any) -> Any:
    """Run ``fn(windows, *args)`` on the band's windows read from their sources (a Dask task)."""
    return fn([read_window(source) for source in band], *args)


def make_psfs(band: Sequence[ical.Window]) -> list[tuple[float, float, np.ndarray]]:
    """Each window's sum of imaging weights, PSF gridder time and stations without data
    (ntimes, nstations) (a Dask task: reading the windows the first time made their PSFs and
    saved them in the scratch directory)."""
    return [
        (win.sumwt, win.psf_s, gains.unobserved(win.weight, win.ant1, win.ant2, win.nstations))
        for win in band
    ]


def finish_band(
    band: Sequence[ical.Window],
    images: np.ndarray | None,
    coeff: np.ndarray,
    version: int,
    tables: Sequence[dict[str, np.ndarray]],
    source: Path,
    target: Path,
    cubes: Path,
    settings: ical.Settings,
) -> float:
    """Write the band's corrected visibilities, chunk by chunk, into the store being built,
    and each window's model image, PSF and final residual image into the image store being
    built (``cubes``); return the residuals' gridder time (a Dask task).

    The residuals ``invert(corrected - predict(model))`` are made here, where the windows
    are read, so that ``image`` only restores; they are the last cycle's residual images when
    its deconvolution left the model unchanged (usual once ICAL has converged).
    """
    corrected = [ical.corrected_vis(win, t) for win, t in zip(band, tables, strict=True)]
    for win, vis in zip(band, corrected, strict=True):
        for times in store.time_chunks(target):
            _, weight, flag = store.read_window(source, win.index, times)
            store.write_window(target, win.index, vis[times], weight, flag, times)
    t0 = time.perf_counter()
    model = ical.Model(images, coeff, version)
    residuals = ical.final_residuals(band, corrected, model, settings)
    seconds = time.perf_counter() - t0
    for c, (win, residual) in enumerate(zip(band, residuals, strict=True)):
        store.write_plane(cubes, "MODEL", win.index, ical.window_model(images, coeff, c))
        store.write_plane(cubes, "PSF", win.index, win.psf.astype(np.float32))
        store.write_plane(cubes, "RESIDUAL", win.index, residual)
    return seconds


@contextlib.contextmanager
def _removed(directory: Path) -> Iterator[None]:
    """Remove ``directory`` when the block ends (a killed run's is removed by the next)."""
    try:
        yield
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def dask_mapper(client: Client, bands: Sequence[Sequence[WindowSource]]) -> ical.Mapper:
    """Run a per-band function on each band, results in band order; bands are dealt
    round-robin over the workers (every major cycle waits for the busiest worker, so an
    uneven placement would cost a band's work per cycle)."""
    workers = sorted(client.scheduler_info()["workers"])

    def run(fn: Callable[..., Any], args: Sequence[tuple]) -> Iterator[Any]:
        # each distinct argument scattered once (the Taylor images all bands share reach a
        # worker once, not once per band), all in one round trip
        distinct = {id(x): x for a in args for x in a}
        scattered = client.scatter(list(distinct.values()), hash=False) if distinct else []
        future_of = dict(zip(distinct, scattered, strict=True))

        def submit(i: int, inputs: Sequence[Any]) -> Future:
            return client.submit(
                on_band,
                fn,
                bands[i],
                *inputs,
                key=f"{fn.__name__}-{i}-{uuid.uuid4().hex}",  # named on the dashboard
                workers=[workers[i % len(workers)]],
                allow_other_workers=True,
            )

        futures = [submit(i, [future_of[id(x)] for x in a]) for i, a in enumerate(args)]
        # a band whose scattered inputs died with a worker goes again with them in its task
        return _in_order(futures, scattered, lambda i: submit(i, args[i]))

    return run


def _in_order(
    futures: list[Future], inputs: list[Future], again: Callable[[int], Future]
) -> Iterator[Any]:
    """The futures' results in order, each fetched as soon as it is done (so that it does
    not wait in a worker's memory) and released; the coordinator holds only those that came
    before their turn.  The scattered ``inputs`` stay referenced until the last result is in
    (released, they could be forgotten before the tasks needing them ran).

    Dask runs a task again elsewhere when its worker dies, but scattered data has no recipe:
    the tasks that needed what a dead worker held are cancelled.  Such a task is submitted
    again, ``again(i)``, at most ``RESUBMITS`` times."""
    index = {future.key: i for i, future in enumerate(futures)}
    tries = [0] * len(futures)
    arrived: dict[int, Any] = {}
    turn = 0
    pending = as_completed(futures)
    for future in pending:
        i = index.pop(future.key)
        try:
            arrived[i] = future.result()
        except FutureCancelledError:
            if tries[i] == RESUBMITS:
                raise
            tries[i] += 1
            LOG.warning("Task %s lost its inputs with a worker; submitting it again", future.key)
            retry = again(i)
            index[retry.key] = i
            pending.add(retry)
            continue
        finally:
            future.release()
        while turn in arrived:
            yield arrived.pop(turn)
            turn += 1
    del inputs


def run(params: Params, buffers: Buffers) -> dict[str, str]:
    LOG.info("Running ICAL pipeline")
    started = time.perf_counter()
    data = store.open_store(buffers.corrupted)
    obs = store.layout_of(data)
    nwin, ntimes, nstations = len(obs.frequencies), len(obs.times), len(obs.antenna_names)
    settings = settings_of(params, obs.integration_time)
    for term in settings.terms:  # (the parameters refuse a context none of whose terms runs)
        if term.first_selfcal > settings.nmajor:
            LOG.warning(
                "Calibration term %s is not solved: it starts at major cycle %d "
                "(%s_first_selfcal), after the last (nmajor = %d)",
                term.name, term.first_selfcal, term.name.lower(), settings.nmajor,
            )  # fmt: skip
    for note in setting_notes(params, nwin):
        LOG.warning("%s", note)
    truth = store.open_dataset(buffers.true_gains)["GAIN"].values
    tmp = store.create(
        buffers.calibrated, obs, {**data.attrs, "creator": "batch-imaging calibrate"}
    )
    scratch = Path(tempfile.mkdtemp(prefix=".calibrate.tmp-", dir=buffers.vis))
    members = ical.band_members(nwin, ntimes * len(obs.antenna1), settings)
    bands = [
        [WindowSource(int(i), buffers.corrupted, scratch, settings) for i in m] for m in members
    ]
    sources = {source.index: source for band in bands for source in band}
    sizes = "/".join(sorted({str(len(m)) for m in members}))
    LOG.info("ICAL over %d bands of %s windows", len(bands), sizes)
    with (
        engine(params.n_workers, [__name__]) as client,
        _removed(scratch),
        Progress(settings.nmajor + 1, "ICAL", "cycle", log=False) as cycles,
    ):

        def cycle_done(message: str, *args: Any) -> None:
            LOG.info(message, *args)
            cycles.advance()

        mapper = dask_mapper(client, bands)
        sumwt, psf_s = np.empty(nwin), 0.0
        flags = np.empty((nwin, ntimes, nstations), dtype=bool)  # stations without data
        for m, band in zip(members, mapper(make_psfs, [() for _ in bands]), strict=True):
            for i, (weight, seconds, unobserved) in zip(m, band, strict=True):
                sumwt[i], psf_s, flags[i] = weight, psf_s + seconds, unobserved
        result = ical.run_ical(
            bands,
            members,
            obs.frequencies,
            (sources[i].psf() for i in range(nwin)),
            sumwt,
            ntimes,
            nstations,
            settings,
            mapper,
            (truth, flags),
            cycle_done,
        )
        last = result.convergence[-1]
        if result.stopped == "converged":
            LOG.info(
                "ICAL converged at cycle %d of %d: the cycles left would repeat it",
                last["cycle"], settings.nmajor,
            )  # fmt: skip
        elif result.stopped == "diverged":
            kept = (
                f"keeping the gains of cycle {last['cycle'] - 1} and the model they were "
                "solved against"
                if last["cycle"] > 1
                else "the products are those of the uncalibrated data, with no model"
            )
            LOG.warning(
                "ICAL diverged at cycle %d of %d: residual visibilities' rms %.3g Jy, over %g "
                "times the lowest before it; %s",
                last["cycle"], settings.nmajor, last["residual_vis_rms_jy"], ical.DIVERGENCE,
                kept,
            )  # fmt: skip
        if result.stopped != "nmajor":
            cycles.finish()
        cubes = model_store(buffers.ical_model, result, sumwt, obs.frequencies, params)
        args = [
            (*model, [result.tables[i] for i in m], buffers.corrupted, tmp, cubes, settings)
            for model, m in zip(result.models, members, strict=True)
        ]
        final_s = sum(mapper(finish_band, args))
    store.finalize(tmp, buffers.calibrated)
    table = store.gain_table(
        result.gains, obs.times, obs.frequencies, obs.antenna_names, solver="antsol (damped)"
    )
    for term in settings.terms:
        table[f"GAIN_{term.name}"] = (
            ("frequency", "time", "antenna_name"),
            np.stack([t[term.name] for t in result.tables]),
        )
    table["FLAG"] = (("frequency", "time", "antenna_name"), flags)  # no data at that time
    table.attrs["calibration_context"] = params.calibration_context
    store.write_dataset(table, buffers.solved_gains)
    store.finalize(cubes, buffers.ical_model)
    rms = phase_rms(truth, result.gains, flags)
    uvw0 = station_uvw(obs.uvw, obs.antenna1, obs.antenna2, nstations)
    shifted = shift_removed_phase_rms(truth, result.gains, uvw0, obs.frequencies, flags)
    gridder_s = result.gridder_s + psf_s + final_s
    record = {
        "algorithm": params.algorithm,
        "calibration_context": params.calibration_context,
        "terms": [term_record(t, ntimes, obs.integration_time) for t in settings.terms],
        **({"nmoment": len(result.taylor)} if params.algorithm == "mmclean" else {}),
        "nmajor": settings.nmajor,  # at most: the cycles stop once converged or diverged
        "stopped": result.stopped,
        "cycles": result.convergence,
        "phase_rms_rad": rms,
        "phase_rms_shift_removed_rad": shifted["rms_rad"],
        "position_offset_px": shifted["offset_rad"] / params.cellsize,
        "phase_worst_station": obs.antenna_names[shifted["worst_station"]],
        "phase_rms_shift_removed_worst_station_rad": shifted["worst_station_rms_rad"],
        "wall_s": round(time.perf_counter() - started, 3),
        "gridder_s": round(gridder_s, 3),
        "final_residual_gridder_s": round(final_s, 3),
        "worker_busy_s": round(result.busy_s, 3),
        "minor_cycle_s": round(result.minor_s, 3),
    }
    atomic.write_json(buffers.convergence, record)
    LOG.info(
        "Gain phase error after ICAL: %.3g rad rms (%.3g rad with the position offset of "
        "%.3f px removed; at most %.3g rad at one station, %s)",
        rms,
        shifted["rms_rad"],
        record["position_offset_px"],
        shifted["worst_station_rms_rad"],
        record["phase_worst_station"],
    )
    unit = np.ones_like(result.gains)  # no calibration, measured the same way
    uncalibrated = shift_removed_phase_rms(truth, unit, uvw0, obs.frequencies, flags)["rms_rad"]
    if shifted["rms_rad"] > max(uncalibrated, WORSE_FLOOR_RAD):
        LOG.warning(
            "ICAL left the gains further from the truth than no calibration: %.3g rad rms "
            "against %.3g rad (%s)",
            shifted["rms_rad"], uncalibrated,
            "one solution for all windows cannot fit gains that differ between windows: set "
            "global_solution false" if params.global_solution else "the model the image "
            "gives is wrong: check npixel and cellsize against the field and the array's "
            "resolution",
        )  # fmt: skip
    if params.export_ms:  # DATA: corrupted, CORRECTED_DATA: calibrated
        from steps.msexport import ms_path, write_ms

        write_ms(ms_path(buffers.calibrated), buffers.corrupted, buffers.calibrated)
    return {"calibrated": str(buffers.calibrated), "phase_rms_rad": f"{rms:.6g}"}


def model_store(
    path: Path, result: ical.IcalResult, sumwt: np.ndarray, freqs: np.ndarray, params: Params
) -> Path:
    """The image store of ICAL's products being built: the Taylor model and the windows'
    sums of weights, and the cubes each band's last task fills with its windows' model
    images (Jy/pixel), PSFs and final residual images (Jy/beam, of the calibrated data less
    the model, in the gridder's precision)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = xr.Dataset(
        {
            "TAYLOR": (("taylor", "y", "x"), result.taylor),
            "SUMWT": (("frequency",), sumwt),
        },
        coords={"frequency": freqs},
        attrs={
            "type": "model",
            "units": "Jy/pixel",
            "reference_frequency_hz": reference_frequency(freqs),
            "cell_rad": params.cellsize,
            "algorithm": params.algorithm,
        },
    )
    cubes = {"MODEL": np.float64, "PSF": np.float32, "RESIDUAL": imaging.real_type(params.epsilon)}
    return store.create_cubes(path, ds, params.npixel, cubes)
