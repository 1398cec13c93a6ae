"""Direct Fourier transform of point and elliptical Gaussian components to visibilities.

A Gaussian of flux S, FWHM ``a`` (major) and ``b`` (minor) radians with the major axis at
position angle ``p`` east of north has brightness
``I(l, m) = S / (2 pi s_a s_b) exp(-x^2 / (2 s_a^2) - y^2 / (2 s_b^2))`` about its centre
(flat-sky, in its own tangent plane), ``s = FWHM / sqrt(8 ln 2)``, with ``x = l sin p + m cos p``
along the major axis and ``y = l cos p - m sin p``.  Its Fourier transform at ``(u, v)``
wavelengths rotates the same way: with ``u_a = u sin p + v cos p`` and
``u_b = u cos p - v sin p``,
``V = S exp(-2 pi^2 (s_a^2 u_a^2 + s_b^2 u_b^2)) = S exp(-pi^2 (a^2 u_a^2 + b^2 u_b^2) / (4 ln 2))``
times the phase ``exp(-2 pi i (u l + v m + w (n - 1)))`` of its centre.
"""

import math

import numpy as np
from numba import njit

from steps.science import C_M_S

GAUSS_FACTOR = math.pi**2 / (4.0 * math.log(2.0))


@njit(parallel=False, cache=True, fastmath=False)
def _dft_kernel(
    uvw_m: np.ndarray,
    freqs_hz: np.ndarray,
    l: np.ndarray,  # noqa: E741
    m: np.ndarray,
    n: np.ndarray,
    flux: np.ndarray,
    shape: np.ndarray,
) -> np.ndarray:
    nrow, nchan, nsrc = uvw_m.shape[0], freqs_hz.shape[0], l.shape[0]
    vis = np.zeros((nrow, nchan), dtype=np.complex128)
    scale = -2.0 * math.pi * freqs_hz / C_M_S
    wavelengths = freqs_hz / C_M_S
    for r in range(nrow):
        u, v, w = uvw_m[r, 0], uvw_m[r, 1], uvw_m[r, 2]
        for s in range(nsrc):
            delay = u * l[s] + v * m[s] + w * (n[s] - 1.0)
            major, minor, pa = shape[s, 0], shape[s, 1], shape[s, 2]
            extent = 0.0  # (a^2 u_a^2 + b^2 u_b^2) in metres^2; times (nu/c)^2 per channel
            if major > 0.0:
                sp, cp = math.sin(pa), math.cos(pa)
                ua, ub = u * sp + v * cp, u * cp - v * sp
                extent = GAUSS_FACTOR * ((major * ua) ** 2 + (minor * ub) ** 2)
            for c in range(nchan):
                phase = delay * scale[c]
                amp = flux[s, c]
                if extent > 0.0:
                    amp *= math.exp(-extent * wavelengths[c] ** 2)
                vis[r, c] += amp * complex(math.cos(phase), math.sin(phase))
    return vis


def dft(
    uvw_m: np.ndarray,
    freqs_hz: np.ndarray,
    l: np.ndarray,  # noqa: E741
    m: np.ndarray,
    n: np.ndarray,
    flux: np.ndarray,
    shape: np.ndarray | None = None,
) -> np.ndarray:
    """V[row, chan] = sum_s flux[s, chan] G_s(u, v) exp(-2 pi i (u l + v m + w (n - 1)) nu / c).

    ``uvw_m`` (nrow, 3) metres, ``freqs_hz`` (nchan,), direction cosines (nsrc,),
    ``flux`` (nsrc, nchan) Jy, ``shape`` (nsrc, 3): major and minor FWHM (rad) and position
    angle (rad, east of north) of Gaussian components, zeros (or None) for points (G = 1).
    No 1/n factor: a point source of flux S has |V| = S.
    """
    freqs = np.atleast_1d(np.asarray(freqs_hz, dtype=np.float64))
    lmn = [np.atleast_1d(np.asarray(x, dtype=np.float64)) for x in (l, m, n)]
    nsrc = lmn[0].size
    flux = np.asarray(flux, dtype=np.float64).reshape(nsrc, freqs.size)
    shape = np.zeros((nsrc, 3)) if shape is None else np.asarray(shape, dtype=np.float64)
    uvw = np.ascontiguousarray(uvw_m, dtype=np.float64).reshape(-1, 3)
    return _dft_kernel(
        uvw, freqs, *lmn, np.ascontiguousarray(flux), np.ascontiguousarray(shape.reshape(nsrc, 3))
    )
