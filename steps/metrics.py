"""Figures of merit measured against the simulated truth."""

from __future__ import annotations

import numpy as np
from astropy.wcs import WCS


def phase_rms(true_gains: np.ndarray, solved_gains: np.ndarray) -> float:
    """RMS (rad) of solved minus true gain phase, each referenced to station 0 (last axis)."""
    true_ref = true_gains * np.conj(true_gains[..., :1])
    solved_ref = solved_gains * np.conj(solved_gains[..., :1])
    return float(np.sqrt(np.mean(np.angle(solved_ref * np.conj(true_ref)) ** 2)))


def peak_near(image: np.ndarray, x: float, y: float, radius: int = 2) -> tuple[float, float, float]:
    """Peak value near pixel (x, y) and its sub-pixel position (parabolic interpolation)."""
    ny, nx = image.shape
    x0, y0 = round(x), round(y)
    ys = slice(max(y0 - radius, 1), min(y0 + radius + 1, ny - 1))
    xs = slice(max(x0 - radius, 1), min(x0 + radius + 1, nx - 1))
    patch = image[ys, xs]
    py, px = np.unravel_index(np.argmax(patch), patch.shape)
    py, px = py + ys.start, px + xs.start

    def vertex(a: float, b: float, c: float) -> float:
        denominator = a - 2 * b + c
        return 0.0 if denominator == 0 else 0.5 * (a - c) / denominator

    dx = vertex(image[py, px - 1], image[py, px], image[py, px + 1])
    dy = vertex(image[py - 1, px], image[py, px], image[py + 1, px])
    return float(image[py, px]), px + dx, py + dy


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
