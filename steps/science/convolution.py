"""Linear 2-D convolution by zero-padded FFTs (ducc0's FFT: no scipy.signal import, ≈ 0.8 s
of every step process that deconvolves or restores)."""

from __future__ import annotations

from collections.abc import Sequence

import ducc0
import numpy as np


def convolve(image: np.ndarray, kernel: np.ndarray, same: bool = True) -> np.ndarray:
    """``image`` (..., ny, nx) convolved with the 2-D ``kernel`` over its last two axes.

    The full result is (..., ny + ky - 1, nx + kx - 1); ``same`` keeps its centre of
    ``image``'s shape (offset ``(k - 1) // 2``, as ``scipy.signal.fftconvolve(mode="same")``).
    Nothing wraps around: both are zero-padded to at least the full size.
    """
    image = np.asarray(image, dtype=np.float64)
    kernel = np.asarray(kernel, dtype=np.float64)
    (ny, nx), (ky, kx) = image.shape[-2:], kernel.shape
    full = (ny + ky - 1, nx + kx - 1)
    padded = tuple(ducc0.fft.good_size(n, True) for n in full)

    def spectrum(a: np.ndarray) -> np.ndarray:
        grid = np.zeros(a.shape[:-2] + padded)
        grid[..., : a.shape[-2], : a.shape[-1]] = a
        return ducc0.fft.r2c(grid, axes=(-2, -1))

    product = spectrum(image) * spectrum(kernel)
    out = ducc0.fft.c2r(
        product,
        axes=(-2, -1),
        lastsize=padded[1],
        forward=False,
        inorm=2,
        allow_overwriting_input=True,  # the product is scratch: no temporary copy
    )
    if not same:
        return out[..., : full[0], : full[1]]
    y0, x0 = (ky - 1) // 2, (kx - 1) // 2
    return out[..., y0 : y0 + ny, x0 : x0 + nx]


class Smoother:
    """'Same'-size convolutions of (ny, nx) images, or stacks of them, with fixed odd-sized
    kernels centred on their middle pixel, as ``convolve`` makes them (zero-padded, nothing
    wraps around), for callers that repeat them: the kernels' spectra are made once, each
    image is transformed once for all kernels, and the FFT grids of one image are allocated
    once."""

    def __init__(self, kernels: Sequence[np.ndarray], shape: tuple[int, int]) -> None:
        if any(k.ndim != 2 or k.shape[0] % 2 == 0 or k.shape[1] % 2 == 0 for k in kernels):
            raise ValueError("Smoother kernels must be 2-D and odd-sized")
        self.shape = (ny, nx) = tuple(shape)
        hy = max(k.shape[0] // 2 for k in kernels)
        hx = max(k.shape[1] // 2 for k in kernels)
        padded = (ducc0.fft.good_size(ny + hy, True), ducc0.fft.good_size(nx + hx, True))
        self._grid = np.zeros(padded)  # the padding stays zero
        self._back = np.empty(padded)
        self._spectrum = ducc0.fft.r2c(self._grid)
        self._product = np.empty_like(self._spectrum)
        self._kernels = [
            float(k[0, 0]) if k.size == 1 else self._centred(k, padded) for k in kernels
        ]

    @staticmethod
    def _centred(kernel: np.ndarray, padded: tuple[int, int]) -> np.ndarray:
        """Spectrum of ``kernel`` with its middle pixel moved to (0, 0), wrapping around:
        the circular convolution of the padded image is then the 'same' one, unshifted."""
        grid = np.zeros(padded)
        ky, kx = kernel.shape
        rows = np.arange(-(ky // 2), ky // 2 + 1) % padded[0]
        cols = np.arange(-(kx // 2), kx // 2 + 1) % padded[1]
        grid[np.ix_(rows, cols)] = kernel
        return ducc0.fft.r2c(grid)

    def __call__(self, images: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``images`` (..., ny, nx) convolved with each kernel into ``out`` (nkernel, ...,
        ny, nx), one image at a time."""
        ny, nx = self.shape
        for index in np.ndindex(images.shape[:-2]):
            image = images[index]
            self._grid[:ny, :nx] = image
            transformed = False
            for target, kernel in zip(out, self._kernels, strict=True):
                if isinstance(kernel, float):  # a 1 x 1 kernel: a scale factor
                    np.multiply(image, kernel, out=target[index])
                    continue
                if not transformed:
                    ducc0.fft.r2c(self._grid, out=self._spectrum)
                    transformed = True
                np.multiply(self._spectrum, kernel, out=self._product)
                ducc0.fft.c2r(
                    self._product,
                    lastsize=self._back.shape[1],
                    forward=False,
                    inorm=2,
                    out=self._back,
                    allow_overwriting_input=True,  # the product is scratch
                )
                target[index] = self._back[:ny, :nx]
        return out
