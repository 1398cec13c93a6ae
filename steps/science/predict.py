"""Direct Fourier transform of point components to visibilities."""

import math

import numpy as np
from numba import njit

SPEED_OF_LIGHT = 299792458.0


@njit(parallel=False, cache=True, fastmath=False)
def _dft_kernel(
    uvw_m: np.ndarray,
    freqs_hz: np.ndarray,
    l: np.ndarray,  # noqa: E741
    m: np.ndarray,
    n: np.ndarray,
    flux: np.ndarray,
) -> np.ndarray:
    nrow, nchan, nsrc = uvw_m.shape[0], freqs_hz.shape[0], l.shape[0]
    vis = np.zeros((nrow, nchan), dtype=np.complex128)
    scale = -2.0 * math.pi * freqs_hz / SPEED_OF_LIGHT
    for r in range(nrow):
        u, v, w = uvw_m[r, 0], uvw_m[r, 1], uvw_m[r, 2]
        for s in range(nsrc):
            delay = u * l[s] + v * m[s] + w * (n[s] - 1.0)
            for c in range(nchan):
                phase = delay * scale[c]
                vis[r, c] += flux[s, c] * complex(math.cos(phase), math.sin(phase))
    return vis


def dft(
    uvw_m: np.ndarray,
    freqs_hz: np.ndarray,
    l: np.ndarray,  # noqa: E741
    m: np.ndarray,
    n: np.ndarray,
    flux: np.ndarray,
) -> np.ndarray:
    """V[row, chan] = sum_s flux[s, chan] exp(-2 pi i (u l + v m + w (n - 1)) nu / c).

    ``uvw_m`` (nrow, 3) metres, ``freqs_hz`` (nchan,), direction cosines (nsrc,),
    ``flux`` (nsrc, nchan) Jy. No 1/n factor: a point source of flux S has |V| = S.
    """
    freqs = np.atleast_1d(np.asarray(freqs_hz, dtype=np.float64))
    lmn = [np.atleast_1d(np.asarray(x, dtype=np.float64)) for x in (l, m, n)]
    flux = np.asarray(flux, dtype=np.float64).reshape(lmn[0].size, freqs.size)
    uvw = np.ascontiguousarray(uvw_m, dtype=np.float64).reshape(-1, 3)
    return _dft_kernel(uvw, freqs, *lmn, np.ascontiguousarray(flux))
