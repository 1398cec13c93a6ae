"""The SKA1-Low station beam: an OSKAR beam image, scaled in frequency."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from steps.science.sky import DATA_DIR

BEAM_FREQ_HZ = 100e6
# radius (deg) of the first sidelobe's peak at BEAM_FREQ_HZ, as ``StationBeam.sidelobe_deg``
# measures it on the beam image (a test keeps the two equal): a constant, so that checking a
# field's parameters needs neither the image nor astropy and scipy
SIDELOBE_DEG = 8.15


def sidelobe_radius_deg(freq_hz: float) -> float:
    """Radius (deg) of the first sidelobe's peak at ``freq_hz`` (the beam scales as 1/nu)."""
    sin_r = np.sin(np.radians(SIDELOBE_DEG)) * BEAM_FREQ_HZ / freq_hz
    return 90.0 if sin_r >= 1.0 else float(np.degrees(np.arcsin(sin_r)))


class StationBeam:
    """OSKAR SKA1-Low station-beam image (100 MHz, SIN grid), scaled in l, m as 1/nu.

    Used as a power-like attenuation, as RASCIL did; normalised to 1 at l = m = 0.
    """

    def __init__(self, path: Path = DATA_DIR / "ska1_low_beam_100mhz.fits") -> None:
        from astropy.io import fits

        with fits.open(path) as hdul:
            header = hdul[0].header
            self.data = np.asarray(hdul[0].data, dtype=float).reshape(
                header["NAXIS2"], header["NAXIS1"]
            )
        # pixel (0-based) of the pointing centre and radians of l, m per pixel at 100 MHz
        self.centre = (header["CRPIX1"] - 1.0, header["CRPIX2"] - 1.0)
        self.step = (np.radians(header["CDELT1"]), np.radians(header["CDELT2"]))
        self.norm = float(self._sample(np.zeros(1), np.zeros(1), 1.0)[0])

    def _sample(self, l: np.ndarray, m: np.ndarray, scale: float) -> np.ndarray:  # noqa: E741
        """Bicubic image value at (l, m) with the pixel size multiplied by ``scale``."""
        from scipy.ndimage import map_coordinates

        x = self.centre[0] + l / (self.step[0] * scale)
        y = self.centre[1] + m / (self.step[1] * scale)
        value = map_coordinates(
            self.data, [y.ravel(), x.ravel()], order=3, mode="constant", cval=0.0
        )
        return value.reshape(l.shape)

    def power(self, l: np.ndarray, m: np.ndarray, freq_hz: float) -> np.ndarray:  # noqa: E741
        """Beam at direction cosines (l, m) from the pointing centre; 0 outside the image.

        Negative interpolation overshoots are clipped to 0.
        """
        l, m = np.broadcast_arrays(np.asarray(l, dtype=float), np.asarray(m, dtype=float))  # noqa: E741
        value = np.clip(self._sample(l, m, BEAM_FREQ_HZ / freq_hz), 0.0, None) / self.norm
        return np.where(l**2 + m**2 < 1.0, value, 0.0)

    def sidelobe_deg(self) -> float:
        """Radius (deg, on a 0.05 deg grid) of the peak of the first sidelobe of the
        azimuthally averaged beam at ``BEAM_FREQ_HZ``.

        The averaged profile falls to its first minimum (the main lobe's edge), rises to the
        first sidelobe's peak and then falls only slowly onto a ~6 % floor, so the peak is the
        last radius where this beam model gives the sky a distinct response.
        """
        radius = np.arange(0.0, 30.0, 0.05)
        azimuth = np.radians(np.arange(0.0, 360.0, 10.0))[:, None]
        l = np.sin(np.radians(radius)) * np.sin(azimuth)  # noqa: E741
        m = np.sin(np.radians(radius)) * np.cos(azimuth)
        profile = self.power(l, m, BEAM_FREQ_HZ).mean(axis=0)
        rising = np.flatnonzero(np.diff(profile) > 0)[0]  # first minimum
        peak = rising + int(np.argmax(np.diff(profile[rising:]) < 0))
        return round(float(radius[peak]), 2)
