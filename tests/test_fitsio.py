"""FITS round trip checked with astropy.wcs."""

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from casacore.measures import measures

from steps.science.fitsio import (
    beams_table,
    image_writer,
    make_header,
    read_header,
    read_image,
    write_image,
)
from steps.science.restore import Beam

NPIX = 64
CELL = np.deg2rad(0.02)
RA, DEC = 15.0, -45.0
FREQS = np.array([100e6, 101e6, 102e6])
BEAM = Beam(0.1, 0.05, 30.0, 2.1, 1.05, np.radians(30.0))


def _write(tmp_path: Path) -> Path:
    path = tmp_path / "image.fits"
    data = np.random.default_rng(0).standard_normal((3, NPIX, NPIX))
    write_image(
        path,
        data,
        RA,
        DEC,
        CELL,
        FREQS,
        1e6,
        "JY/BEAM",
        BEAM,
        extra={"OBJECT": "test", "NITER": (100, "minor cycles")},
        history=["made in a test"],
        date_obs="2024-01-01T00:00:00",
    )
    return path


def test_round_trip_data_and_cards(tmp_path: Path) -> None:
    path = _write(tmp_path)
    data, hdr = read_image(path)
    assert data.shape == (3, 1, NPIX, NPIX)
    assert hdr["BITPIX"] == -32  # single precision, as WSClean and CASA write images
    np.testing.assert_array_equal(
        data[:, 0], np.random.default_rng(0).standard_normal((3, NPIX, NPIX)).astype(np.float32)
    )
    assert hdr["BMAJ"] == BEAM.bmaj_deg and hdr["BMIN"] == BEAM.bmin_deg
    assert hdr["BPA"] == BEAM.bpa_deg
    assert hdr["BUNIT"] == "JY/BEAM" and hdr["TELESCOP"] == "SKA-LOW"
    site = measures().observatory(hdr["TELESCOP"])  # CASA finds the site by this name
    assert np.degrees(site["m1"]["value"]) == pytest.approx(-26.8, abs=0.1)
    assert hdr["RADESYS"] == "ICRS" and hdr["EQUINOX"] == 2000.0
    assert hdr["CRPIX1"] == NPIX // 2 + 1 and hdr["CDELT1"] == pytest.approx(-0.02)
    assert hdr["OBJECT"] == "test" and hdr["NITER"] == 100
    assert "made in a test" in str(hdr["HISTORY"])
    assert hdr["DATE-OBS"] == "2024-01-01T00:00:00"
    assert [p.name for p in tmp_path.iterdir()] == ["image.fits"]


def test_wcs_orientation_and_frequencies(tmp_path: Path) -> None:
    wcs = WCS(read_image(_write(tmp_path))[1])
    c = NPIX // 2
    ra, dec, stokes, freq = wcs.wcs_pix2world([[c, c, 0, 0]], 0)[0]
    assert ra == pytest.approx(RA) and dec == pytest.approx(DEC)
    assert stokes == 1.0 and freq == pytest.approx(FREQS[0])
    ra_left, _, _, _ = wcs.wcs_pix2world([[c - 10, c, 0, 0]], 0)[0]
    assert ra_left > RA  # x decreasing = east
    _, dec_up, _, _ = wcs.wcs_pix2world([[c, c + 10, 0, 0]], 0)[0]
    assert dec_up > DEC
    freqs = wcs.wcs_pix2world([[c, c, 0, k] for k in range(3)], 0)[:, 3]
    np.testing.assert_allclose(freqs, FREQS, rtol=1e-12)


def test_single_plane_and_uneven_channels(tmp_path: Path) -> None:
    path = tmp_path / "psf.fits"
    write_image(path, np.ones((NPIX, NPIX)), RA, DEC, CELL, [1e8], 2e5, "JY/PIXEL")
    data, hdr = read_image(path)
    assert data.shape == (1, 1, NPIX, NPIX) and hdr["BUNIT"] == "JY/PIXEL"
    assert hdr["CDELT4"] == 2e5 and "BMAJ" not in hdr
    with pytest.raises(ValueError, match="evenly spaced"):
        write_image(path, np.ones((3, NPIX, NPIX)), RA, DEC, CELL, [1e8, 1.1e8, 1.3e8], 1e6, "JY")
    assert [p.name for p in tmp_path.iterdir()] == ["psf.fits"]


def test_per_plane_beams_as_casa_writes_them(tmp_path: Path) -> None:
    path = tmp_path / "cube.fits"
    beams = [Beam(0.1 + 0.01 * k, 0.05, 30.0 + k, 2.1, 1.05, np.radians(30.0)) for k in range(3)]
    write_image(path, np.ones((3, NPIX, NPIX)), RA, DEC, CELL, FREQS, 1e6, beam=BEAM, beams=beams)
    with fits.open(path) as hdul:
        assert hdul[0].header["CASAMBM"] is True and hdul[0].header["BMAJ"] == BEAM.bmaj_deg
        table = hdul["BEAMS"]
        assert (table.header["NCHAN"], table.header["NPOL"]) == (3, 1)
        assert [table.columns[c].unit for c in ("BMAJ", "BMIN", "BPA")] == ["arcsec"] * 2 + ["deg"]
        np.testing.assert_allclose(table.data["BMAJ"], [360.0, 396.0, 432.0], rtol=1e-6)
        np.testing.assert_allclose(table.data["BMIN"], 180.0, rtol=1e-6)
        np.testing.assert_allclose(table.data["BPA"], [30.0, 31.0, 32.0], rtol=1e-6)
        assert list(table.data["CHAN"]) == [0, 1, 2] and list(table.data["POL"]) == [0, 0, 0]
    with pytest.raises(ValueError, match="2 beams for 3 planes"):
        write_image(path, np.ones((3, NPIX, NPIX)), RA, DEC, CELL, FREQS, 1e6, beams=beams[:2])


def test_a_cube_written_plane_by_plane(tmp_path: Path) -> None:
    """``image_writer`` streams the planes into the file astropy writes of the whole cube
    (with its BEAMS table); a block that fails, or ends with planes missing, leaves nothing
    behind."""
    data = np.random.default_rng(1).standard_normal((3, NPIX, NPIX))
    beams = [Beam(0.1 + 0.01 * k, 0.05, 30.0, 2.1, 1.05, np.radians(30.0)) for k in range(3)]
    args = (RA, DEC, CELL, FREQS, 1e6, "JY/BEAM", BEAM)
    header = make_header(NPIX, *args)
    header.add_history("h")
    header["CASAMBM"] = (True, "per-plane beams in the BEAMS table")
    whole = fits.PrimaryHDU(data.astype(np.float32)[:, np.newaxis], header)
    fits.HDUList([whole, beams_table(beams)]).writeto(tmp_path / "whole.fits")
    with image_writer(tmp_path / "planes.fits", NPIX, *args, beams=beams, history=["h"]) as write:
        for plane in data:
            write(plane)
    whole, planes = ((tmp_path / n).read_bytes() for n in ("whole.fits", "planes.fits"))
    assert whole == planes
    assert read_header(tmp_path / "planes.fits")["NAXIS4"] == 3
    cases = {  # name: (planes written, error)
        "short": ([data[0], data[1]], "2 planes written of the 3"),
        "long": ([*data, data[0]], "more than the 3 planes"),
        "wrong": ([data[0, :10]], "a plane of shape"),
    }
    for name, (written, error) in cases.items():
        with (
            pytest.raises(ValueError, match=error),
            image_writer(tmp_path / f"{name}.fits", NPIX, *args) as write,
        ):
            for plane in written:
                write(plane)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["planes.fits", "whole.fits"]
