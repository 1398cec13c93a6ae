"""FITS image output (4-D RA---SIN, DEC--SIN, STOKES, FREQ), written atomically."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS

from steps import atomic
from steps.science.restore import Beam


def make_header(
    npix: int,
    ra_deg: float,
    dec_deg: float,
    cell_rad: float,
    freqs_hz: Sequence[float] | np.ndarray,
    channel_width_hz: float,
    bunit: str,
    beam: Beam | None = None,
) -> fits.Header:
    """Image header; the FREQ axis is linear, so channels must be evenly spaced."""
    freqs = np.atleast_1d(np.asarray(freqs_hz, dtype=np.float64))
    step = float(freqs[1] - freqs[0]) if freqs.size > 1 else float(channel_width_hz)
    if freqs.size > 1 and not np.allclose(np.diff(freqs), step, rtol=1e-9, atol=0.0):
        raise ValueError("channel frequencies must be evenly spaced for a linear FREQ axis")
    cell_deg = float(np.degrees(cell_rad))
    hdr = fits.Header()
    axes = [
        ("RA---SIN", npix // 2 + 1, -cell_deg, ra_deg, "deg"),
        ("DEC--SIN", npix // 2 + 1, cell_deg, dec_deg, "deg"),
        ("STOKES", 1, 1.0, 1.0, ""),
        ("FREQ", 1, step, float(freqs[0]), "Hz"),
    ]
    for i, (ctype, crpix, cdelt, crval, cunit) in enumerate(axes, start=1):
        hdr[f"CTYPE{i}"] = ctype
        hdr[f"CRPIX{i}"] = float(crpix)
        hdr[f"CDELT{i}"] = cdelt
        hdr[f"CRVAL{i}"] = crval
        hdr[f"CUNIT{i}"] = cunit
    hdr["RADESYS"] = "ICRS"
    hdr["EQUINOX"] = 2000.0
    hdr["SPECSYS"] = "TOPOCENT"
    hdr["CHANWID"] = (float(channel_width_hz), "[Hz] channel width")
    hdr["BUNIT"] = bunit
    hdr["TELESCOP"] = "SKA1-Low"
    if beam is not None:
        hdr["BMAJ"] = (beam.bmaj_deg, "[deg] clean beam major axis FWHM")
        hdr["BMIN"] = (beam.bmin_deg, "[deg] clean beam minor axis FWHM")
        hdr["BPA"] = (beam.bpa_deg, "[deg] clean beam position angle, east of north")
    return hdr


def write_image(
    path: str | os.PathLike[str],
    data: np.ndarray,
    ra_deg: float,
    dec_deg: float,
    cell_rad: float,
    freqs_hz: Sequence[float] | np.ndarray,
    channel_width_hz: float,
    bunit: str = "JY/BEAM",
    beam: Beam | None = None,
    extra: Mapping[str, Any] | None = None,
    history: Sequence[str] = (),
    date_obs: str | None = None,
    beams: Sequence[Beam] | None = None,
) -> None:
    """Write ``data`` ((nchan, npix, npix) or (npix, npix), indexed [y, x]) as 4-D FITS in
    single precision (BITPIX -32, as WSClean and CASA write images).

    ``extra`` holds additional header cards (value or (value, comment)); ``beams``, one per
    plane, go into a ``BEAMS`` table as CASA writes per-plane beams (``beam`` stays the
    primary header's).  The file is written to a temporary file in the target directory,
    fsynced and renamed over ``path``.
    """
    cube = np.asarray(data, dtype=np.float32)
    if cube.ndim == 2:
        cube = cube[np.newaxis]
    nchan, ny, nx = cube.shape
    freqs = np.atleast_1d(np.asarray(freqs_hz, dtype=np.float64))
    if ny != nx or freqs.size != nchan:
        raise ValueError("data must be square and have one plane per frequency")
    hdr = make_header(nx, ra_deg, dec_deg, cell_rad, freqs, channel_width_hz, bunit, beam)
    if date_obs is not None:
        hdr["DATE-OBS"] = date_obs
        hdr["MJD-OBS"] = Time(date_obs).mjd
    for key, value in (extra or {}).items():
        hdr[key] = value
    for line in history:
        hdr.add_history(line)
    if beams is not None:
        if len(beams) != nchan:
            raise ValueError(f"{len(beams)} beams for {nchan} planes")
        hdr["CASAMBM"] = (True, "per-plane beams in the BEAMS table")
    hdus = fits.HDUList([fits.PrimaryHDU(data=cube[:, np.newaxis], header=hdr)])
    if beams is not None:
        hdus.append(beams_table(beams))

    target = Path(path)
    with atomic.replacing(target) as tmp, open(tmp, "wb") as handle:  # the umask's mode
        hdus.writeto(handle)
        handle.flush()
        os.fsync(handle.fileno())
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def beams_table(beams: Sequence[Beam]) -> fits.BinTableHDU:
    """CASA's ``BEAMS`` extension: BMAJ, BMIN (arcsec), BPA (deg) per channel, one Stokes."""
    columns = [
        fits.Column("BMAJ", "1E", "arcsec", array=[b.bmaj_deg * 3600 for b in beams]),
        fits.Column("BMIN", "1E", "arcsec", array=[b.bmin_deg * 3600 for b in beams]),
        fits.Column("BPA", "1E", "deg", array=[b.bpa_deg for b in beams]),
        fits.Column("CHAN", "1J", array=np.arange(len(beams))),
        fits.Column("POL", "1J", array=np.zeros(len(beams))),
    ]
    table = fits.BinTableHDU.from_columns(columns, name="BEAMS")
    table.header["NCHAN"] = len(beams)
    table.header["NPOL"] = 1
    return table


class FitsError(ValueError):
    """A FITS file that is not a sky image: unreadable, empty, or without a celestial WCS."""


def read_image(path: str | os.PathLike[str]) -> tuple[np.ndarray, fits.Header]:
    """Read a FITS sky image: data as stored ((nchan, 1, npix, npix) for ours) and its header,
    which must carry a celestial (RA/Dec) WCS."""
    try:
        with fits.open(path, memmap=False) as hdul:
            data, header = hdul[0].data, hdul[0].header.copy()
    except (OSError, ValueError) as exc:
        raise FitsError(f"{path}: not a readable FITS file ({exc})") from None
    if data is None or data.ndim < 2:
        raise FitsError(f"{path}: no image in the primary HDU")
    if not WCS(header).has_celestial:
        raise FitsError(f"{path}: no celestial WCS (CTYPE1/2 RA---SIN/DEC--SIN expected)")
    return np.array(data), header
