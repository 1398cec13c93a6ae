"""Clean-beam fit and restoration."""

import numpy as np
import pytest

from steps.science.imaging import make_psf
from steps.science.restore import FWHM_PER_SIGMA, Beam, beam_kernel, fit_clean_beam, restore

NPIX = 128
C = NPIX // 2
CELL = np.deg2rad(0.01)


def _analytic(s_maj: float, s_min: float, pa_deg: float) -> np.ndarray:
    """Gaussian written from scratch: east = -(x - c), north = y - c, PA east of north."""
    y, x = np.mgrid[0:NPIX, 0:NPIX].astype(float)
    east, north = -(x - C), y - C
    pa = np.radians(pa_deg)
    major = np.array([np.sin(pa), np.cos(pa)])  # (east, north) unit vector
    a = east * major[0] + north * major[1]
    b = east * major[1] - north * major[0]
    return np.exp(-0.5 * ((a / s_maj) ** 2 + (b / s_min) ** 2))


@pytest.mark.parametrize(("s_maj", "s_min", "pa"), [(4.0, 2.5, 30.0), (3.0, 1.5, -70.0)])
def test_fit_recovers_analytic_gaussian(s_maj: float, s_min: float, pa: float) -> None:
    beam = fit_clean_beam(_analytic(s_maj, s_min, pa), CELL)
    assert beam.sigma_major_px == pytest.approx(s_maj, rel=1e-2)
    assert beam.sigma_minor_px == pytest.approx(s_min, rel=1e-2)
    assert beam.bpa_deg == pytest.approx(pa, abs=0.5)
    assert beam.bmaj_deg == pytest.approx(s_maj * FWHM_PER_SIGMA * 0.01, rel=1e-2)
    assert beam.bmin_deg == pytest.approx(s_min * FWHM_PER_SIGMA * 0.01, rel=1e-2)


def test_bpa_sign_north_east() -> None:
    y, x = np.mgrid[0:NPIX, 0:NPIX].astype(float)
    east, north = -(x - C), y - C
    # elongated along east = north, i.e. toward x < c, y > c
    psf = np.exp(-((east - north) ** 2) / (2 * 2.0**2 * 2) - (east + north) ** 2 / (2 * 5.0**2 * 2))
    assert psf[C + 5, C - 5] > psf[C + 5, C + 5]
    beam = fit_clean_beam(psf, CELL)
    assert beam.bpa_deg == pytest.approx(45.0, abs=0.1)
    assert beam.sigma_major_px == pytest.approx(5.0, rel=1e-3)


def test_restore_of_centre_pixel_reproduces_beam() -> None:
    psf = _analytic(4.0, 2.5, 30.0)
    beam = fit_clean_beam(psf, CELL)
    model = np.zeros((NPIX, NPIX))
    model[C, C] = 1.0
    restored = restore(model, np.zeros_like(model), beam)
    np.testing.assert_allclose(restored, psf, atol=1e-4)


def test_restore_conserves_flux_and_adds_residual() -> None:
    beam = Beam(0.0, 0.0, 0.0, sigma_major_px=3.0, sigma_minor_px=2.0, theta_rad=0.4)
    model = np.zeros((2, NPIX, NPIX))
    model[0, 40, 70] = 5.0
    model[1, 2, 3] = 2.0  # near the corner: no wrap-around to the far edges
    residual = np.full(model.shape, 0.01)
    restored = restore(model, residual, beam)
    assert restored[0, 40, 70] == pytest.approx(5.01)
    assert np.sum(restored[0] - 0.01) == pytest.approx(5.0 * 2 * np.pi * 3.0 * 2.0, rel=1e-6)
    assert np.max(np.abs(restored[1, -20:, :] - 0.01)) < 1e-12
    assert np.max(np.abs(restored[1, :, -20:] - 0.01)) < 1e-12


def test_kernel_orientation() -> None:
    kernel = beam_kernel(Beam(0, 0, 45.0, 4.0, 1.0, np.pi / 4), 10)
    assert kernel[10, 10] == 1.0
    assert kernel[15, 5] > 0.1 > kernel[15, 15]  # north-east = up and to the left (x west)


def test_fit_real_psf() -> None:
    rng = np.random.default_rng(2)
    uvw = rng.standard_normal((500, 3)) * [400.0, 200.0, 10.0]
    psf, _ = make_psf(uvw, np.array([1e8]), np.ones((500, 1)), NPIX, np.deg2rad(0.05))
    beam = fit_clean_beam(psf, np.deg2rad(0.05))
    assert beam.sigma_major_px > beam.sigma_minor_px > 0.5
    # u-extent twice the v-extent: the beam is elongated north-south
    assert abs(beam.bpa_deg) < 20.0
