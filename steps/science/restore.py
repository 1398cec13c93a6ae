"""Clean-beam fitting and restoration.

Sky-oriented pixel offsets: for image pixel ``(y, x)`` and centre ``c = npix//2``,
``east = -(x - c)`` (x increases west) and ``north = y - c``.  The clean beam is
``G = exp(-(a^2 / sigma_major^2 + b^2 / sigma_minor^2) / 2)`` with ``a`` along the major axis,
which points at position angle ``theta`` measured from north through east (FITS BPA):
``a = east sin(theta) + north cos(theta)``, ``b = east cos(theta) - north sin(theta)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, optimize

from steps.science.convolution import convolve

FWHM_PER_SIGMA = float(np.sqrt(8.0 * np.log(2.0)))
LOBE_LEVEL = 0.35


@dataclass(frozen=True)
class Beam:
    """Elliptical Gaussian clean beam: FWHM in degrees, BPA east of north; sigmas in pixels."""

    bmaj_deg: float
    bmin_deg: float
    bpa_deg: float
    sigma_major_px: float
    sigma_minor_px: float
    theta_rad: float


def _gaussian(
    east: np.ndarray, north: np.ndarray, s_maj: float, s_min: float, theta: float
) -> np.ndarray:
    """Unit-peak elliptical Gaussian at the given sky-oriented pixel offsets."""
    a = east * np.sin(theta) + north * np.cos(theta)
    b = east * np.cos(theta) - north * np.sin(theta)
    return np.exp(-0.5 * ((a / s_maj) ** 2 + (b / s_min) ** 2))


def fit_clean_beam(psf: np.ndarray, cell_rad: float) -> Beam:
    """Fit a unit-peak elliptical Gaussian (no offset) to the PSF main lobe.

    The fitted pixels are the connected region around the centre pixel ``(npix//2, npix//2)``
    where ``psf >= 0.35 * peak``, plus the 3x3 core.  Unlike a fixed box (e.g. 15x15) this
    follows the main lobe for any beam size in pixels and keeps sidelobes out of the fit,
    while 0.35 (below half power) leaves enough pixels to constrain the shape.
    """
    cy, cx = psf.shape[0] // 2, psf.shape[1] // 2
    norm = np.asarray(psf, dtype=np.float64) / psf[cy, cx]
    labels, _ = ndimage.label(norm >= LOBE_LEVEL)
    region = labels == labels[cy, cx]
    region[cy - 1 : cy + 2, cx - 1 : cx + 2] = True
    ys, xs = np.nonzero(region)
    east = -(xs - cx).astype(np.float64)
    north = (ys - cy).astype(np.float64)
    values = norm[ys, xs]

    # initial guess from the second moments of the lobe
    cov = np.cov(np.vstack([east, north]), aweights=np.clip(values, 1e-6, None))
    evals, evecs = np.linalg.eigh(cov)
    s0 = np.sqrt(np.clip(evals[::-1], 0.25, None))
    theta0 = float(np.arctan2(evecs[0, 1], evecs[1, 1]))

    def resid(p: np.ndarray) -> np.ndarray:
        return _gaussian(east, north, p[0], p[1], p[2]) - values

    fit = optimize.least_squares(
        resid, [s0[0], s0[1], theta0], bounds=([1e-3, 1e-3, -np.inf], [np.inf, np.inf, np.inf])
    )
    s_maj, s_min, theta = fit.x
    if s_maj < s_min:
        s_maj, s_min, theta = s_min, s_maj, theta + np.pi / 2
    theta = float(np.pi / 2 - np.mod(np.pi / 2 - theta, np.pi))  # into (-pi/2, pi/2]
    cell_deg = float(np.degrees(cell_rad))
    return Beam(
        bmaj_deg=float(s_maj) * FWHM_PER_SIGMA * cell_deg,
        bmin_deg=float(s_min) * FWHM_PER_SIGMA * cell_deg,
        bpa_deg=float(np.degrees(theta)),
        sigma_major_px=float(s_maj),
        sigma_minor_px=float(s_min),
        theta_rad=theta,
    )


def beam_kernel(beam: Beam, half_width: int) -> np.ndarray:
    """Unit-peak clean-beam image of shape (2 half_width + 1)^2, centred, indexed [y, x]."""
    offsets = np.arange(-half_width, half_width + 1, dtype=np.float64)
    north, x = np.meshgrid(offsets, offsets, indexing="ij")
    return _gaussian(-x, north, beam.sigma_major_px, beam.sigma_minor_px, beam.theta_rad)


def restore(model: np.ndarray, residual: np.ndarray, beam: Beam) -> np.ndarray:
    """Restored image ``model * G + residual`` (Jy/beam) for images indexed [..., y, x].

    The convolution is linear (zero-padded FFT), so nothing wraps around the image edges.
    """
    npix = max(model.shape[-2:])
    half = int(min(np.ceil(8.0 * beam.sigma_major_px), npix))
    return convolve(model, beam_kernel(beam, half)) + residual
