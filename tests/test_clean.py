"""Hogbom CLEAN on dirty images built from shifted copies of a real PSF."""

import numpy as np
import pytest

from steps.science.clean import hogbom
from steps.science.imaging import make_psf

NPIX = 128
CELL = np.deg2rad(0.05)
SOURCES = [(64, 64, 10.0), (40, 90, 5.0), (95, 30, -3.0)]


@pytest.fixture(scope="module")
def psf() -> np.ndarray:
    rng = np.random.default_rng(5)
    uvw = rng.standard_normal((400, 3)) * [150.0, 150.0, 30.0]
    freqs = np.array([1e8, 1.05e8])
    image, _ = make_psf(uvw, freqs, np.ones((400, 2)), NPIX, CELL)
    return image


def _dirty(psf: np.ndarray) -> np.ndarray:
    """Sum of PSF copies shifted to each source (zero outside the PSF, no wrap-around)."""
    big = np.zeros((3 * NPIX, 3 * NPIX))
    for y, x, flux in SOURCES:
        oy, ox = NPIX + y - NPIX // 2, NPIX + x - NPIX // 2
        big[oy : oy + NPIX, ox : ox + NPIX] += flux * psf
    return big[NPIX : 2 * NPIX, NPIX : 2 * NPIX]


def test_psf_copy_helper(psf: np.ndarray) -> None:
    dirty = _dirty(psf)
    y, x = 50, 70
    c = NPIX // 2
    expected = sum(f * psf[y - yy + c, x - xx + c] for yy, xx, f in SOURCES)
    assert dirty[y, x] == pytest.approx(expected)


def test_hogbom_recovers_components(psf: np.ndarray) -> None:
    dirty = _dirty(psf)
    model, residual, ncomp = hogbom(dirty, psf, niter=20000, fractional_threshold=1e-5)
    assert 0 < ncomp < 20000
    assert np.max(np.abs(residual)) < 1e-3 * np.max(np.abs(dirty))
    for y, x, flux in SOURCES:
        assert model[y, x] == pytest.approx(flux, rel=1e-3)
    others = model.copy()
    for y, x, _ in SOURCES:
        others[y, x] = 0.0
    assert np.max(np.abs(others)) < 1e-3 * 10.0


def test_hogbom_thresholds(psf: np.ndarray) -> None:
    dirty = _dirty(psf)
    peak = np.max(np.abs(dirty))
    _, residual, ncomp = hogbom(dirty, psf, niter=20000, fractional_threshold=0.2)
    assert ncomp > 0
    assert 0.2 * peak * 0.9 <= np.max(np.abs(residual)) < 0.2 * peak
    _, _, ncomp = hogbom(dirty, psf, threshold=2 * peak)
    assert ncomp == 0
    _, _, ncomp = hogbom(dirty, psf, niter=7, fractional_threshold=0.0)
    assert ncomp == 7


def test_hogbom_window_and_support(psf: np.ndarray) -> None:
    dirty = _dirty(psf)
    window = np.zeros(dirty.shape, bool)
    window[20:60, 70:110] = True  # holds only the second source
    model, _, ncomp = hogbom(dirty, psf, niter=2000, fractional_threshold=0.0, window=window)
    assert ncomp > 0
    assert np.all(model[~window] == 0.0)
    assert np.unravel_index(np.argmax(np.abs(model)), model.shape) == SOURCES[1][:2]
    # a small support only changes the residual near each component
    model_s, residual_s, _ = hogbom(dirty, psf, niter=1, psf_support=5)
    y, x, _ = SOURCES[0]
    assert model_s[y, x] == pytest.approx(0.1 * dirty[y, x])
    changed = np.argwhere(residual_s != dirty)
    assert np.all(np.abs(changed - [y, x]) <= 5)
