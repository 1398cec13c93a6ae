"""Imaging operators: dirty image, PSF and prediction via the ducc0 w-gridder.

Conventions (project-wide): ``uvw`` in metres, model
``V = sum_s S_s exp(-2 pi i (u l + v m + w (n - 1)) nu / c)`` with ``l`` toward east and
``m`` toward north.  Images are indexed ``[y, x]`` with ``y`` north and ``x`` WEST, pixel
``(y, x)`` at ``l = -(x - npix//2) cell``, ``m = (y - npix//2) cell``.

Mapping onto ducc0: ducc0's first image axis is our ``y`` (north), so its first baseline
coordinate must be ``v``; its second axis is our ``x`` (west), paired with ``-u``.  We therefore
pass ``uvw[:, (v, u, w)]`` with ``flip_v=True`` (negates the column holding ``u``) and
``flip_w=True`` (ducc0's native w-term sign is opposite to ours).  Verified against a direct
DFT in ``tests/test_imaging.py``.

``divide_by_n=False`` in both directions: a model pixel holds the flux (Jy) of a point
component, and a point component's visibility has ``|V| = S`` (no ``1/n``), so the forward
operator must not scale by ``1/n``; the adjoint uses the same choice so that ``invert`` is the
exact adjoint of ``predict``.

Precision follows the accuracy asked for: with ``epsilon >= 1e-5`` the gridder runs in single
precision (float32 rounding, 6e-8, is far below its kernel error there; 1.3x faster), below it
in double.  ``dirty`` returns the gridder's precision (the band images of ICAL travel in it);
``invert`` and ``predict`` return double precision.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from ducc0.wgridder.experimental import dirty2vis, vis2dirty

from steps.science import C_M_S

_FLIPS = {"flip_u": False, "flip_v": True, "flip_w": True}
SINGLE_PRECISION_EPSILON = 1e-5
MIN_SIDE = 32  # pixels: the least box predicted (ducc0's documented least image)


def real_type(epsilon: float) -> type[np.floating]:
    """The gridder's real type for an accuracy ``epsilon``."""
    return np.float32 if epsilon >= SINGLE_PRECISION_EPSILON else np.float64


def _ducc_uvw(uvw: np.ndarray) -> np.ndarray:
    """Reorder baseline coordinates to ducc0's axis order (v, u, w)."""
    return np.ascontiguousarray(np.asarray(uvw, dtype=np.float64)[:, (1, 0, 2)])


def dirty(
    uvw: np.ndarray,
    freqs_hz: np.ndarray,
    vis: np.ndarray,
    weight: np.ndarray,
    npixel: int,
    cell_rad: float,
    epsilon: float = 1e-6,
    nthreads: int = 1,
) -> np.ndarray:
    """Weighted sum ``sum_rc w_rc V_rc exp(...)`` over rows and channels (not normalised):
    the adjoint of ``predict``, (npixel, npixel) in the gridder's precision."""
    real = real_type(epsilon)
    return vis2dirty(
        uvw=_ducc_uvw(uvw),
        freq=np.asarray(freqs_hz, dtype=np.float64),
        vis=np.ascontiguousarray(vis, dtype=np.result_type(real, np.complex64)),
        wgt=np.ascontiguousarray(weight, dtype=real),
        npix_x=npixel,
        npix_y=npixel,
        pixsize_x=cell_rad,
        pixsize_y=cell_rad,
        epsilon=epsilon,
        do_wgridding=True,
        divide_by_n=False,
        nthreads=nthreads,
        **_FLIPS,
    )


def invert(
    uvw: np.ndarray,
    freqs_hz: np.ndarray,
    vis: np.ndarray,
    weight: np.ndarray,
    npixel: int,
    cell_rad: float,
    epsilon: float = 1e-6,
    nthreads: int = 1,
) -> tuple[np.ndarray, float]:
    """Dirty image (Jy/beam) summed over all channels, normalised by the sum of weights.

    Returns ``(dirty (npixel, npixel) float64, sumwt)``; the image is zero if ``sumwt == 0``.
    """
    sumwt = float(np.sum(weight, dtype=np.float64))
    if sumwt <= 0.0:
        return np.zeros((npixel, npixel)), 0.0
    image = dirty(uvw, freqs_hz, vis, weight, npixel, cell_rad, epsilon, nthreads)
    return image.astype(np.float64) / sumwt, sumwt


def make_psf(
    uvw: np.ndarray,
    freqs_hz: np.ndarray,
    weight: np.ndarray,
    npixel: int,
    cell_rad: float,
    epsilon: float = 1e-6,
    nthreads: int = 1,
) -> tuple[np.ndarray, float]:
    """Point spread function: ``invert`` of unit visibilities (peak 1 at the centre pixel)."""
    ones = np.ones(np.shape(weight), dtype=np.complex128)
    return invert(uvw, freqs_hz, ones, weight, npixel, cell_rad, epsilon, nthreads)


def predict(
    model: np.ndarray,
    uvw: np.ndarray,
    freqs_hz: np.ndarray,
    cell_rad: float,
    epsilon: float = 1e-6,
    nthreads: int = 1,
) -> np.ndarray:
    """Visibilities ``(nrow, nchan)`` of a Jy/pixel model image (adjoint of ``invert``).

    Only the model's support (``support``) is gridded, centred where it lies in the image:
    the same visibilities to the gridder's accuracy, from a smaller grid with fewer
    w-planes."""
    rows, cols = support(model)
    if rows.start == rows.stop:  # an empty model
        return np.zeros((np.shape(uvw)[0], np.size(freqs_hz)), dtype=np.complex128)
    ny, nx = np.shape(model)
    vis = dirty2vis(
        uvw=_ducc_uvw(uvw),
        freq=np.asarray(freqs_hz, dtype=np.float64),
        dirty=np.ascontiguousarray(model[rows, cols], dtype=real_type(epsilon)),
        pixsize_x=cell_rad,
        pixsize_y=cell_rad,
        center_x=((rows.start + rows.stop) // 2 - ny // 2) * cell_rad,  # m of its centre
        center_y=-((cols.start + cols.stop) // 2 - nx // 2) * cell_rad,  # -l (flip_v)
        epsilon=epsilon,
        do_wgridding=True,
        divide_by_n=False,
        nthreads=nthreads,
        **_FLIPS,
    )
    return vis.astype(np.complex128, copy=False)


def support(model: np.ndarray) -> tuple[slice, slice]:
    """The rows and columns of the smallest box within the image that holds every nonzero
    pixel of ``model``, with even sides of at least ``MIN_SIDE`` pixels (ducc0's least image)
    or the image's own; empty slices for an empty model."""
    box = []
    for axis in (1, 0):
        used = np.flatnonzero(np.any(model, axis=axis))
        size = model.shape[1 - axis]
        if not used.size:
            return slice(0, 0), slice(0, 0)
        side = min(size, max(MIN_SIDE, used[-1] + 1 - used[0]))
        side += side % 2 if side < size else 0
        start = min(max(0, (used[0] + used[-1] + 1 - side) // 2), size - side)
        box.append(slice(start, start + side))
    return box[0], box[1]


def weights(
    uvw: np.ndarray,
    freqs_hz: np.ndarray,
    weight: np.ndarray,
    npixel: int,
    cell_rad: float,
    scheme: Literal["natural", "uniform", "robust"] = "natural",
    robust: float = 0.0,
) -> np.ndarray:
    """Imaging weights ``(nrow, nchan)`` from the input weights.

    The weight density ``W_k`` is the sum of input weights falling in uv cell ``k`` of the
    image's FFT grid (cell ``1/(npixel cell_rad)`` wavelengths, nearest cell), extended as far
    as the samples reach: the baselines an undersampled image cannot hold are not folded
    onto others' cells.  Every sample is gridded at ``(u, v)`` and ``(-u, -v)`` since the
    image is real.  Schemes:

    - ``natural``: ``w_i`` unchanged;
    - ``uniform``: ``w_i / W_cell(i)``;
    - ``robust`` (Briggs): ``f^2 = (5 * 10^-R)^2 / (sum_k W_k^2 / sum_k W_k)``,
      ``w_i / (1 + f^2 W_cell(i))``; ``sum_k W_k`` is the total gridded weight, so the
      denominator is the weight-averaged density.  R = -2 ~ uniform, R = +2 ~ natural.
    """
    wgt = np.asarray(weight, dtype=np.float64)
    if scheme == "natural":
        return wgt.copy()
    if scheme not in ("uniform", "robust"):
        raise ValueError(f"unknown weighting scheme {scheme!r}")
    scale = np.asarray(freqs_hz, dtype=np.float64)[None, :] / C_M_S * npixel * cell_rad
    iu = np.rint(np.asarray(uvw)[:, 0:1] * scale).astype(np.int64)
    iv = np.rint(np.asarray(uvw)[:, 1:2] * scale).astype(np.int64)
    half = int(max(np.abs(iu).max(initial=0), np.abs(iv).max(initial=0)))
    width = 2 * half + 1  # every sample's cell and its mirror's, none folded onto another
    cells = np.concatenate([(iv + half) * width + iu + half, (half - iv) * width + half - iu])
    occupied, index = np.unique(cells, return_inverse=True)
    index = index.reshape(cells.shape)
    density = np.bincount(index.ravel(), np.tile(wgt, (2, 1)).ravel(), occupied.size)
    w_cell = density[index[: len(wgt)]]
    out = np.zeros_like(wgt)
    good = wgt > 0.0
    if scheme == "uniform":
        out[good] = wgt[good] / w_cell[good]
        return out
    f2 = (5.0 * 10.0 ** (-robust)) ** 2 / (np.sum(density**2) / np.sum(density))
    out[good] = wgt[good] / (1.0 + f2 * w_cell[good])
    return out
