"""image: dirty image and PSF per window, Hogbom CLEAN with major cycles, restore, FITS."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import zarr

from steps import store
from steps.buffers import Buffers
from steps.dask_ee import engine, map_windows, threads_per_worker
from steps.log import LOG
from steps.metrics import phase_rms, source_table
from steps.params import Params
from steps.science import clean, fitsio, imaging, restore

OUTPUTS = ("restored", "restored_peak_jy", "dynamic_range")


def image_window(index: int, data: Path, params: Params, nthreads: int) -> dict:
    """Deconvolve one window with Cotton-Schwab major cycles (a Dask task)."""
    group = zarr.open_group(data, mode="r")
    uvw = group["UVW"][:].reshape(-1, 3)
    freq = group["frequency"][index : index + 1]
    vis, weight, flag = store.read_window(data, index)
    vis = vis.reshape(-1, 1).astype(np.complex128)
    weight = np.where(flag, 0.0, weight).reshape(-1, 1).astype(np.float64)
    grid = {"npixel": params.npixel, "cell_rad": params.cellsize, "epsilon": params.epsilon}
    psf, _ = imaging.make_psf(uvw, freq, weight, nthreads=nthreads, **grid)
    model = np.zeros((params.npixel, params.npixel))
    residual_vis = vis
    for cycle in range(params.nmajor):
        residual, _ = imaging.invert(uvw, freq, residual_vis, weight, nthreads=nthreads, **grid)
        component, _, found = clean.hogbom(
            residual,
            psf,
            gain=params.gain,
            niter=params.niter,
            threshold=params.threshold,
            fractional_threshold=params.fractional_threshold,
        )
        LOG.debug("window %d cycle %d: %d components", index, cycle, found)
        if found == 0:
            break
        model += component
        predicted = imaging.predict(
            model, uvw, freq, params.cellsize, epsilon=params.epsilon, nthreads=nthreads
        )
        residual_vis = vis - predicted
    residual, _ = imaging.invert(uvw, freq, residual_vis, weight, nthreads=nthreads, **grid)
    return {"model": model, "residual": residual, "psf": psf}


def run(params: Params, buffers: Buffers) -> dict[str, str]:
    LOG.info("Imaging %d windows, %d x %d pixels", params.nfreqwin, params.npixel, params.npixel)
    data = store.open_store(buffers.calibrated)
    obs = store.layout_of(data)
    threads = threads_per_worker(params.n_workers)
    with engine(params.n_workers) as client:
        planes = map_windows(
            client, "image", image_window, len(obs.frequencies), buffers.calibrated, params, threads
        )
    beams = [restore.fit_clean_beam(p["psf"], params.cellsize) for p in planes]
    beam = max(beams, key=lambda b: b.bmaj_deg * b.bmin_deg)  # common beam: the largest
    model = np.stack([p["model"] for p in planes])
    residual = np.stack([p["residual"] for p in planes])
    restored = np.stack([restore.restore(p["model"], p["residual"], beam) for p in planes])
    buffers.img.mkdir(parents=True, exist_ok=True)
    header = {
        "ra_deg": params.ra,
        "dec_deg": params.dec,
        "cell_rad": params.cellsize,
        "freqs_hz": obs.frequencies,
        "channel_width_hz": obs.channel_width,
    }
    fitsio.write_image(buffers.image("deconvolved"), model, bunit="JY/PIXEL", beam=None, **header)
    fitsio.write_image(buffers.image("residual"), residual, bunit="JY/BEAM", beam=beam, **header)
    fitsio.write_image(buffers.image("restored"), restored, bunit="JY/BEAM", beam=beam, **header)
    metrics = measure(params, buffers, restored, residual, beam)
    write_json(buffers.metrics, metrics)
    LOG.info(
        "Restored peak %.3f Jy/beam, residual rms %.3g Jy/beam, dynamic range %.0f",
        metrics["restored_peak_jy"],
        metrics["residual_rms_jy"],
        metrics["dynamic_range"],
    )
    return {
        "restored": str(buffers.image("restored")),
        "restored_peak_jy": f"{metrics['restored_peak_jy']:.6g}",
        "dynamic_range": f"{metrics['dynamic_range']:.6g}",
    }


def measure(params: Params, buffers: Buffers, restored, residual, beam) -> dict:
    """Metrics of the centre window (as the seed exported) plus the gain phase error."""
    centre = params.nfreqwin // 2
    _, header = fitsio.read_image(buffers.image("restored"))
    from astropy.wcs import WCS

    wcs = WCS(header)
    with buffers.sky.open() as handle:
        rows = list(csv.DictReader(handle))
    apparent_column = list(rows[0])[5 + centre] if rows else ""
    peak = float(restored[centre].max())
    rms = float(np.sqrt(np.mean(residual[centre] ** 2)))
    truth = store.open_dataset(buffers.true_gains)["GAIN"].values
    solved = store.open_dataset(buffers.solved_gains)["GAIN"].values
    return {
        "pb_id": params.pb_id,
        "centre_window": centre,
        "centre_frequency_hz": params.frequencies()[centre],
        "restored_peak_jy": peak,
        "residual_rms_jy": rms,
        "dynamic_range": peak / rms if rms > 0 else math.inf,
        "phase_rms_rad": phase_rms(truth, solved),
        "clean_beam": {
            "bmaj_deg": beam.bmaj_deg,
            "bmin_deg": beam.bmin_deg,
            "bpa_deg": beam.bpa_deg,
        },
        "sources": source_table(
            restored[centre],
            wcs,
            [r["name"] for r in rows],
            np.array([float(r["ra_deg"]) for r in rows]),
            np.array([float(r["dec_deg"]) for r in rows]),
            np.array([float(r[apparent_column]) for r in rows]),
        ),
    }


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
