"""Multi-scale and MS-MFS CLEAN on dirty images built from shifted copies of real PSFs."""

import numpy as np
import pytest

from steps.science import deconvolve
from steps.science.clean import hogbom
from steps.science.convolution import convolve
from steps.science.imaging import make_psf

NPIX = 128
CELL = np.deg2rad(0.05)
FREQS = np.linspace(0.9e8, 1.1e8, 5)
REF = float(FREQS.mean())


@pytest.fixture(scope="module")
def big_psfs() -> np.ndarray:
    """PSFs (nchan, 2 NPIX, 2 NPIX) per channel, so that any shift covers the image."""
    rng = np.random.default_rng(5)
    uvw = rng.standard_normal((600, 3)) * [150.0, 150.0, 30.0]
    return np.stack(
        [make_psf(uvw, FREQS[c : c + 1], np.ones((600, 1)), 2 * NPIX, CELL)[0] for c in range(5)]
    )


def _shifted(psf: np.ndarray, y: int, x: int) -> np.ndarray:
    """The big PSF moved so that its peak lands on image pixel (y, x)."""
    c = psf.shape[0] // 2
    return psf[c - y : c - y + NPIX, c - x : c - x + NPIX]


def test_scale_kernels() -> None:
    assert deconvolve.scale_kernel(0).tolist() == [[1.0]]
    for scale in (3, 10):
        k = deconvolve.scale_kernel(scale)
        assert k.shape[0] % 2 == 1
        assert k.sum() == pytest.approx(1.0)
        np.testing.assert_allclose(k, k[::-1, ::-1])
        np.testing.assert_allclose(k, k.T)
        c = k.shape[0] // 2
        assert k[c, c] == k.max()
        assert np.all(k >= 0)
    assert deconvolve.spheroidal(np.array([0.0]))[0] == pytest.approx(1.0, abs=1e-3)


def test_msclean_scale0_matches_hogbom(big_psfs: np.ndarray) -> None:
    psf = big_psfs[2]
    dirty = 10 * _shifted(psf, 64, 64) + 4 * _shifted(psf, 40, 90) - 2 * _shifted(psf, 95, 30)
    model, residual, n = deconvolve.msclean(
        dirty, psf, scales=[0], niter=3000, fractional_threshold=1e-4, psf_support=None
    )
    h_model, _, _ = hogbom(dirty, psf, 0.25, 3000, 0.0, 1e-4)
    assert 0 < n < 3000
    for (y, x), flux in (((64, 64), 10.0), ((40, 90), 4.0), ((95, 30), -2.0)):
        assert model[y, x] == pytest.approx(flux, rel=1e-3)
    np.testing.assert_allclose(model, h_model, atol=2e-3)
    assert np.max(np.abs(residual)) < 1e-3 * 10


def test_msclean_extended_source(big_psfs: np.ndarray) -> None:
    """A Gaussian blob is modelled far better with scales than with point components."""
    psf = big_psfs[2]
    yy, xx = np.mgrid[0:NPIX, 0:NPIX]
    blob = np.exp(-((yy - 60) ** 2 + (xx - 70) ** 2) / (2 * 4.0**2))
    blob *= 20.0 / blob.sum()
    dirty = sum(blob[y, x] * _shifted(psf, y, x) for y, x in np.argwhere(blob > 1e-4))
    kw = {"niter": 5000, "fractional_threshold": 0.01, "psf_support": None}
    model, residual, n = deconvolve.msclean(dirty, psf, scales=[0, 3, 10], **kw)
    points, _, p_n = deconvolve.msclean(dirty, psf, scales=[0], **kw)
    assert model.sum() == pytest.approx(20.0, rel=0.05)
    assert n < p_n
    assert np.abs(model - blob).sum() < 0.5 * np.abs(points - blob).sum()
    assert np.max(np.abs(residual)) < 0.011 * np.max(dirty)


def test_msmfs_recovers_linear_spectra(big_psfs: np.ndarray) -> None:
    """Sources with I(nu) = I0 + I1 x are recovered term by term."""
    sources = [(64, 64, 10.0, -7.0), (40, 90, 5.0, 2.5), (100, 30, 3.0, 0.0)]
    x = (FREQS - REF) / REF
    dirty = np.stack(
        [
            sum((i0 + i1 * x[c]) * _shifted(big_psfs[c], y, xx) for y, xx, i0, i1 in sources)
            for c in range(5)
        ]
    )
    result = deconvolve.msmfs(
        dirty,
        big_psfs,
        FREQS,
        nmoment=2,
        scales=[0],
        niter=5000,
        fractional_threshold=1e-5,
        psf_support=None,
    )
    assert result.model.shape == (2, NPIX, NPIX)
    for y, xx, i0, i1 in sources:
        assert result.model[0, y, xx] == pytest.approx(i0, rel=1e-3)
        assert result.model[1, y, xx] == pytest.approx(i1, abs=2e-2 * abs(i0))
    assert np.max(np.abs(result.residual[0])) < 1e-3 * 10
    first = deconvolve.taylor_weights(FREQS, REF, 2)[:, 0] @ result.model[:, 64, 64]
    assert first == pytest.approx(10.0 - 7.0 * x[0], rel=1e-3)  # the first channel's flux


def test_msmfs_moments_and_weights() -> None:
    taylor = deconvolve.taylor_weights([90.0, 100.0, 110.0], 100.0, 3)
    np.testing.assert_allclose(taylor, [[1, 1, 1], [-0.1, 0, 0.1], [0.01, 0, 0.01]])
    cube = np.arange(3.0)[:, None, None] * np.ones((3, 2, 2))
    mom = deconvolve.moments(cube, taylor[:2], [1.0, 1.0, 2.0])
    assert mom[0, 0, 0] == pytest.approx((0 + 1 + 4) / 4)
    assert mom[1, 0, 0] == pytest.approx((0 * -0.1 + 0 + 2 * 2 * 0.1) / 4)
    planes = (plane.astype(np.float32) for plane in cube)  # read one at a time, as stored
    np.testing.assert_array_equal(deconvolve.moments(planes, taylor[:2], [1.0, 1.0, 2.0]), mom)
    with pytest.raises(ValueError, match="shorter"):  # a plane per channel weight
        deconvolve.moments(iter(cube[:2]), taylor[:2], [1.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="longer"):
        deconvolve.moments([*cube, cube[0]], taylor[:2], [1.0, 1.0, 2.0])


def test_couplings_made_once_serve_every_minor_cycle(big_psfs: np.ndarray) -> None:
    """ICAL makes the PSF side once for all its minor cycles: cleaning does not change it,
    it gives what a fresh one gives, and moments of another order are refused."""
    pmom = deconvolve.moments(big_psfs, deconvolve.taylor_weights(FREQS, REF, 3), np.ones(5))
    psf = deconvolve.couplings_of(pmom, (NPIX, NPIX), (0, 3), psf_support=40)
    saved = psf.psfs.copy(), psf.hinv.copy()
    dmom = np.stack(
        [10 * _shifted(pmom[t], 64, 64) + 3 * _shifted(pmom[t + 1], 64, 64) for t in (0, 1)]
    )
    runs = [
        deconvolve.Cleaner(p, (NPIX, NPIX))(dmom, niter=30, fractional_threshold=0.0)
        for p in (psf, psf, deconvolve.couplings_of(pmom, (NPIX, NPIX), (0, 3), psf_support=40))
    ]
    assert [r.ncomponents for r in runs] == [30, 30, 30]
    for r in runs[1:]:
        np.testing.assert_array_equal(r.model, runs[0].model)
    np.testing.assert_array_equal(psf.psfs, saved[0])
    np.testing.assert_array_equal(psf.hinv, saved[1])
    with pytest.raises(ValueError, match="3 residual moments, but couplings for 2"):
        deconvolve.Cleaner(psf, (NPIX, NPIX))(np.zeros((3, NPIX, NPIX)))


def test_a_cleaner_called_again_cleans_as_a_fresh_one(big_psfs: np.ndarray) -> None:
    """ICAL's minor cycles share one Cleaner and its working memory: nothing of one call
    leaks into the next, and moments of another image size are refused."""
    pmom = deconvolve.moments(big_psfs, deconvolve.taylor_weights(FREQS, REF, 3), np.ones(5))
    couplings = deconvolve.couplings_of(pmom, (NPIX, NPIX), (0, 3, 10), psf_support=40)
    one = np.stack(
        [10 * _shifted(pmom[t], 64, 64) + 3 * _shifted(pmom[t + 1], 64, 64) for t in (0, 1)]
    )
    two = np.stack(
        [-4 * _shifted(pmom[t], 30, 90) + 7 * _shifted(pmom[t], 100, 20) for t in (0, 1)]
    )
    clean = deconvolve.Cleaner(couplings, (NPIX, NPIX))
    again = [clean(d, niter=40, fractional_threshold=0.0) for d in (one, two, one)]
    fresh = [
        deconvolve.Cleaner(couplings, (NPIX, NPIX))(d, niter=40, fractional_threshold=0.0)
        for d in (one, two)
    ]
    for found, expected in zip(again, [*fresh, fresh[0]], strict=True):
        assert found.ncomponents == expected.ncomponents == 40
        np.testing.assert_array_equal(found.model, expected.model)
        np.testing.assert_array_equal(found.residual, expected.residual)
    with pytest.raises(ValueError, match=r"pixels, made for \(128, 128\)"):
        clean(np.zeros((2, NPIX, NPIX // 2)))


def test_couplings_smooth_each_psf_moment_with_both_scales(big_psfs: np.ndarray) -> None:
    """P_{s,p,k} = Phi_s * Phi_p * P_k over the patch, divided by the PSF's peak, also when
    the first scale is not a delta (the (0, 0) coupling once took its kernel only once)."""
    pmom = deconvolve.moments(big_psfs, deconvolve.taylor_weights(FREQS, REF, 3), np.ones(5))
    half, centre = 20, big_psfs.shape[-1] // 2
    found = deconvolve.couplings_of(pmom, (NPIX, NPIX), (3, 10), psf_support=half)
    assert found.peak == pytest.approx(pmom[0, centre, centre])
    k3, k10 = deconvolve.scale_kernel(3), deconvolve.scale_kernel(10)
    patch = slice(centre - half, centre + half)
    for (s, p), (a, b) in {(0, 0): (k3, k3), (0, 1): (k3, k10), (1, 1): (k10, k10)}.items():
        for k in range(3):
            expected = convolve(convolve(pmom[k], a), b)[patch, patch] / found.peak
            np.testing.assert_allclose(found.psfs[s, p, k], expected, atol=1e-12)
            np.testing.assert_array_equal(found.psfs[p, s, k], found.psfs[s, p, k])


def test_window_and_support(big_psfs: np.ndarray) -> None:
    psf = big_psfs[2]
    dirty = 10 * _shifted(psf, 64, 64) + 4 * _shifted(psf, 40, 90)
    centred = _shifted(psf, NPIX // 2, NPIX // 2)
    window = np.zeros(dirty.shape, bool)
    window[20:60, 70:110] = True
    model, _, n = deconvolve.msclean(
        dirty, centred, scales=[0, 3], niter=500, fractional_threshold=0.0, window=window
    )
    assert n > 0
    grown = np.zeros_like(window)
    grown[18:62, 68:112] = True  # scale 3 spreads a component 2 pixels either side
    assert np.all(model[~grown] == 0.0)
    _, residual, n = deconvolve.msclean(dirty, centred, scales=[0], niter=1, psf_support=5)
    assert n == 1
    changed = np.argwhere(residual != dirty)
    assert np.all(np.abs(changed - [64, 64]) <= 5)
    assert deconvolve.clean_window(64, "quarter").sum() == 32 * 32
    assert deconvolve.clean_window(64, "no_edge", edge=4).sum() == 56 * 56
    assert deconvolve.clean_window(64) is None
