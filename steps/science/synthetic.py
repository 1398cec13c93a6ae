"""A seeded, statistically GLEAM-like point-source population for any field.

Integral counts ``N(>S) = K S^-gamma`` per steradian at 151 MHz with ``K = 2470 sr^-1``
(above 1 Jy) and ``gamma = 1.67``, the maximum-likelihood fit to the shipped GLEAM subset
(``steps/data/PROVENANCE.md``; data README section 3).  Fluxes are drawn down to the flux
limit, positions uniformly over a spherical cap, spectral indices from a normal distribution
around -0.8 (Franzen et al. 2019) with the subset's scatter 0.19.
"""

from __future__ import annotations

import numpy as np

from steps.science.sky import GLEAM_REF_FREQ_HZ, Components

COUNTS_PER_SR_ABOVE_1JY = 2470.0
COUNTS_SLOPE = 1.67
ALPHA_MEAN = -0.8
ALPHA_SCATTER = 0.19
SKY_STREAM = 7  # spawn key: the sky's random stream is independent of the corruption's


def cap_solid_angle_sr(radius_deg: float) -> float:
    """Solid angle (sr) of a spherical cap of the given angular radius."""
    return float(2.0 * np.pi * (1.0 - np.cos(np.radians(min(radius_deg, 180.0)))))


def expected_count(flux_limit_jy: float, radius_deg: float) -> float:
    """Mean number of sources above ``flux_limit_jy`` within ``radius_deg``."""
    return COUNTS_PER_SR_ABOVE_1JY * cap_solid_angle_sr(radius_deg) * flux_limit_jy**-COUNTS_SLOPE


def population(
    seed: int, flux_limit_jy: float, ra_deg: float, dec_deg: float, radius_deg: float
) -> Components:
    """Sources above ``flux_limit_jy`` (> 0) at 151 MHz within ``radius_deg`` of (ra, dec).

    The same seed and arguments give the same sky; the count is Poisson.
    """
    if flux_limit_jy <= 0:
        raise ValueError("a synthetic population needs flux_limit > 0")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SKY_STREAM,)))
    count = rng.poisson(expected_count(flux_limit_jy, radius_deg))
    flux = flux_limit_jy * rng.uniform(size=count) ** (-1.0 / COUNTS_SLOPE)
    # uniform on the cap about the pole: cos(theta) uniform in [cos r, 1]
    cos_theta = rng.uniform(np.cos(np.radians(radius_deg)), 1.0, size=count)
    phi = rng.uniform(0.0, 2.0 * np.pi, size=count)
    alpha = rng.normal(ALPHA_MEAN, ALPHA_SCATTER, size=count)
    sin_theta = np.sqrt(1.0 - cos_theta**2)
    # rotate the pole to (ra, dec): phi is the position angle east of north
    dec0, ra0 = np.radians(dec_deg), np.radians(ra_deg)
    sin_dec = np.sin(dec0) * cos_theta + np.cos(dec0) * sin_theta * np.cos(phi)
    dec = np.arcsin(np.clip(sin_dec, -1.0, 1.0))
    ra = ra0 + np.arctan2(
        np.sin(phi) * sin_theta * np.cos(dec0), cos_theta - np.sin(dec0) * sin_dec
    )
    order = np.argsort(flux)[::-1]
    return Components(
        names=[f"SYN-{seed}-{i:06d}" for i in range(count)],
        ra_deg=np.degrees(ra[order]) % 360.0,
        dec_deg=np.degrees(dec[order]),
        flux_ref_jy=flux[order],
        ref_freq_hz=GLEAM_REF_FREQ_HZ,
        alpha=alpha[order],
    )
