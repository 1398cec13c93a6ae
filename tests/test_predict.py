"""Tests for steps.science.predict."""

import cmath
import math

import numpy as np

from steps.science.predict import dft

C = 299792458.0


def test_dft_against_hand_computation() -> None:
    # at nu = c the uvw in wavelengths equal the uvw in metres; at 2c they double
    uvw = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [3.0, -4.0, 5.0]])
    freqs = np.array([C, 2.0 * C])
    n1 = math.sqrt(1.0 - 0.1**2 - 0.2**2)
    n2 = math.sqrt(1.0 - 0.3**2)
    l, m, n = np.array([0.1, -0.3]), np.array([0.2, 0.0]), np.array([n1, n2])  # noqa: E741
    flux = np.array([[2.0, 1.5], [0.5, 0.25]])
    tau = 2.0 * math.pi
    expected = np.array(
        [
            [
                2.0 * cmath.exp(-1j * tau * 0.1) + 0.5 * cmath.exp(-1j * tau * -0.3),
                1.5 * cmath.exp(-1j * tau * 0.2) + 0.25 * cmath.exp(-1j * tau * -0.6),
            ],
            [
                2.0 * cmath.exp(-1j * tau * 0.4) + 0.5,
                1.5 * cmath.exp(-1j * tau * 0.8) + 0.25,
            ],
            [
                2.0 * cmath.exp(-1j * tau * (0.3 - 0.8 + 5.0 * (n1 - 1.0)))
                + 0.5 * cmath.exp(-1j * tau * (-0.9 + 5.0 * (n2 - 1.0))),
                1.5 * cmath.exp(-2j * tau * (0.3 - 0.8 + 5.0 * (n1 - 1.0)))
                + 0.25 * cmath.exp(-2j * tau * (-0.9 + 5.0 * (n2 - 1.0))),
            ],
        ]
    )
    vis = dft(uvw, freqs, l, m, n, flux)
    assert vis.shape == (3, 2) and vis.dtype == np.complex128
    np.testing.assert_allclose(vis, expected, rtol=1e-12)


def test_source_at_phase_centre() -> None:
    rng = np.random.default_rng(3)
    uvw = rng.uniform(-5e3, 5e3, size=(100, 3))
    freqs = np.array([90e6, 110e6])
    flux = np.array([[3.0, 2.5]])
    vis = dft(uvw, freqs, np.zeros(1), np.zeros(1), np.ones(1), flux)
    assert np.array_equal(vis, np.broadcast_to(flux, (100, 2)).astype(complex))


def test_conjugate_symmetry() -> None:
    rng = np.random.default_rng(4)
    uvw = rng.uniform(-2e3, 2e3, size=(50, 3))
    l, m = rng.uniform(-0.2, 0.2, 7), rng.uniform(-0.2, 0.2, 7)  # noqa: E741
    n = np.sqrt(1.0 - l**2 - m**2)
    flux = rng.uniform(0.5, 4.0, size=(7, 3))
    freqs = np.array([90e6, 100e6, 110e6])
    np.testing.assert_allclose(
        dft(-uvw, freqs, l, m, n, flux), np.conj(dft(uvw, freqs, l, m, n, flux)), rtol=1e-13
    )
