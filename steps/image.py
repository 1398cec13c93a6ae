"""image: restored images (per window and MFS) from ICAL's products.

Each window's final residual ``invert(calibrated - predict(model))`` was made by calibrate
on the Dask worker holding the window (``ical_model.zarr``); the ICAL PSFs give the clean
beams, one per window (a ``BEAMS`` table in the cubes, as CASA writes them).  Writes FITS
cubes (``deconvolved``, ``residual``, ``restored``, window by window: the step holds a few
planes, never a cube), MFS images (``mfs_restored`` = ``mfs_model`` restored onto
``mfs_residual``, Taylor term 0 of each; ``mfs_alpha``, the apparent spectral index where the
signal allows) and ``metrics.json``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from typing import Any

import erfa
import numpy as np
import xarray as xr
from astropy.time import Time
from astropy.wcs import WCS

from steps import atomic, store
from steps.buffers import Buffers
from steps.log import LOG
from steps.metrics import phase_rms, source_table, step_timings
from steps.params import Params
from steps.science import deconvolve, fitsio, reference_frequency, restore
from steps.skyfile import read_sky

ALPHA_SNR = 10.0  # spectral index where the restored MFS image exceeds this many residual rms
# a, f of the ellipsoid FITS WCS takes OBSGEO-L/B/H on (WCSLIB checks them against X/Y/Z)
IAU1976_ELLIPSOID = (6378140.0, 1 / 298.257)
ALPHA_HISTORY = (
    "Apparent spectral index I1/I0 of the restored Taylor terms, x = (nu - nu_ref) / nu_ref:",
    "the sky's times the station beam's (not corrected for the beam's chromaticity).",
)
MFS_RESIDUAL_HISTORY = (
    "Residual Taylor term 0: the residual moment images through the inverse PSF-peak Hessian",
    "(MS-MFS principal solution, Rau & Cornwell 2011), the residual mfs_restored holds.",
)


def run(params: Params, buffers: Buffers) -> dict[str, str]:
    started = time.perf_counter()
    LOG.info("Imaging %d windows, %d x %d pixels", params.nfreqwin, params.npixel, params.npixel)
    calibrated = store.open_store(buffers.calibrated)  # the data the residuals were made of
    channel_width = float(calibrated.attrs["channel_width_hz"])
    products = store.open_dataset(buffers.ical_model)
    taylor = products["TAYLOR"].values
    sumwt = products["SUMWT"].values
    freqs = calibrated["frequency"].values
    ref = reference_frequency(freqs)
    centre = len(freqs) // 2
    nt = taylor.shape[0]
    weights = deconvolve.taylor_weights(freqs, ref, 2 * nt - 1)
    beams: list[restore.Beam] = []

    def fitted(psfs: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        """The PSFs, read once: each window's clean beam is fitted on the way."""
        for psf in psfs:
            beams.append(restore.fit_clean_beam(psf, params.cellsize))
            yield psf

    psf_mom = deconvolve.moments(fitted(planes(products["PSF"])), weights, sumwt)
    beam = beams[centre]  # the primary header's: the window the metrics are of
    mfs_beam = restore.fit_clean_beam(psf_mom[0], params.cellsize)
    res_mom = deconvolve.moments(planes(products["RESIDUAL"]), weights[:nt], sumwt)
    # residual Taylor coefficients: the moment residuals through the PSF-peak Hessian, as
    # CASA's mtmfs restores; term 0 is the MFS residual written, restored and measured
    peak = psf_mom[:, params.npixel // 2, params.npixel // 2]
    hess = peak[np.add.outer(np.arange(nt), np.arange(nt))]
    res_taylor = np.tensordot(np.linalg.inv(hess / peak[0]), res_mom, axes=(1, 0))
    mfs_restored = restore.restore(taylor, res_taylor, mfs_beam)
    alpha = spectral_index(mfs_restored, res_taylor[0])

    buffers.img.mkdir(parents=True, exist_ok=True)
    header = observation(calibrated, params)
    cube = {**header, "freqs_hz": freqs, "channel_width_hz": channel_width}
    bandwidth = float(np.ptp(freqs)) + channel_width
    mfs = {**header, "freqs_hz": [ref], "channel_width_hz": bandwidth}
    per_window = {"beam": beam, "beams": beams, **cube}
    with (
        fitsio.image_writer(
            buffers.image("deconvolved"), params.npixel, bunit="JY/PIXEL", **cube
        ) as write_model,
        fitsio.image_writer(
            buffers.image("residual"), params.npixel, **per_window
        ) as write_residual,
        fitsio.image_writer(
            buffers.image("restored"), params.npixel, **per_window
        ) as write_restored,
    ):  # window by window: no more than a window's planes in memory
        for c, (model, residual) in enumerate(
            zip(planes(products["MODEL"]), planes(products["RESIDUAL"]), strict=True)
        ):
            restored = restore.restore(model, residual, beams[c])
            write_model(model)
            write_residual(residual)
            write_restored(restored)
            if c == centre:
                centre_planes = restored, residual
    fitsio.write_image(buffers.image("mfs_model"), taylor[0], bunit="JY/PIXEL", **mfs)
    fitsio.write_image(
        buffers.image("mfs_residual"),
        res_taylor[0],
        bunit="JY/BEAM",
        beam=mfs_beam,
        history=MFS_RESIDUAL_HISTORY,
        **mfs,
    )
    fitsio.write_image(
        buffers.image("mfs_restored"), mfs_restored[0], bunit="JY/BEAM", beam=mfs_beam, **mfs
    )
    if alpha is None:  # one Taylor term: none, and none of an earlier run left beside these
        buffers.image("mfs_alpha").unlink(missing_ok=True)
    else:
        fitsio.write_image(
            buffers.image("mfs_alpha"), alpha, bunit="", beam=mfs_beam, history=ALPHA_HISTORY,
            **{**mfs, "extra": {
                **mfs["extra"], "BTYPE": "spectral index",
                "ALPHASNR": (ALPHA_SNR, "index where I0 > this many residual rms"),
            }},
        )  # fmt: skip
    fitsio.write_image(
        buffers.psf,
        products["PSF"][centre].values,
        bunit="",
        **{**header, "freqs_hz": freqs[centre : centre + 1], "channel_width_hz": channel_width},
    )
    metrics = measure(params, buffers, *centre_planes, mfs_restored[0], res_taylor[0], beam)
    metrics["step_timings_s"] = {
        "image": round(time.perf_counter() - started, 3),  # without a timeline: this run()
        **step_timings(params.config_db, params.pb_id, running="image"),
    }
    atomic.write_json(buffers.metrics, metrics)
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


def planes(cube: xr.DataArray) -> Iterator[np.ndarray]:
    """A (frequency, y, x) cube of a store, read one plane at a time."""
    for c in range(cube.sizes["frequency"]):
        yield cube[c].values


def observation(ds: xr.Dataset, params: Params) -> dict[str, Any]:
    """``fitsio.write_image`` arguments every image shares: the phase centre and cell, the
    observation's start (DATE-OBS) and site (OBSGEO-*: the mean station position), and the
    imaging weights."""
    start_s = float(ds["time"].values[0]) - float(ds.attrs["integration_time_s"]) / 2
    site = np.mean(np.asarray(ds.attrs["antenna_itrf_m"], dtype=float), axis=0)
    weights = f"robust {params.robust:g}" if params.weighting == "robust" else params.weighting
    lon, lat, height = erfa.gc2gde(*IAU1976_ELLIPSOID, site)
    cards: dict[str, Any] = {
        f"OBSGEO-{axis}": (float(value), "[m] ITRF, mean station position")
        for axis, value in zip("XYZ", site, strict=True)
    }
    cards["OBSGEO-L"] = (math.degrees(lon), "[deg] geodetic longitude (IAU 1976)")
    cards["OBSGEO-B"] = (math.degrees(lat), "[deg] geodetic latitude (IAU 1976)")
    cards["OBSGEO-H"] = (float(height), "[m] height above the IAU 1976 ellipsoid")
    cards["TIMESYS"] = "UTC"
    cards["WEIGHTNG"] = (weights, "imaging weights")
    return {
        "ra_deg": params.ra,
        "dec_deg": params.dec,
        "cell_rad": params.cellsize,
        "date_obs": Time(start_s / 86400.0, format="mjd", scale="utc").isot,
        "extra": cards,
    }


def spectral_index(mfs_restored: np.ndarray, residual0: np.ndarray) -> np.ndarray | None:
    """``I_1 / I_0`` of the restored Taylor images where ``I_0 > ALPHA_SNR`` residual rms.

    NaN elsewhere; None with a single Taylor term.
    """
    if mfs_restored.shape[0] < 2:
        return None
    rms = float(np.sqrt(np.mean(residual0**2)))
    i0 = mfs_restored[0]
    alpha = np.full(i0.shape, np.nan)
    good = i0 > ALPHA_SNR * rms
    alpha[good] = mfs_restored[1][good] / i0[good]
    return alpha


def measure(
    params: Params,
    buffers: Buffers,
    restored: np.ndarray,
    residual: np.ndarray,
    mfs_restored: np.ndarray,
    mfs_residual: np.ndarray,
    beam: restore.Beam,
) -> dict[str, Any]:
    """Metrics of the centre window (as the seed exported; its ``restored`` and ``residual``
    images) and of the MFS image."""
    centre = params.nfreqwin // 2
    wcs = WCS(fitsio.read_header(buffers.image("restored")))
    sky = read_sky(buffers.sky)
    flux = sky.apparent_jy
    names, ra, dec = sky.components.names, sky.components.ra_deg, sky.components.dec_deg
    peak = float(restored.max())
    rms = float(np.sqrt(np.mean(residual**2)))
    mfs_peak = float(mfs_restored.max())
    mfs_rms = float(np.sqrt(np.mean(mfs_residual**2)))
    truth = store.open_dataset(buffers.true_gains)["GAIN"].values
    solved = store.open_dataset(buffers.solved_gains)
    convergence_path = buffers.convergence
    convergence = json.loads(convergence_path.read_text()) if convergence_path.exists() else {}
    cycles = convergence.get("cycles", [])
    return {
        "pb_id": params.pb_id,
        "centre_window": centre,
        "centre_frequency_hz": params.frequencies()[centre],
        "restored_peak_jy": peak,
        "residual_rms_jy": rms,
        "dynamic_range": peak / rms if rms > 0 else math.inf,
        "mfs": {
            "reference_frequency_hz": reference_frequency(params.frequencies()),
            "restored_peak_jy": mfs_peak,
            "residual_rms_jy": mfs_rms,
            "dynamic_range": mfs_peak / mfs_rms if mfs_rms > 0 else math.inf,
            # Taylor term 0 is the intensity at the reference frequency: the truth is there
            "sources": source_table(mfs_restored, wcs, names, ra, dec, sky.mfs_apparent_jy),
        },
        "phase_rms_rad": phase_rms(truth, solved["GAIN"].values, solved["FLAG"].values),
        "phase_rms_rad_per_cycle": [c.get("phase_rms_rad") for c in cycles],
        "phase_rms_shift_removed_rad": convergence.get("phase_rms_shift_removed_rad"),
        "position_offset_px": convergence.get("position_offset_px"),
        "phase_worst_station": convergence.get("phase_worst_station"),
        "phase_rms_shift_removed_worst_station_rad": convergence.get(
            "phase_rms_shift_removed_worst_station_rad"
        ),
        "clean_beam": {
            "bmaj_deg": beam.bmaj_deg,
            "bmin_deg": beam.bmin_deg,
            "bpa_deg": beam.bpa_deg,
        },
        "sources": source_table(
            restored, wcs, names, ra, dec, flux[:, centre] if flux.size else flux
        ),
        "ical": {k: v for k, v in convergence.items() if k != "cycles"},
    }
