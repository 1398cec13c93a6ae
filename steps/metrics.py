"""Figures of merit measured against the simulated truth."""

from __future__ import annotations

import datetime
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from steps.log import LOG
from steps.science import C_M_S

if TYPE_CHECKING:  # annotation only: calibrate imports this module without astropy
    from astropy.wcs import WCS


def referenced(gains: np.ndarray, flags: np.ndarray | None = None) -> np.ndarray:
    """Gains (..., station) times the conjugate of their reference: station 0, or where
    ``flags`` (True: the station had no data) say it had none, the first station that had;
    NaN where flagged."""
    if flags is None:
        return gains * np.conj(gains[..., :1])
    ref = np.argmax(~flags, axis=-1)[..., None]
    return np.where(flags, np.nan, gains * np.conj(np.take_along_axis(gains, ref, axis=-1)))


def phase_errors(
    true_gains: np.ndarray, solved_gains: np.ndarray, flags: np.ndarray | None = None
) -> np.ndarray:
    """Solved minus true gain phase (rad), each referenced alike (``referenced``); NaN where
    flagged."""
    return np.angle(referenced(solved_gains, flags) * np.conj(referenced(true_gains, flags)))


def phase_rms(
    true_gains: np.ndarray, solved_gains: np.ndarray, flags: np.ndarray | None = None
) -> float:
    """RMS (rad) of solved minus true gain phase, each referenced to station 0 (last axis),
    over the stations with data (``flags``: True where a station had none)."""
    return float(np.sqrt(np.nanmean(phase_errors(true_gains, solved_gains, flags) ** 2)))


def station_uvw(uvw: np.ndarray, ant1: np.ndarray, ant2: np.ndarray, nstations: int) -> np.ndarray:
    """Station positions relative to station 0 in uvw (time, station, 3) metres.

    Baseline uvw are ``pos[ant2] - pos[ant1]``; the baselines with station 0 give them.
    """
    out = np.zeros((uvw.shape[0], nstations, 3))
    first = ant1 == 0
    out[:, ant2[first]] = uvw[:, first]
    second = ant2 == 0
    out[:, ant1[second]] = -uvw[:, second]
    return out


def shift_removed_phase_rms(
    true_gains: np.ndarray,
    solved_gains: np.ndarray,
    uvw0: np.ndarray,
    freqs_hz: np.ndarray,
    flags: np.ndarray | None = None,
) -> dict[str, Any]:
    """Phase error with the self-calibration position degeneracy removed.

    A phase gradient ``2 pi (u dl + v dm) nu / c`` across the stations, common to all windows
    and times, is indistinguishable from a shift (dl, dm) of the whole sky, so ICAL from an
    empty model recovers the gains only up to it.  Fits (dl, dm) to the station-0 referenced
    phase differences (window, time, station) of the stations with data (``flags``) by least
    squares and returns the rms of what is left (``rms_rad``), the offset |(dl, dm)|
    (``offset_rad``) and the station whose rms of what is left is largest
    (``worst_station``, its rms ``worst_station_rms_rad``).
    """
    diff = phase_errors(true_gains, solved_gains, flags)
    k = 2 * np.pi * np.asarray(freqs_hz)[:, None, None, None] / C_M_S
    pos = np.broadcast_to(uvw0[None, :, :, :2], (*diff.shape, 2))  # (window, time, station, 2)
    if flags is not None:  # positions relative to the reference station, as the phases
        pos = pos - np.take_along_axis(pos, np.argmax(~flags, axis=-1)[..., None, None], axis=2)
    design = (k * pos).reshape(-1, 2)
    ok = np.isfinite(diff.ravel())
    coef, *_ = np.linalg.lstsq(design[ok], diff.ravel()[ok], rcond=None)
    left = diff - (design @ coef).reshape(diff.shape)
    seen = np.isfinite(left)  # flagged: NaN
    squares = np.where(seen, left, 0.0) ** 2
    count = seen.sum(axis=(0, 1))
    per_station = np.sqrt(squares.sum(axis=(0, 1)) / np.maximum(count, 1))  # 0 without data
    worst = int(np.argmax(per_station))
    return {
        "rms_rad": float(np.sqrt(squares.sum() / count.sum())),
        "offset_rad": float(np.hypot(*coef)),
        "worst_station": worst,
        "worst_station_rms_rad": float(per_station[worst]),
    }


def peak_near(image: np.ndarray, x: float, y: float, radius: int = 2) -> tuple[float, float, float]:
    """Peak value near pixel (x, y) and its sub-pixel position.

    The brightest pixel within ``radius`` is refined by a quadratic fit to the logarithm of its
    3 x 3 neighbourhood (exact for an elliptical Gaussian such as a restored point source),
    falling back to the pixel itself where the neighbourhood is not positive.
    """
    ny, nx = image.shape
    x0, y0 = round(x), round(y)
    ys = slice(max(y0 - radius, 1), min(y0 + radius + 1, ny - 1))
    xs = slice(max(x0 - radius, 1), min(x0 + radius + 1, nx - 1))
    patch = image[ys, xs]
    py, px = np.unravel_index(np.argmax(patch), patch.shape)
    py, px = int(py + ys.start), int(px + xs.start)
    box = image[py - 1 : py + 2, px - 1 : px + 2]
    if box.shape != (3, 3) or np.any(box <= 0):
        return float(image[py, px]), float(px), float(py)
    dy, dx = np.mgrid[-1:2, -1:2]
    design = np.stack(
        [np.ones(9), dx.ravel(), dy.ravel(), dx.ravel() ** 2, dy.ravel() ** 2, (dx * dy).ravel()],
        axis=1,
    )
    c, *_ = np.linalg.lstsq(design, np.log(box).ravel(), rcond=None)
    hess = np.array([[2 * c[3], c[5]], [c[5], 2 * c[4]]])
    if np.any(np.linalg.eigvalsh(hess) >= 0):
        return float(image[py, px]), float(px), float(py)
    ox, oy = np.linalg.solve(hess, -c[1:3])
    if abs(ox) > 1 or abs(oy) > 1:
        return float(image[py, px]), float(px), float(py)
    log_peak = c[0] + c[1] * ox + c[2] * oy + c[3] * ox**2 + c[4] * oy**2 + c[5] * ox * oy
    return float(np.exp(log_peak)), px + float(ox), py + float(oy)


def source_table(
    image: np.ndarray, wcs: WCS, names, ra_deg, dec_deg, true_flux, count: int = 10
) -> list[dict[str, float | str]]:
    """Measured peak flux and position offset of the brightest catalogue sources."""
    rows = []
    for i in np.argsort(true_flux)[::-1][:count]:
        x, y = wcs.celestial.world_to_pixel_values(ra_deg[i], dec_deg[i])
        if not (2 <= x < image.shape[1] - 2 and 2 <= y < image.shape[0] - 2):
            continue
        peak, px, py = peak_near(image, float(x), float(y))
        rows.append(
            {
                "name": str(names[i]),
                "ra_deg": float(ra_deg[i]),
                "dec_deg": float(dec_deg[i]),
                "true_flux_jy": float(true_flux[i]),
                "measured_peak_jy": peak,
                "flux_ratio": peak / float(true_flux[i]),
                "offset_px": float(np.hypot(px - x, py - y)),
            }
        )
    return rows


def step_timings(config_db: str, pb_id: str, running: str | None = None) -> dict[str, Any]:
    """Duration (s) of every finished step of the processing block, from the PB state, and
    the time since step ``running`` started (as the state's timeline counts it)."""
    from steps.configdb import ConfigDB, open_backend

    try:  # one attempt, no retries: the run's own steps have reached this database
        with ConfigDB(open_backend(config_db or None)) as db:
            state = db.run(lambda txn: txn.get_state(pb_id))
        steps = {
            name: entry
            for name, entry in (getattr(state, "steps", None) or {}).items()
            if isinstance(entry, dict)
        }
        timings = {n: e["duration_s"] for n, e in steps.items() if "duration_s" in e}
        started = steps.get(running or "", {}).get("started")
        if started:
            elapsed = time.time() - datetime.datetime.fromisoformat(started).timestamp()
            timings[running] = round(elapsed, 3)
    except Exception as exc:  # timings are informative only: never fail the step over them
        LOG.warning("Step timings unavailable (%s: %s)", type(exc).__name__, exc)
        return {}
    return timings
