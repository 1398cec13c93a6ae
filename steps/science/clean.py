"""Hogbom CLEAN (image-plane, single channel) with a numba minor-cycle kernel."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _row_peak(row: np.ndarray, mask: np.ndarray) -> tuple[float, int]:
    """Largest |value| of a row restricted to ``mask`` and its column (-1 if none)."""
    best = -1.0
    arg = -1
    for x in range(row.size):
        if mask[x]:
            a = abs(row[x])
            if a > best:
                best = a
                arg = x
    return best, arg


@njit(cache=True)
def _hogbom_kernel(
    residual: np.ndarray,
    model: np.ndarray,
    psf: np.ndarray,
    mask: np.ndarray,
    gain: float,
    niter: int,
    threshold: float,
    support: int,
) -> int:
    """Clean ``residual`` in place, adding components to ``model``; return their number.

    The peak search keeps the masked |max| of every row, so after a subtraction only the
    rows overlapped by the PSF patch are rescanned.
    """
    ny, nx = residual.shape
    cy, cx = psf.shape[0] // 2, psf.shape[1] // 2
    psf_peak = psf[cy, cx]
    rowmax = np.empty(ny)
    rowarg = np.empty(ny, np.int64)
    for y in range(ny):
        rowmax[y], rowarg[y] = _row_peak(residual[y], mask[y])
    for it in range(niter):
        py = int(np.argmax(rowmax))
        if rowarg[py] < 0 or rowmax[py] < threshold or rowmax[py] == 0.0:
            return it
        px = rowarg[py]
        amp = gain * residual[py, px] / psf_peak
        model[py, px] += amp
        # PSF pixel (cy + dy, cx + dx) lands on image pixel (py + dy, px + dx)
        y0 = max(0, py - cy, py - support)
        y1 = min(ny, py - cy + psf.shape[0], py + support + 1)
        x0 = max(0, px - cx, px - support)
        x1 = min(nx, px - cx + psf.shape[1], px + support + 1)
        for y in range(y0, y1):
            prow = psf[y - py + cy]
            rrow = residual[y]
            for x in range(x0, x1):
                rrow[x] -= amp * prow[x - px + cx]
            rowmax[y], rowarg[y] = _row_peak(rrow, mask[y])
    return niter


def hogbom(
    dirty: np.ndarray,
    psf: np.ndarray,
    gain: float = 0.1,
    niter: int = 1000,
    threshold: float = 0.0,
    fractional_threshold: float = 0.1,
    window: np.ndarray | None = None,
    psf_support: int | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Hogbom CLEAN of a 2-D dirty image.

    ``psf`` is centred at ``(ny//2, nx//2)`` of its own array (any even or odd size).  Each
    iteration takes the masked peak of |residual|, adds ``gain * peak / psf_peak`` to the model
    there and subtracts the same multiple of the PSF over its overlap with the image (clipped to
    ``psf_support`` pixels either side of the peak if given).  Stops when the peak falls below
    ``max(threshold, fractional_threshold * max|dirty|)`` or after ``niter`` components.
    ``window`` is a boolean mask of pixels allowed to receive components.

    Returns ``(model Jy/pixel, residual, ncomponents)``.
    """
    residual = np.array(dirty, dtype=np.float64, order="C")
    model = np.zeros_like(residual)
    if window is None:
        mask = np.ones(residual.shape, dtype=np.bool_)
    else:
        mask = np.ascontiguousarray(window, dtype=np.bool_)
        if mask.shape != residual.shape:
            raise ValueError("window must have the shape of the dirty image")
    psf64 = np.ascontiguousarray(psf, dtype=np.float64)
    support = max(residual.shape + psf64.shape) if psf_support is None else int(psf_support)
    t_abs = max(threshold, fractional_threshold * float(np.max(np.abs(residual))))
    ncomp = _hogbom_kernel(residual, model, psf64, mask, gain, niter, t_abs, support)
    return model, residual, int(ncomp)
