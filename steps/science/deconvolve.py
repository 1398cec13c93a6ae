"""Multi-scale and multi-scale multi-frequency (MS-MFS) CLEAN with a numba minor cycle.

One kernel serves both: multi-scale CLEAN is MS-MFS with one channel and one Taylor term.

Model (Rau & Cornwell 2011): the sky is ``I(nu) = sum_t I_t x^t`` with
``x = (nu - nu_ref) / nu_ref`` and each Taylor image ``I_t = sum_s Phi_s * C_{s,t}``, where
``Phi_s`` are unit-sum scale kernels and ``C_{s,t}`` point components.  With channel weights
``W_c`` (the channels' sums of weights) the moment images are weighted means

    D_t = sum_c W_c x_c^t R_c / sum_c W_c,     P_k = sum_c W_c x_c^k PSF_c / sum_c W_c,

so that ``D_t = sum_q P_{t+q} * I_q``.  Per scale ``s`` the smoothed residuals are
``R_{s,t} = Phi_s * D_t``, the coupling PSFs ``P_{s,p,t,q} = Phi_s * Phi_p * P_{t+q}`` and the
Hessian ``H_s[t, q] = P_{s,s,t,q}(0)``.  Each iteration picks the scale and pixel with the largest
chi-squared reduction ``A . R`` of the principal solution ``A = H_s^-1 R_{s,:}(x)``, adds
``gain * A`` to ``C_{s,:}(x)`` and subtracts ``gain * sum_q A_q P_{s,p,t,q}`` (shifted to x, over
the PSF patch) from every ``R_{p,t}``.  It stops when ``sqrt(A . R)`` (for scale 0 and one term
simply |residual|, Jy/beam) falls below ``max(threshold, fractional_threshold * max|D_0|)``.

The peak search keeps the best criterion of every 16 x 16 tile and, after a subtraction,
rescans only the tiles the PSF patch touched, so an iteration costs O(patch area), not
O(image area).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numba import njit

from steps.science import reference_frequency
from steps.science.convolution import Smoother, convolve

TILE = 16


def spheroidal(nu: np.ndarray) -> np.ndarray:
    """Prolate spheroidal wave function (m = 6, alpha = 1), Schwab's rational approximation."""
    nu = np.abs(np.asarray(nu, dtype=np.float64))
    out = np.zeros_like(nu)
    pieces = (
        (0.0, 0.75, 0.75, (8.203343e-2, -3.644705e-1, 6.278660e-1, -5.335581e-1, 2.312756e-1)),
        (
            0.75,
            1.0 + 1e-12,
            1.0,
            (4.028559e-3, -3.697768e-2, 1.021332e-1, -1.201436e-1, 6.412774e-2),
        ),
    )
    qs = ((1.0, 8.212018e-1, 2.078043e-1), (1.0, 9.599102e-1, 2.918724e-1))
    for (lo, hi, end, p), q in zip(pieces, qs, strict=True):
        sel = (nu >= lo) & (nu < hi)
        d = nu[sel] ** 2 - end**2
        out[sel] = np.polyval(p[::-1], d) / np.polyval(q[::-1], d)
    return np.clip(out, 0.0, None)


def scale_kernel(scale: float) -> np.ndarray:
    """Unit-sum scale function of diameter ``scale`` pixels, odd-sized and centred.

    Scale 0 is a delta; otherwise ``psi(r / a) (1 - (r / a)^2)`` with ``a = scale / 2`` and
    ``psi`` the spheroidal function, zero beyond ``r = a``.
    """
    if scale <= 0:
        return np.ones((1, 1))
    radius = scale / 2.0
    half = int(np.ceil(radius))
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    r = np.hypot(*np.meshgrid(offsets, offsets, indexing="ij")) / radius
    kernel = np.where(r < 1.0, spheroidal(r) * (1.0 - r**2), 0.0)
    return kernel / kernel.sum()


def taylor_weights(
    freqs_hz: Sequence[float] | np.ndarray, ref_hz: float, nmoment: int
) -> np.ndarray:
    """``x_c^t`` with ``x_c = (nu_c - nu_ref) / nu_ref``: shape (nmoment, nchan)."""
    x = (np.asarray(freqs_hz, dtype=np.float64) - ref_hz) / ref_hz
    return x[None, :] ** np.arange(nmoment)[:, None]


def moments(cube: Iterable[np.ndarray], taylor: np.ndarray, chan_weights: np.ndarray) -> np.ndarray:
    """Weighted moment images ``sum_c W_c x_c^t cube_c / sum_c W_c``: (nterm, ny, nx).

    ``cube`` is a cube or any iterable of its channel images (of any float type, read from a
    store one at a time), one per weight, accumulated one at a time in float64, so that no
    float64 copy of the whole cube is made."""
    w = np.asarray(chan_weights, dtype=np.float64)
    coeff = taylor * (w / w.sum())[None, :]
    out = None
    for c, image in zip(range(coeff.shape[1]), cube, strict=True):
        if out is None:
            out = np.zeros((coeff.shape[0], *np.shape(image)))
        for t in range(coeff.shape[0]):
            out[t] += coeff[t, c] * image
    if out is None:
        raise ValueError("moments of no channel")
    return out


def clean_window(
    npixel: int, shape: Literal["none", "quarter", "no_edge"] = "none", edge: int = 16
) -> np.ndarray | None:
    """Boolean clean window: the whole image (None), its inner half, or all but an edge."""
    if shape == "none":
        return None
    mask = np.zeros((npixel, npixel), dtype=np.bool_)
    lo = npixel // 4 if shape == "quarter" else edge
    if shape not in ("quarter", "no_edge"):
        raise ValueError(f"unknown window shape {shape!r}")
    mask[lo : npixel - lo, lo : npixel - lo] = True
    return mask


@njit(cache=True, fastmath=True)
def _update_criterion(
    res: np.ndarray, hinv: np.ndarray, crit: np.ndarray, p: int, y0: int, y1: int, x0: int, x1: int
) -> None:
    """Chi-squared reduction ``R^T H_p^-1 R`` of scale p over rows y0:y1, columns x0:x1."""
    nt = res.shape[1]
    h = hinv[p]
    r = res[p]
    c = crit[p]
    for y in range(y0, y1):
        for x in range(x0, x1):
            total = 0.0
            for t in range(nt):
                a = 0.0
                for m in range(nt):
                    a += h[t, m] * r[m, y, x]
                total += a * r[t, y, x]
            c[y, x] = total


@njit(cache=True)
def _scan_tiles(
    crit: np.ndarray,
    mask: np.ndarray,
    tmax: np.ndarray,
    targ: np.ndarray,
    p: int,
    y0: int,
    y1: int,
    x0: int,
    x1: int,
) -> None:
    """Refresh the best masked criterion (and its flat index) of the tiles touching a box."""
    ny, nx = crit.shape[1], crit.shape[2]
    c = crit[p]
    mp = mask[p]
    for ty in range(y0 // TILE, (y1 - 1) // TILE + 1):
        for tx in range(x0 // TILE, (x1 - 1) // TILE + 1):
            best = -1.0
            arg = -1
            for y in range(ty * TILE, min(ny, (ty + 1) * TILE)):
                for x in range(tx * TILE, min(nx, (tx + 1) * TILE)):
                    if mp[y, x] and c[y, x] > best:
                        best = c[y, x]
                        arg = y * nx + x
            tmax[p, ty, tx] = best
            targ[p, ty, tx] = arg


@njit(cache=True, fastmath=True)
def _subtract(
    res: np.ndarray,
    kernels: np.ndarray,
    hinv: np.ndarray,
    crit: np.ndarray,
    amp: np.ndarray,
    py: int,
    px: int,
    half: int,
) -> tuple[int, int, int, int]:
    """``R_{p,t} -= sum_q amp_q P_{p,t+q}`` shifted to (py, px), refreshing the criterion.

    Row by row, so that every inner loop is a contiguous (vectorised) pass over data in
    cache; returns the box touched.
    """
    ns, nt, ny, nx = res.shape
    y0, y1 = max(0, py - half), min(ny, py + half)
    x0, x1 = max(0, px - half), min(nx, px + half)
    kx0 = x0 - px + half
    width = x1 - x0
    for p in range(ns):
        r = res[p]
        k = kernels[p]
        h = hinv[p]
        c = crit[p]
        for y in range(y0, y1):
            ky = y - py + half
            for t in range(nt):
                rrow = r[t, y, x0:x1]
                for q in range(nt):
                    aq = amp[q]
                    krow = k[t + q, ky, kx0 : kx0 + width]
                    for i in range(width):
                        rrow[i] -= aq * krow[i]
            crow = c[y, x0:x1]
            crow[:] = 0.0
            for t in range(nt):
                rt = r[t, y, x0:x1]
                for m in range(nt):
                    htm = h[t, m]
                    rm = r[m, y, x0:x1]
                    for i in range(width):
                        crow[i] += htm * rm[i] * rt[i]
    return y0, y1, x0, x1


@njit(cache=True)
def _msmfs_kernel(
    res: np.ndarray,
    hinv: np.ndarray,
    psfs: np.ndarray,
    found: np.ndarray,
    amps: np.ndarray,
    crit: np.ndarray,
    mask: np.ndarray,
    gain: float,
    niter: int,
    threshold: float,
) -> int:
    """Clean ``res`` (ns, nt, ny, nx) in place; return the number of components n, whose
    (scale, y, x) are ``found[:n]`` and Taylor amplitudes ``amps[:n]`` (niter, nt).

    ``psfs`` (ns, ns, 2 nt - 1, 2S, 2S) hold ``P_{s,p,k}`` centred at (S, S); ``hinv``
    (ns, nt, nt); ``crit`` (ns, ny, nx) is working memory for the criterion; ``mask``
    (ns, ny, nx) where each scale may place components.
    """
    ns, nt, ny, nx = res.shape
    half = psfs.shape[-1] // 2
    nty = (ny + TILE - 1) // TILE
    ntx = (nx + TILE - 1) // TILE
    tmax = np.empty((ns, nty, ntx))
    targ = np.empty((ns, nty, ntx), np.int64)
    for s in range(ns):
        _update_criterion(res, hinv, crit, s, 0, ny, 0, nx)
        _scan_tiles(crit, mask, tmax, targ, s, 0, ny, 0, nx)
    limit = threshold * threshold
    for it in range(niter):
        best = -1.0
        bs = 0
        bidx = -1
        for s in range(ns):
            for ty in range(nty):
                for tx in range(ntx):
                    if tmax[s, ty, tx] > best:
                        best = tmax[s, ty, tx]
                        bs = s
                        bidx = targ[s, ty, tx]
        if bidx < 0 or best < limit or best <= 0.0:
            return it
        py, px = bidx // nx, bidx % nx
        found[it, 0], found[it, 1], found[it, 2] = bs, py, px
        amp = amps[it]
        for t in range(nt):
            a = 0.0
            for m in range(nt):
                a += hinv[bs, t, m] * res[bs, m, py, px]
            amp[t] = gain * a
        y0, y1, x0, x1 = _subtract(res, psfs[bs], hinv, crit, amp, py, px, half)
        for p in range(ns):
            _scan_tiles(crit, mask, tmax, targ, p, y0, y1, x0, x1)
    return niter


@dataclass(frozen=True, eq=False)
class CleanResult:
    """Taylor model images (nmoment, ny, nx) Jy/pixel, moment residuals, components, threshold.

    ``residual`` holds the residual moments after cleaning (Jy/beam, moment 0 the weighted
    mean) smoothed by the first scale: ``D_t`` itself when that scale is 0 (the default).
    """

    model: np.ndarray
    residual: np.ndarray
    ncomponents: int
    threshold: float


def _crop(image: np.ndarray, half: int) -> np.ndarray:
    """The ``2 half`` square of ``image`` centred on pixel (ny//2, nx//2), zero-padded."""
    ny, nx = image.shape
    out = np.zeros((2 * half, 2 * half))
    cy, cx = ny // 2, nx // 2
    y0, x0 = max(0, cy - half), max(0, cx - half)
    y1, x1 = min(ny, cy + half), min(nx, cx + half)
    out[y0 - cy + half : y1 - cy + half, x0 - cx + half : x1 - cx + half] = image[y0:y1, x0:x1]
    return out


def _stamp(
    model: np.ndarray, kernels: Sequence[np.ndarray], found: np.ndarray, amps: np.ndarray
) -> None:
    """Add each component's scale kernel times its Taylor amplitudes to ``model`` (nt, ny,
    nx); components lie where their whole kernel fits (the kernel's mask)."""
    for (s, y, x), amp in zip(found, amps, strict=True):
        kernel = kernels[s]
        h = kernel.shape[0] // 2
        model[:, y - h : y + h + 1, x - h : x + h + 1] += amp[:, None, None] * kernel


def msmfs(
    dirty: np.ndarray,
    psf: np.ndarray,
    freqs_hz: Sequence[float] | np.ndarray,
    chan_weights: Sequence[float] | np.ndarray | None = None,
    nmoment: int = 2,
    scales: Sequence[float] = (0, 3, 10),
    gain: float = 0.25,
    niter: int = 1000,
    threshold: float = 0.0,
    fractional_threshold: float = 0.1,
    window: np.ndarray | None = None,
    psf_support: int | None = 128,
    ref_hz: float | None = None,
) -> CleanResult:
    """MS-MFS CLEAN of a dirty cube (nchan, ny, nx) with its PSF cube (peak 1 at the centre);
    either may be a sequence of channel images (nothing is stacked).

    ``chan_weights`` are the channels' sums of weights (default equal); the reference
    frequency defaults to the mean of ``freqs_hz``.  ``psf_support`` limits the PSF patch to
    that many pixels either side of a component (None: the image's size); a PSF smaller
    than the patch is zero-padded, so that its sidelobes beyond are left to a major cycle
    (a PSF twice the image covers every component).  ``nmoment`` is reduced to the number
    of channels if larger.  A scale's components keep their whole kernel
    inside the image (otherwise model and residual updates would disagree at the edges).
    """
    cube = [dirty] if np.ndim(dirty) == 2 else dirty
    psfs_in = [psf] if np.ndim(psf) == 2 else psf
    nchan = len(cube)
    freqs = np.asarray(freqs_hz, dtype=np.float64).reshape(nchan)
    w = np.ones(nchan) if chan_weights is None else np.asarray(chan_weights, dtype=np.float64)
    ref = reference_frequency(freqs) if ref_hz is None else float(ref_hz)
    nt = min(nmoment, nchan)
    taylor = taylor_weights(freqs, ref, 2 * nt - 1)
    extent = max(np.shape(cube[0])) if psf_support is None else int(psf_support)
    margin = max(scale_kernel(s).shape[0] for s in scales)
    pmom = moments([_crop(p, extent + margin) for p in psfs_in], taylor, w)
    shape = np.shape(cube[0])
    clean = Cleaner(couplings_of(pmom, shape, scales, psf_support), shape)
    return clean(
        moments(cube, taylor[:nt], w), gain, niter, threshold, fractional_threshold, window
    )


@dataclass(frozen=True, eq=False)
class Couplings:
    """The PSF side of MS-MFS CLEAN, fixed for given PSF moments and scales (an ICAL makes it
    once for all its minor cycles): the scale kernels, the coupling PSFs ``P_{s,p,k}`` over
    the patch (ns, ns, 2 nt - 1, 2 half, 2 half) and the inverse Hessians (ns, nt, nt), the
    last two divided by the PSF's ``peak``."""

    kernels: tuple[np.ndarray, ...]
    psfs: np.ndarray
    hinv: np.ndarray
    peak: float


def couplings_of(
    pmom: np.ndarray,
    shape: tuple[int, int],
    scales: Sequence[float] = (0, 3, 10),
    psf_support: int | None = 128,
) -> Couplings:
    """The ``Couplings`` of the PSF moments ``P_k`` (2 nt - 1, any size, centred on its
    (ny//2, nx//2) pixel) for images of ``shape``; ``psf_support`` limits the patch to that
    many pixels either side of a component (None: the image's size; moments smaller than
    the patch are zero-padded)."""
    kernels = tuple(scale_kernel(s) for s in scales)
    ns, nt = len(kernels), (len(pmom) + 1) // 2
    margin = max(k.shape[0] for k in kernels)
    half = max(shape) if psf_support is None else min(int(psf_support), max(shape))
    pmom = np.stack([_crop(p, half + margin) for p in pmom])
    peak = float(pmom[0, half + margin, half + margin])
    pmom /= peak
    psfs = np.empty((ns, ns, 2 * nt - 1, 2 * half, 2 * half))
    inner = slice(margin, margin + 2 * half)
    for s in range(ns):
        for p in range(s, ns):
            both = convolve(kernels[s], kernels[p], same=False)
            psfs[s, p] = psfs[p, s] = _smooth(pmom, both)[:, inner, inner]
    idx = np.arange(nt)
    hess = psfs[np.arange(ns), np.arange(ns)][:, idx[:, None] + idx[None, :], half, half]
    return Couplings(kernels, psfs, np.linalg.inv(hess), peak)


def _smooth(images: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``images`` (..., ny, nx) convolved with a scale kernel (itself if a delta)."""
    return images if kernel.size == 1 else convolve(images, kernel)


class Cleaner:
    """MS-MFS CLEAN of residual moments (nt, ny, nx) with the ``couplings`` of their PSF
    moments (see ``msmfs``), called once per minor cycle of an ICAL: the working memory
    (smoothed residuals, criterion, FFT grids: some fifteen images with three scales and two
    terms) is allocated once and reused, since the first touch of fresh large arrays costs
    page faults in every cycle, and far more where the kernel compacts memory for NumPy's
    huge pages."""

    def __init__(self, couplings: Couplings, shape: tuple[int, int]) -> None:
        ns, nt = len(couplings.kernels), couplings.hinv.shape[1]
        self.couplings = couplings
        self._smoother = Smoother(couplings.kernels, shape)
        self._res = np.empty((ns, nt, *shape))
        self._crit = np.empty((ns, *shape))

    def __call__(
        self,
        dmom: np.ndarray,
        gain: float = 0.25,
        niter: int = 1000,
        threshold: float = 0.0,
        fractional_threshold: float = 0.1,
        window: np.ndarray | None = None,
    ) -> CleanResult:
        """Clean the residual moments ``D_t`` (nt, ny, nx) (see ``msmfs``)."""
        couplings, res = self.couplings, self._res
        ns, nt, ny, nx = res.shape
        if len(dmom) != nt:
            raise ValueError(f"{len(dmom)} residual moments, but couplings for {nt}")
        if dmom.shape[1:] != (ny, nx):
            raise ValueError(f"residual moments of {dmom.shape[1:]} pixels, made for {(ny, nx)}")
        self._smoother(dmom, res)
        res /= couplings.peak
        t_abs = max(
            threshold, fractional_threshold * float(np.max(np.abs(dmom[0]))) / couplings.peak
        )
        allowed = np.ones((ny, nx), np.bool_) if window is None else np.asarray(window, np.bool_)
        # a scale's components keep their whole kernel inside the image
        mask = np.zeros((ns, ny, nx), np.bool_)
        for s, kernel in enumerate(couplings.kernels):
            h = kernel.shape[0] // 2
            mask[s, h : ny - h, h : nx - h] = allowed[h : ny - h, h : nx - h]
        found = np.empty((niter, 3), np.int64)  # (scale, y, x) and Taylor amplitudes
        amps = np.empty((niter, nt))
        n = _msmfs_kernel(
            res, couplings.hinv, couplings.psfs, found, amps, self._crit, mask, gain, niter, t_abs
        )
        model = np.zeros((nt, ny, nx))
        _stamp(model, couplings.kernels, found[:n], amps[:n])
        return CleanResult(
            model=model, residual=res[0] * couplings.peak, ncomponents=int(n), threshold=t_abs
        )


def msclean(
    dirty: np.ndarray,
    psf: np.ndarray,
    scales: Sequence[float] = (0, 3, 10),
    gain: float = 0.25,
    niter: int = 1000,
    threshold: float = 0.0,
    fractional_threshold: float = 0.1,
    window: np.ndarray | None = None,
    psf_support: int | None = 128,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Multi-scale CLEAN of one image; returns ``(model Jy/pixel, residual, ncomponents)``,
    the residual smoothed by the first scale (unsmoothed when it is 0, the default)."""
    result = msmfs(
        dirty,
        psf,
        [1.0],
        nmoment=1,
        scales=scales,
        gain=gain,
        niter=niter,
        threshold=threshold,
        fractional_threshold=fractional_threshold,
        window=window,
        psf_support=psf_support,
    )
    return result.model[0], result.residual[0], result.ncomponents
