"""Imaging, CLEAN and ICAL benchmarks (the seed's grid: 1024 x 0.0005 rad, LOWBD2 / SKA1-Low).

Gridder and CLEAN entries run single-threaded in this process; the pipeline entries run the
steps as the workflow does (Dask LocalCluster of ``n_workers`` = 2).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.cases import Case, case_window, lowbd2_case, run_case, settings_for
from steps.params import Params
from steps.science import clean, deconvolve, ical, imaging, reference_frequency
from steps.science.predict import dft

NPIX, CELL = 1024, 0.0005


def _window_data() -> tuple[Case, np.ndarray, np.ndarray]:
    case = lowbd2_case(phase_error=0.0)
    return case, case.uvw.reshape(-1, 3), np.ones((case.uvw.shape[0] * case.uvw.shape[1], 1))


def _best(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, float]:
    """Best wall and CPU seconds of ``repeat`` calls."""
    walls, cpus = [], []
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return min(walls), min(cpus)


def invert() -> dict[str, Any]:
    case, uvw, wgt = _window_data()
    vis = case.vis[4].reshape(-1, 1)
    out = {}
    for eps in (1e-4, 1e-5, 1e-6, 1e-8, 1e-12):
        wall, cpu = _best(
            lambda e=eps: imaging.invert(uvw, case.freqs[4:5], vis, wgt, NPIX, CELL, e)
        )
        out[f"eps{eps:g}_s"] = round(wall, 3)
        out[f"eps{eps:g}_cpu_s"] = round(cpu, 3)
    return out


def predict() -> dict[str, Any]:
    case, uvw, _ = _window_data()
    model = np.zeros((NPIX, NPIX))
    model[NPIX // 2 + 40, NPIX // 2 - 70] = 5.0
    out = {}
    for eps in (1e-4, 1e-5, 1e-6, 1e-8, 1e-12):
        wall, cpu = _best(lambda e=eps: imaging.predict(model, uvw, case.freqs[4:5], CELL, e))
        out[f"eps{eps:g}_s"] = round(wall, 3)
        out[f"eps{eps:g}_cpu_s"] = round(cpu, 3)
    return out


def _dirty_cube() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    case, uvw, wgt = _window_data()
    dirty, psf = [], []
    for c, f in enumerate(case.freqs):
        freq = np.array([f])
        dirty.append(imaging.invert(uvw, freq, case.vis[c].reshape(-1, 1), wgt, NPIX, CELL)[0])
        psf.append(imaging.make_psf(uvw, freq, wgt, NPIX, CELL)[0])
    return np.stack(dirty), np.stack(psf), case.freqs


def _clean_bench(run: Callable[[np.ndarray, np.ndarray, np.ndarray], int]) -> dict[str, Any]:
    dirty, psf, freqs = _dirty_cube()
    run(dirty[:, :64, :64], psf[:, :64, :64], freqs)  # compile
    started = time.perf_counter()
    n = run(dirty, psf, freqs)
    wall = time.perf_counter() - started
    return {"iterations": n, "minor_cycle_s": round(wall, 3), "ms_per_iteration": wall / n * 1e3}


COMMON = {"gain": 0.25, "niter": 1000, "threshold": 0.0, "fractional_threshold": 0.0}


def hogbom() -> dict[str, Any]:
    return _clean_bench(lambda d, p, f: clean.hogbom(d[4], p[4], psf_support=128, **COMMON)[2])


def msclean() -> dict[str, Any]:
    return _clean_bench(
        lambda d, p, f: deconvolve.msclean(d[4], p[4], scales=(0, 3, 10), **COMMON)[2]
    )


def mmclean() -> dict[str, Any]:
    return _clean_bench(
        lambda d, p, f: deconvolve.msmfs(d, p, f, None, 2, (0, 3, 10), **COMMON).ncomponents
    )


def _figures(f: dict[str, Any]) -> dict[str, Any]:
    top = f["sources"][:5]
    return {
        "phase_rms_rad": f["phase_rms_rad"],
        "phase_rms_shift_removed_rad": f["phase_rms_shift_removed_rad"],
        "position_offset_px": f["position_offset_px"],
        "dynamic_range": f["dynamic_range"],
        "top5_max_flux_error": max(abs(s["flux_ratio"] - 1) for s in top),
        "top5_max_offset_px": max(s["offset_px"] for s in top),
        "ical_s": round(f["ical_s"], 2),
        "gridder_s": round(f["gridder_s"], 2),
        "minor_cycle_s": round(f["minor_cycle_s"], 2),
        "ical_over_gridder": f["ical_s"] / f["gridder_s"],
    }


def epsilon_quality() -> dict[str, Any]:
    """Quality of ICAL against gridder accuracy (94 stations, 4 windows, 512 px)."""
    case = lowbd2_case(
        rmax=300.0, nwin=4, ntimes=5, npixel=512, cell_rad=0.001, nsrc=15, min_separation_deg=0.6
    )
    return {
        f"eps{eps:g}": _figures(run_case(case, settings_for(case, epsilon=eps)))
        for eps in (1e-3, 1e-4, 1e-5, 1e-6, 1e-8)
    }


def lowbd2_full() -> dict[str, Any]:
    """The issue's RASCIL-like case, full size, one thread, the original's settings."""
    case = lowbd2_case()
    return _figures(run_case(case, settings_for(case, epsilon=Params().epsilon)))


def lowbd2_skies() -> dict[str, Any]:
    """The same case on other random skies and phase errors (seeds 1-4): how much the
    figures depend on the realisation."""
    out = {}
    for seed in (1, 2, 3, 4):
        case = lowbd2_case(seed=seed)
        out[f"seed{seed}"] = _figures(run_case(case, settings_for(case, epsilon=Params().epsilon)))
    return out


def lowbd2_spectral_floor() -> dict[str, Any]:
    """The centre window's residual that the 2-term spectral model leaves by itself: the
    image (exact DFT) of what the least-squares Taylor fit of each source's spectrum over
    the windows misses there, and the dynamic range that residual alone would allow."""
    case = lowbd2_case()
    settings = settings_for(case)
    c = len(case.freqs) // 2
    taylor = deconvolve.taylor_weights(case.freqs, reference_frequency(case.freqs), 2).T
    fit, *_ = np.linalg.lstsq(taylor, case.flux.T, rcond=None)
    missed = case.flux[:, c] - taylor[c] @ fit
    n = np.sqrt(1.0 - case.l**2 - case.m**2)
    uvw = case.uvw.reshape(-1, 3)
    vis = dft(uvw, case.freqs[c : c + 1], case.l, case.m, n, missed[:, None])
    win = case_window(case, c, settings)
    (image,) = ical.window_images([win], [vis.reshape(win.vis.shape)], settings)
    rms = float(np.sqrt(np.mean(ical.normalised(image, win.sumwt).astype(np.float64) ** 2)))
    return {
        "max_missed_flux_jy": float(np.abs(missed).max()),
        "floor_rms_jy": rms,
        "floor_dynamic_range": float(case.flux[:, c].max()) / rms,
    }


def _pipeline(**overrides: Any) -> dict[str, Any]:
    """simulate -> corrupt -> calibrate -> image with default parameters (n_workers 2)."""
    from steps import calibrate, corrupt, image, simulate
    from steps.buffers import Buffers

    params = Params(n_workers=2, **overrides)
    with tempfile.TemporaryDirectory() as root:
        buffers = Buffers.of(params, Path(root))
        timings = {}
        for step in (simulate, corrupt, calibrate, image):
            started = time.perf_counter()
            step.run(params, buffers)
            timings[step.__name__.split(".")[-1]] = round(time.perf_counter() - started, 2)
        metrics = json.loads(buffers.metrics.read_text())
    ical = metrics["ical"]
    return {
        "step_s": timings,
        "total_s": round(sum(timings.values()), 2),
        "ical_wall_s": ical["wall_s"],
        "ical_gridder_s": ical["gridder_s"],
        "ical_worker_busy_s": ical["worker_busy_s"],
        "gridder_share_of_worker_time": ical["gridder_s"] / ical["worker_busy_s"],
        "ical_over_gridder_per_worker": ical["wall_s"] / (ical["gridder_s"] / 2),
        "minor_cycle_s": ical["minor_cycle_s"],
        "phase_rms_rad": metrics["phase_rms_rad"],
        "phase_rms_shift_removed_rad": metrics["phase_rms_shift_removed_rad"],
        "dynamic_range": metrics["dynamic_range"],
        "mfs_dynamic_range": metrics["mfs"]["dynamic_range"],
        "top5_flux_ratio": [round(s["flux_ratio"], 5) for s in metrics["sources"][:5]],
        "top5_offset_px": [round(s["offset_px"], 3) for s in metrics["sources"][:5]],
    }


def seed_pipeline() -> dict[str, Any]:
    return _pipeline()


def seed_uncorrupted() -> dict[str, Any]:
    """The same settings on uncorrupted data, no calibration: the dynamic-range reference."""
    return _pipeline(phase_error=0.0, calibration_context="")


BENCHMARKS: dict[str, Callable[[], dict[str, Any]]] = {
    "invert": invert,
    "predict": predict,
    "hogbom": hogbom,
    "msclean": msclean,
    "mmclean": mmclean,
    "epsilon_quality": epsilon_quality,
    "lowbd2_full": lowbd2_full,
    "lowbd2_skies": lowbd2_skies,
    "lowbd2_spectral_floor": lowbd2_spectral_floor,
    "seed_pipeline": seed_pipeline,
    "seed_uncorrupted": seed_uncorrupted,
}
