"""Elliptical Gaussian components: analytic visibilities and a restored image's flux."""

import numpy as np
import pytest

from steps.science import clean, imaging, layout, predict, restore
from steps.science.sky import lmn

C = 299792458.0
MAJOR, MINOR, PA = np.radians(0.5), np.radians(0.2), np.radians(30.0)


def pixelised_visibilities(uvw: np.ndarray, freq: float, l0: float, m0: float) -> np.ndarray:
    """Numerical 2-D integral of a pixelised Gaussian: sum of pixel fluxes times the phase.

    The brightness is built from the definition of the shape: the major axis is the unit
    vector (east, north) = (sin PA, cos PA) and the FWHM are the widths along the axes.
    """
    step = MINOR / 40
    offsets = np.arange(-4 * MAJOR, 4 * MAJOR + step / 2, step)
    dl, dm = np.meshgrid(offsets, offsets, indexing="ij")
    major_axis = np.array([np.sin(PA), np.cos(PA)])
    minor_axis = np.array([np.cos(PA), -np.sin(PA)])
    along = dl * major_axis[0] + dm * major_axis[1]
    across = dl * minor_axis[0] + dm * minor_axis[1]
    brightness = 2.0 ** (-4 * ((along / MAJOR) ** 2 + (across / MINOR) ** 2))  # 1/2 at FWHM/2
    pixel_flux = brightness / brightness.sum()  # a 1 Jy source
    l, m = (l0 + dl).ravel(), (m0 + dm).ravel()  # noqa: E741
    u, v = uvw[:, 0:1] * freq / C, uvw[:, 1:2] * freq / C
    return np.exp(-2j * np.pi * (u * l + v * m)) @ pixel_flux.ravel()


def test_gaussian_visibilities_match_numerical_integration() -> None:
    rng = np.random.default_rng(3)
    freq = 120e6
    uvw = np.concatenate([rng.uniform(-120.0, 120.0, (40, 2)), np.zeros((40, 1))], axis=1)
    # baselines along the major and the minor axis at the same length
    along = np.array([[np.sin(PA), np.cos(PA), 0.0], [np.cos(PA), -np.sin(PA), 0.0]]) * 150.0
    uvw = np.concatenate([uvw, along])
    l0, m0 = 0.02, -0.01
    n0 = np.sqrt(1 - l0**2 - m0**2)
    vis = predict.dft(uvw, [freq], [l0], [m0], [n0], [[1.0]], np.array([[MAJOR, MINOR, PA]]))
    numerical = pixelised_visibilities(uvw, freq, l0, m0)
    np.testing.assert_allclose(vis[:, 0], numerical, atol=2e-4)
    assert abs(vis[-2, 0]) < 0.5 * abs(vis[-1, 0])  # resolved most along the major axis
    # the analytic formula, written out
    uv = uvw[:, :2] * freq / C
    ua = uv[:, 0] * np.sin(PA) + uv[:, 1] * np.cos(PA)
    ub = uv[:, 0] * np.cos(PA) - uv[:, 1] * np.sin(PA)
    envelope = np.exp(-(np.pi**2) * (MAJOR**2 * ua**2 + MINOR**2 * ub**2) / (4 * np.log(2)))
    phase = np.exp(-2j * np.pi * (uv[:, 0] * l0 + uv[:, 1] * m0))
    np.testing.assert_allclose(vis[:, 0], envelope * phase, rtol=1e-12, atol=1e-15)
    # a point (zero axes) is unchanged by the shape argument
    point = predict.dft(uvw, [freq], [l0], [m0], [n0], [[1.0]])
    np.testing.assert_allclose(point, predict.dft(uvw, [freq], [l0], [m0], [n0], [[1.0]], None))


def test_restored_gaussian_integrates_to_its_flux() -> None:
    flux, freq, npixel, cell = 5.0, 100e6, 256, 4e-4
    major, minor, pa = np.radians(0.3), np.radians(0.15), np.radians(-40.0)
    stations = layout.select_within(layout.load_stations("ska1-low"), 1000.0)
    uvw = layout.uvw(stations, np.radians([-20.0, 0.0, 20.0]), np.radians(-60.0)).reshape(-1, 3)
    ra, dec = 150.0 + 0.4 / np.cos(np.radians(60.0)), -60.3  # 0.4 deg east, 0.3 deg south
    l, m, n = lmn(np.array([ra]), np.array([dec]), 150.0, -60.0)  # noqa: E741
    vis = predict.dft(uvw, [freq], l, m, n, [[flux]], np.array([[major, minor, pa]]))
    weight = np.ones((uvw.shape[0], 1))
    psf, _ = imaging.make_psf(uvw, [freq], weight, npixel, cell)
    model = np.zeros((npixel, npixel))
    residual_vis = vis
    for _ in range(4):
        dirty, _ = imaging.invert(uvw, [freq], residual_vis, weight, npixel, cell)
        component, _, _ = clean.hogbom(
            dirty, psf, gain=0.2, niter=2000, fractional_threshold=0.01, psf_support=64
        )
        model += component
        residual_vis = vis - imaging.predict(model, uvw, [freq], cell)
    residual, _ = imaging.invert(uvw, [freq], residual_vis, weight, npixel, cell)
    beam = restore.fit_clean_beam(psf, cell)
    restored = restore.restore(model, residual, beam)
    # integrate over 2 x the major FWHM around the source, divide by the beam area (pixels)
    centre = npixel // 2
    x0, y0 = centre - l[0] / cell, centre + m[0] / cell
    yy, xx = np.mgrid[:npixel, :npixel]
    region = np.hypot(xx - x0, yy - y0) * cell < 2 * major
    beam_area = 2 * np.pi * beam.sigma_major_px * beam.sigma_minor_px
    assert restored[region].sum() / beam_area == pytest.approx(flux, rel=0.03)
    assert model.sum() == pytest.approx(flux, rel=0.03)
    peak = np.unravel_index(np.argmax(restored), restored.shape)
    assert abs(peak[1] - x0) <= 1.5 and abs(peak[0] - y0) <= 1.5
