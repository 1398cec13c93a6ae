"""Tests for steps.science.sky and steps.science.beam."""

import numpy as np
import pytest

from steps.science.beam import BEAM_FREQ_HZ, SIDELOBE_DEG, StationBeam, sidelobe_radius_deg
from steps.science.sky import (
    DATA_DIR,
    Components,
    angular_separation_deg,
    apparent_flux,
    lmn,
    load_gleam,
)


@pytest.fixture(scope="module")
def beam() -> StationBeam:
    return StationBeam()


def _half_power_radius_deg(beam: StationBeam, freq_hz: float, azimuth_rad: float) -> float:
    r = np.radians(np.linspace(0.0, 10.0, 10001))
    p = beam.power(np.sin(r) * np.sin(azimuth_rad), np.sin(r) * np.cos(azimuth_rad), freq_hz)
    return float(np.degrees(r[np.argmax(p < 0.5)]))


def test_beam_centre_and_outside(beam: StationBeam) -> None:
    assert beam.power(np.zeros(1), np.zeros(1), 100e6)[0] == pytest.approx(1.0, abs=1e-12)
    assert beam.power(np.zeros(1), np.zeros(1), 150e6)[0] == pytest.approx(1.0, abs=1e-12)
    # footprint is +-0.70 in l, m at 100 MHz and half that at 200 MHz
    far = beam.power(np.array([0.75, 0.0, 0.4]), np.array([0.0, -0.75, 0.0]), 100e6)
    np.testing.assert_array_equal(far[:2], 0.0)
    assert beam.power(np.array([0.4]), np.zeros(1), 200e6)[0] == 0.0
    assert np.all(beam.power(np.linspace(-1, 1, 101), np.linspace(1, -1, 101), 120e6) >= 0.0)


def test_beam_half_power_radius(beam: StationBeam) -> None:
    azimuths = np.radians(np.arange(0.0, 360.0, 45.0))
    radii = np.array([_half_power_radius_deg(beam, 100e6, a) for a in azimuths])
    assert radii.mean() == pytest.approx(3.52, rel=0.03)
    assert radii.max() / radii.min() < 1.15  # roughly circular
    for freq in (150e6, 200e6):
        scaled = np.mean([_half_power_radius_deg(beam, freq, a) for a in azimuths])
        assert scaled == pytest.approx(radii.mean() * 100e6 / freq, rel=0.01)


def test_sidelobe_constant_is_the_beam_images(beam: StationBeam) -> None:
    """The parameter check's first-sidelobe radius is what the beam image gives, scaled 1/nu
    (sin r, since the beam is a function of l, m)."""
    assert beam.sidelobe_deg() == SIDELOBE_DEG
    assert sidelobe_radius_deg(BEAM_FREQ_HZ) == pytest.approx(SIDELOBE_DEG)
    sin_r = np.sin(np.radians(SIDELOBE_DEG))
    assert np.sin(np.radians(sidelobe_radius_deg(50e6))) == pytest.approx(2 * sin_r)
    assert sidelobe_radius_deg(BEAM_FREQ_HZ * sin_r / 1.01) == 90.0  # beyond the horizon


def test_beam_orientation(beam: StationBeam) -> None:
    """l is east = -x (CDELT1 < 0): sampling at +l reads pixels left of the centre."""
    x0, y0 = beam.centre
    step = abs(beam.step[0])
    col = int(np.floor(x0)) - 20  # smaller column index = east (+l) since CDELT1 < 0
    l_east = (x0 - col) * step
    expected = beam.data[int(np.floor(y0)), col]
    value = beam.power(np.array([l_east]), np.array([(np.floor(y0) - y0) * step]), 100e6)[0]
    assert value * beam.norm == pytest.approx(expected, rel=1e-6)


def test_lmn() -> None:
    l, m, n = lmn(np.array([0.0, 10.0, 0.0]), np.array([-30.0, -30.0, -20.0]), 0.0, -30.0)  # noqa: E741
    np.testing.assert_allclose([l[0], m[0], n[0]], [0.0, 0.0, 1.0], atol=1e-15)
    assert l[1] > 0.0 and m[1] < 0.0  # east of centre, curving south at dec -30
    assert l[2] == pytest.approx(0.0, abs=1e-15) and m[2] == pytest.approx(np.sin(np.radians(10)))
    np.testing.assert_allclose(l**2 + m**2 + n**2, 1.0, rtol=1e-14)


def test_load_gleam_and_spectra() -> None:
    everything = load_gleam(1.0, 0.0, -30.0, 10.0)
    assert len(everything.names) == 226
    bright = load_gleam(3.0, 0.0, -30.0, 10.0)
    assert np.all(bright.flux_ref_jy > 3.0) and len(bright.names) < 226
    assert bright.names[0] == "GLEAM J235701-344532"
    near = load_gleam(1.0, 0.0, -30.0, 3.0)
    rows = (DATA_DIR / "gleam_ra0_dec-30.csv").read_text().splitlines()[1:]
    assert len(near.names) == sum(float(r.split(",")[5]) <= 3.0 for r in rows)
    assert np.all(angular_separation_deg(near.ra_deg, near.dec_deg, 0.0, -30.0) <= 3.0)
    assert bright.band_freqs_hz is not None and bright.band_flux_jy is not None
    # at the sub-band centres the table values come back; 151 MHz is S151
    np.testing.assert_allclose(
        bright.flux_at(bright.band_freqs_hz), bright.band_flux_jy, rtol=1e-12
    )
    np.testing.assert_allclose(bright.flux_at([151e6])[:, 0], bright.flux_ref_jy, rtol=1e-6)
    # between two sub-bands: linear in log-log
    f1, f2 = bright.band_freqs_hz[2:4]
    s1, s2 = bright.band_flux_jy[:, 2], bright.band_flux_jy[:, 3]
    mid = bright.flux_at([np.sqrt(f1 * f2)])[:, 0]
    np.testing.assert_allclose(mid, np.sqrt(s1 * s2), rtol=1e-12)


def test_power_law_and_apparent_flux(beam: StationBeam) -> None:
    comps = Components(
        names=["a", "b"],
        ra_deg=np.array([0.0, 2.0]),
        dec_deg=np.array([-30.0, -31.0]),
        flux_ref_jy=np.array([10.0, 4.0]),
        ref_freq_hz=100e6,
        alpha=np.array([-0.7, 0.0]),
    )
    freqs = np.array([90e6, 110e6])
    flux = comps.flux_at(freqs)
    np.testing.assert_allclose(flux[0], 10.0 * (freqs / 100e6) ** -0.7, rtol=1e-14)
    app = apparent_flux(comps, freqs, 0.0, -30.0, beam)
    np.testing.assert_allclose(app[0], flux[0], rtol=1e-12)
    l, m, _ = lmn(comps.ra_deg, comps.dec_deg, 0.0, -30.0)  # noqa: E741
    np.testing.assert_allclose(app[1, 1], 4.0 * beam.power(l[1:], m[1:], 110e6)[0], rtol=1e-12)
    assert 0.0 < app[1, 1] < app[1, 0] < 4.0  # beam narrower at higher frequency
