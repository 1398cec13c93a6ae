"""FITS image output (4-D RA---SIN, DEC--SIN, STOKES, FREQ), written atomically."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS

from steps import atomic
from steps.science import TELESCOPE
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
    hdr["TELESCOP"] = TELESCOPE
    if beam is not None:
        hdr["BMAJ"] = (beam.bmaj_deg, "[deg] clean beam major axis FWHM")
        hdr["BMIN"] = (beam.bmin_deg, "[deg] clean beam minor axis FWHM")
        hdr["BPA"] = (beam.bpa_deg, "[deg] clean beam position angle, east of north")
    return hdr


def write_image(path: str | os.PathLike[str], data: np.ndarray, *header: Any, **cards: Any) -> None:
    """Write ``data`` ((nchan, npix, npix) or (npix, npix), indexed [y, x]) as 4-D FITS:
    ``image_writer``'s file, ``header`` and ``cards`` its arguments after ``npix``."""
    cube = np.asarray(data)
    if cube.ndim == 2:
        cube = cube[np.newaxis]
    if cube.shape[1] != cube.shape[2]:
        raise ValueError("data must be square")
    with image_writer(path, cube.shape[2], *header, **cards) as write:
        for plane in cube:
            write(plane)


@contextmanager
def image_writer(
    path: str | os.PathLike[str],
    npix: int,
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
) -> Iterator[Callable[[np.ndarray], None]]:
    """A 4-D FITS cube of one (npix, npix) plane per frequency, written plane by plane in
    single precision (BITPIX -32, as WSClean and CASA write images): the block gets the
    function writing the next plane, so that no more than a plane need be in memory.

    ``extra`` holds additional header cards (value or (value, comment)); ``beams``, one per
    plane, go into a ``BEAMS`` table as CASA writes per-plane beams (``beam`` stays the
    primary header's).  The file is written to a temporary file in the target directory,
    fsynced and renamed over ``path`` when the block ends with every plane written.
    """
    freqs = np.atleast_1d(np.asarray(freqs_hz, dtype=np.float64))
    nchan = freqs.size
    if beams is not None and len(beams) != nchan:
        raise ValueError(f"{len(beams)} beams for {nchan} planes")
    hdr = fits.Header(
        [
            ("SIMPLE", True, "conforms to FITS standard"),
            ("BITPIX", -32, "array data type"),
            ("NAXIS", 4, "number of array dimensions"),
        ]
    )
    for axis, size in enumerate((npix, npix, 1, nchan), start=1):
        hdr[f"NAXIS{axis}"] = size
    if beams is not None:
        hdr["EXTEND"] = True
    hdr.update(make_header(npix, ra_deg, dec_deg, cell_rad, freqs, channel_width_hz, bunit, beam))
    if date_obs is not None:
        hdr["DATE-OBS"] = date_obs
        hdr["MJD-OBS"] = Time(date_obs).mjd
    for key, value in (extra or {}).items():
        hdr[key] = value
    for line in history:
        hdr.add_history(line)
    if beams is not None:
        hdr["CASAMBM"] = (True, "per-plane beams in the BEAMS table")

    target = Path(path)
    written = 0

    with atomic.replacing(target) as tmp:
        with fits.StreamingHDU(tmp, hdr) as stream:

            def write(plane: np.ndarray) -> None:
                nonlocal written
                if np.shape(plane) != (npix, npix):
                    raise ValueError(f"a plane of shape {np.shape(plane)}, not ({npix}, {npix})")
                if written == nchan:
                    raise ValueError(f"more than the {nchan} planes of {target.name}")
                stream.write(np.asarray(plane, dtype=">f4"))
                written += 1

            yield write
            if written != nchan:
                raise ValueError(f"{written} planes written of the {nchan} of {target.name}")
        if beams is not None:
            table = beams_table(beams)
            fits.append(tmp, table.data, table.header)
        with open(tmp, "rb+") as handle:
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
    return np.array(data), _celestial(path, header)


def read_header(path: str | os.PathLike[str]) -> fits.Header:
    """The header of a FITS sky image, without reading its data; it must carry a celestial
    WCS."""
    try:
        header = fits.getheader(path)
    except (OSError, ValueError) as exc:
        raise FitsError(f"{path}: not a readable FITS file ({exc})") from None
    if header.get("NAXIS", 0) < 2:
        raise FitsError(f"{path}: no image in the primary HDU")
    return _celestial(path, header)


def _celestial(path: str | os.PathLike[str], header: fits.Header) -> fits.Header:
    if not WCS(header).has_celestial:
        raise FitsError(f"{path}: no celestial WCS (CTYPE1/2 RA---SIN/DEC--SIN expected)")
    return header
