"""The synthetic GLEAM-like population: seeded, in the field, with the requested counts."""

import numpy as np
import pytest

from steps.params import ParamsError, parse
from steps.science import synthetic
from steps.science.sky import angular_separation_deg


def test_seeds() -> None:
    a = synthetic.population(1, 1.0, 150.0, -60.0, 10.0)
    b = synthetic.population(1, 1.0, 150.0, -60.0, 10.0)
    c = synthetic.population(2, 1.0, 150.0, -60.0, 10.0)
    np.testing.assert_array_equal(a.ra_deg, b.ra_deg)
    np.testing.assert_array_equal(a.flux_ref_jy, b.flux_ref_jy)
    np.testing.assert_array_equal(a.alpha, b.alpha)
    assert a.names == b.names
    n = min(len(a.names), len(c.names))
    assert not np.array_equal(a.ra_deg[:n], c.ra_deg[:n])
    assert not np.array_equal(a.flux_ref_jy[:n], c.flux_ref_jy[:n])


def test_counts_slope_positions_and_spectra() -> None:
    """Over a 40 deg cap above 0.3 Jy (~34 000 sources) the ML slope is 1.67 within 3 sigma."""
    limit, radius = 0.3, 40.0
    sky = synthetic.population(180555, limit, 210.0, -45.0, radius)
    n = len(sky.names)
    expected = synthetic.expected_count(limit, radius)
    assert abs(n - expected) < 4 * np.sqrt(expected)
    # N(>1 Jy) per sr matches the normalisation within Poisson error
    above = np.count_nonzero(sky.flux_ref_jy > 1.0)
    area = synthetic.cap_solid_angle_sr(radius)
    assert above / area == pytest.approx(2470.0, abs=4 * np.sqrt(2470.0 * area) / area)
    # maximum-likelihood index of N(>S) ~ S^-gamma above the limit, sigma = gamma / sqrt(n)
    gamma = n / np.sum(np.log(sky.flux_ref_jy / limit))
    assert abs(gamma - 1.67) < 3 * gamma / np.sqrt(n), gamma
    separation = angular_separation_deg(sky.ra_deg, sky.dec_deg, 210.0, -45.0)
    assert separation.max() <= radius + 1e-9 and np.all(sky.flux_ref_jy > limit)
    # uniform in solid angle: half the cap's area lies within acos(1 - (1 - cos r) / 2)
    half = np.degrees(np.arccos(1 - (1 - np.cos(np.radians(radius))) / 2))
    assert np.mean(separation < half) == pytest.approx(0.5, abs=4 * 0.5 / np.sqrt(n))
    assert np.mean(sky.alpha) == pytest.approx(-0.8, abs=0.01)
    assert np.std(sky.alpha) == pytest.approx(0.19, abs=0.01)


def test_synthetic_parameters_are_validated() -> None:
    assert parse({"sky_model": "synthetic", "ra": 150.0, "dec": -60.0}).sky_model == "synthetic"
    with pytest.raises(ParamsError, match=r"flux_limit = 0.0: must be > 0 for synthetic"):
        parse({"sky_model": "synthetic", "flux_limit": 0.0})
    with pytest.raises(ParamsError, match=r"flux_limit = 0.001: gives ~.* synthetic sources"):
        parse({"sky_model": "synthetic", "flux_limit": 0.001})
