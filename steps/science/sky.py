"""Sky model: point and Gaussian components, the GLEAM subset and direction cosines."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotation only: parameter checks read catalogues without the beam
    from steps.science.beam import StationBeam

DATA_DIR = Path(__file__).parent.parent / "data"

GLEAM_REF_FREQ_HZ = 151e6
GLEAM_CENTRE_DEG = (0.0, -30.0)  # the shipped subset: within 10 deg of (RA, Dec)
GLEAM_RADIUS_DEG = 10.0
GLEAM_MIN_FLUX_JY = 1.0  # the shipped subset: S151 above this only
ARCSEC = np.pi / (180.0 * 3600.0)


@dataclass(frozen=True, eq=False)
class Components:
    """Point and elliptical Gaussian components with Stokes I spectra.

    ``band_flux_jy`` (nsrc, nband) at ``band_freqs_hz`` is interpolated log-log; without it
    the spectrum is the log-parabola
    ``log10 S = log10 flux_ref_jy + alpha x + curvature x^2``, ``x = log10(nu / ref_freq_hz)``.
    ``ref_freq_hz`` is one frequency or one per component.  Gaussians have FWHM
    ``major_arcsec`` >= ``minor_arcsec`` > 0 and the major axis at ``pa_deg`` east of north;
    points have zero axes.
    """

    names: list[str]
    ra_deg: np.ndarray
    dec_deg: np.ndarray
    flux_ref_jy: np.ndarray
    ref_freq_hz: float | np.ndarray
    alpha: np.ndarray
    band_freqs_hz: np.ndarray | None = None
    band_flux_jy: np.ndarray | None = None
    curvature: np.ndarray | None = None
    major_arcsec: np.ndarray | None = None
    minor_arcsec: np.ndarray | None = None
    pa_deg: np.ndarray | None = None

    def select(self, keep: np.ndarray) -> Components:
        """The components where ``keep`` (a boolean mask or index array) selects."""
        index = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep)

        def pick(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else values[index]

        ref = self.ref_freq_hz
        return replace(
            self,
            names=[self.names[i] for i in index],
            ra_deg=self.ra_deg[index],
            dec_deg=self.dec_deg[index],
            flux_ref_jy=self.flux_ref_jy[index],
            ref_freq_hz=ref[index] if isinstance(ref, np.ndarray) else ref,
            alpha=self.alpha[index],
            band_flux_jy=pick(self.band_flux_jy),
            curvature=pick(self.curvature),
            major_arcsec=pick(self.major_arcsec),
            minor_arcsec=pick(self.minor_arcsec),
            pa_deg=pick(self.pa_deg),
        )

    def flux_at(self, freqs_hz: np.ndarray) -> np.ndarray:
        """Flux density (nsrc, nfreq) Jy; beyond the bands the end segments are extrapolated."""
        freqs = np.atleast_1d(np.asarray(freqs_hz, dtype=float))
        if self.band_flux_jy is None or self.band_freqs_hz is None:
            ref = np.broadcast_to(np.asarray(self.ref_freq_hz, dtype=float), self.alpha.shape)
            x = np.log10(freqs[None, :] / ref[:, None])
            curvature = np.zeros_like(self.alpha) if self.curvature is None else self.curvature
            return self.flux_ref_jy[:, None] * 10.0 ** (
                self.alpha[:, None] * x + curvature[:, None] * x**2
            )
        logf = np.log(self.band_freqs_hz)
        logs = np.log(self.band_flux_jy)
        i = np.clip(np.searchsorted(logf, np.log(freqs)), 1, logf.size - 1)
        frac = (np.log(freqs) - logf[i - 1]) / (logf[i] - logf[i - 1])
        return np.exp(logs[:, i - 1] + frac * (logs[:, i] - logs[:, i - 1]))

    def shapes(self) -> np.ndarray:
        """(nsrc, 3): major and minor FWHM (rad) and position angle (rad); zeros for points."""
        zeros = np.zeros(len(self.names))
        columns = [
            zeros if values is None else np.asarray(values, dtype=float) * scale
            for values, scale in (
                (self.major_arcsec, ARCSEC),
                (self.minor_arcsec, ARCSEC),
                (self.pa_deg, np.pi / 180.0),
            )
        ]
        return np.stack(columns, axis=1)


def angular_separation_deg(
    ra_deg: np.ndarray, dec_deg: np.ndarray, ra0_deg: float, dec0_deg: float
) -> np.ndarray:
    """Great-circle separation (deg), Vincenty formula."""
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    ra0, dec0 = np.radians(ra0_deg), np.radians(dec0_deg)
    dra = ra - ra0
    num = np.hypot(
        np.cos(dec) * np.sin(dra),
        np.cos(dec0) * np.sin(dec) - np.sin(dec0) * np.cos(dec) * np.cos(dra),
    )
    den = np.sin(dec0) * np.sin(dec) + np.cos(dec0) * np.cos(dec) * np.cos(dra)
    return np.degrees(np.arctan2(num, den))


def load_gleam(
    flux_limit_jy: float, ra_deg: float, dec_deg: float, radius_deg: float
) -> Components:
    """GLEAM sources with S151 > ``flux_limit_jy`` within ``radius_deg`` of (ra, dec).

    The shipped file holds S151 > ``GLEAM_MIN_FLUX_JY`` within 10 deg of (0, -30) only.
    """
    lines = (DATA_DIR / "gleam_ra0_dec-30.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [line.split(",") for line in lines[1:] if line.strip()]

    def column(name: str) -> np.ndarray:
        return np.array([float(r[header.index(name)]) for r in rows])

    ra, dec, flux = column("ra_deg"), column("dec_deg"), column("flux_jy")
    keep = (flux > flux_limit_jy) & (angular_separation_deg(ra, dec, ra_deg, dec_deg) <= radius_deg)
    band_cols = [c for c in header if c.startswith("S") and c.endswith("_jy")]  # S076_jy ...
    bands = np.stack([column(c) for c in band_cols], axis=1)
    return Components(
        names=[r[0] for r, k in zip(rows, keep, strict=True) if k],
        ra_deg=ra[keep],
        dec_deg=dec[keep],
        flux_ref_jy=flux[keep],
        ref_freq_hz=GLEAM_REF_FREQ_HZ,
        alpha=column("alpha")[keep],
        band_freqs_hz=np.array([float(c[1:4]) * 1e6 for c in band_cols]),
        band_flux_jy=bands[keep],
    )


def lmn(
    ra_deg: np.ndarray, dec_deg: np.ndarray, ra0_deg: float, dec0_deg: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Direction cosines about (ra0, dec0): l east (increasing RA), m north, n to the centre."""
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    ra0, dec0 = np.radians(ra0_deg), np.radians(dec0_deg)
    dra = ra - ra0
    l = np.cos(dec) * np.sin(dra)  # noqa: E741
    m = np.sin(dec) * np.cos(dec0) - np.cos(dec) * np.sin(dec0) * np.cos(dra)
    n = np.sin(dec) * np.sin(dec0) + np.cos(dec) * np.cos(dec0) * np.cos(dra)
    return l, m, n


def image_radius_deg(npixel: int, cell_rad: float) -> float:
    """Half-diagonal (deg) of a square SIN-projected image: a cap that contains it."""
    half = npixel * cell_rad / 2
    return float(np.degrees(np.arcsin(min(1.0, np.hypot(half, half)))))


def gleam_coverage_problem(
    ra_deg: float, dec_deg: float, freq_min_hz: float, npixel: int, cell_rad: float
) -> str | None:
    """Why the shipped GLEAM subset does not cover a field, or None if it does.

    The field is the part of the image within the first sidelobe (its peak, at the lowest
    frequency) of the station beam; it must lie inside the subset's 10 deg circle.
    """
    from steps.science.beam import sidelobe_radius_deg

    needed = min(image_radius_deg(npixel, cell_rad), sidelobe_radius_deg(freq_min_hz))
    offset = float(angular_separation_deg(np.array(ra_deg), np.array(dec_deg), *GLEAM_CENTRE_DEG))
    if offset + needed <= GLEAM_RADIUS_DEG:
        return None
    return (
        f"the shipped GLEAM subset covers only {GLEAM_RADIUS_DEG:g} deg around RA "
        f"{GLEAM_CENTRE_DEG[0]:g}, Dec {GLEAM_CENTRE_DEG[1]:g} deg, but this field (image and "
        f"station beam to its first sidelobe at {freq_min_hz / 1e6:g} MHz) reaches "
        f"{offset + needed:.1f} deg from that centre; use sky_model = 'synthetic' (a "
        f"GLEAM-like population for any field) or a catalogue file (CSV or sourcedb path, "
        f"or buffer:<name>/<file>)"
    )


def gleam_flux_problem(
    flux_limit_jy: float, ra_deg: float, dec_deg: float, npixel: int, cell_rad: float
) -> str | None:
    """Why ``flux_limit_jy`` does not select a GLEAM sky for the image, or None: the shipped
    subset is complete above ``GLEAM_MIN_FLUX_JY`` only, and some source must be brighter."""
    if flux_limit_jy < GLEAM_MIN_FLUX_JY:
        return (
            f"the shipped GLEAM subset holds only S151 > {GLEAM_MIN_FLUX_JY:g} Jy: allowed "
            f">= {GLEAM_MIN_FLUX_JY:g} for sky_model = 'gleam' (fainter: 'synthetic')"
        )
    near = load_gleam(GLEAM_MIN_FLUX_JY, ra_deg, dec_deg, image_radius_deg(npixel, cell_rad))
    field = near.flux_ref_jy[inside_image(near, ra_deg, dec_deg, npixel, cell_rad)]
    brightest = float(field.max(initial=0.0))
    if brightest > flux_limit_jy:
        return None
    if not field.size:
        return (
            "no GLEAM source lies inside the image: image a larger field, or use sky_model = "
            "'synthetic'"
        )
    return (
        f"no GLEAM source inside the image is brighter (the brightest there: {brightest:g} "
        f"Jy at 151 MHz); allowed {GLEAM_MIN_FLUX_JY:g} to below {brightest:g}"
    )


def inside_image(
    components: Components, ra_deg: float, dec_deg: float, npixel: int, cell_rad: float
) -> np.ndarray:
    """Which components lie inside an ``npixel``² image of ``cell_rad`` pixels (direction
    cosines, as the pixels) centred on (ra, dec)."""
    l, m, _ = lmn(components.ra_deg, components.dec_deg, ra_deg, dec_deg)  # noqa: E741
    half = npixel * cell_rad / 2
    return (np.abs(l) < half) & (np.abs(m) < half)


def apparent_flux(
    components: Components, freqs_hz: np.ndarray, ra0_deg: float, dec0_deg: float, beam: StationBeam
) -> np.ndarray:
    """Intrinsic flux times the station beam pointed at (ra0, dec0): (nsrc, nfreq) Jy."""
    freqs = np.atleast_1d(np.asarray(freqs_hz, dtype=float))
    l, m, _ = lmn(components.ra_deg, components.dec_deg, ra0_deg, dec0_deg)  # noqa: E741
    gain = np.stack([beam.power(l, m, f) for f in freqs], axis=1)
    return components.flux_at(freqs) * gain
