"""The image step's FITS products: per-window clean beams, the observation's time and site."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import TETE, EarthLocation, SkyCoord
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS

from steps import image, store
from steps.buffers import Buffers
from steps.params import parse
from steps.science import fitsio, restore
from steps.skyfile import read_sky
from tests.small_run import RAW, SmallRun, run_in_process, small_run


@pytest.fixture(scope="session")
def run(tmp_path_factory: pytest.TempPathFactory) -> SmallRun:
    return small_run(tmp_path_factory)


@pytest.fixture(scope="module")
def three_terms(tmp_path_factory: pytest.TempPathFactory) -> Buffers:
    """The shared run's sky and data, deconvolved with three Taylor terms."""
    params = parse({**RAW, "nmoment": 3, "export_ms": False})
    buffers = Buffers.of(params, tmp_path_factory.mktemp("three-terms"))
    run_in_process(params, buffers)
    return buffers


def test_each_window_is_restored_with_its_own_beam(run: SmallRun) -> None:
    ical = store.open_dataset(run.buffers.ical_model)
    psfs, model, residual = (ical[name].values for name in ("PSF", "MODEL", "RESIDUAL"))
    with fits.open(run.buffers.image("restored")) as hdul:
        header, data, table = hdul[0].header, hdul[0].data[:, 0], hdul["BEAMS"].data
    assert len(table) == run.params.nfreqwin and header["CASAMBM"] is True
    fitted = [restore.fit_clean_beam(p, run.params.cellsize) for p in psfs]
    np.testing.assert_allclose(table["BMAJ"], [b.bmaj_deg * 3600 for b in fitted], rtol=1e-6)
    np.testing.assert_allclose(table["BMIN"], [b.bmin_deg * 3600 for b in fitted], rtol=1e-6)
    assert table["BMAJ"][0] > table["BMAJ"][-1]  # the beam shrinks with frequency
    centre = run.params.nfreqwin // 2
    assert header["BMAJ"] == pytest.approx(fitted[centre].bmaj_deg)
    for cube in (psfs, model, residual):  # every plane written by calibrate's tasks
        assert cube.shape[0] == run.params.nfreqwin and np.isfinite(cube).all()
    for window in range(run.params.nfreqwin):
        expected = restore.restore(model[window], residual[window], fitted[window])
        np.testing.assert_allclose(data[window], expected, atol=1e-6 * np.abs(expected).max())


def test_images_carry_the_observation_start_and_site(run: SmallRun) -> None:
    """At DATE-OBS plus half an integration, seen from OBSGEO, the phase centre's apparent
    place is at the first hour angle (-30 deg)."""
    header = fits.getheader(run.buffers.image("mfs_restored"))
    integration = store.open_store(run.buffers.calibrated).attrs["integration_time_s"]
    first = Time(header["DATE-OBS"], scale="utc") + integration / 2 * u.s
    assert header["MJD-OBS"] == pytest.approx(Time(header["DATE-OBS"]).mjd, abs=1e-9)
    site = EarthLocation.from_geocentric(*(header[f"OBSGEO-{a}"] for a in "XYZ"), unit=u.m)
    assert site.lat.deg == pytest.approx(-26.8, abs=0.2)  # the SKA1-Low site
    lst = first.sidereal_time("apparent", longitude=site.lon).deg
    centre = SkyCoord(header["CRVAL1"] * u.deg, header["CRVAL2"] * u.deg)
    apparent = centre.transform_to(TETE(obstime=first)).ra.deg  # of date, not J2000 (-29.75)
    hour_angle = (lst - apparent + 180.0) % 360.0 - 180.0
    assert hour_angle == pytest.approx(-30.0, abs=0.05)
    assert header["WEIGHTNG"] == "natural" and header["TIMESYS"] == "UTC"


def test_spectral_index_is_labelled_apparent(run: SmallRun) -> None:
    header = fits.getheader(run.buffers.image("mfs_alpha"))
    assert header["BTYPE"] == "spectral index" and header["ALPHASNR"] == image.ALPHA_SNR
    assert "station beam" in str(header["HISTORY"])


def test_spectral_index_follows_the_apparent_spectra(run: SmallRun) -> None:
    """At the restored peak of each of the three brightest sources, the map's I1 / I0 is the
    slope over the intercept of a straight line through the source's apparent fluxes
    (sky times station beam) against x = (nu - nu_ref) / nu_ref: -5.9 for the brightest,
    whose beam-attenuated flux falls fourfold over the band."""
    alpha, header = fitsio.read_image(run.buffers.image("mfs_alpha"))
    restored, _ = fitsio.read_image(run.buffers.image("mfs_restored"))
    alpha, restored = alpha.reshape(alpha.shape[-2:]), restored.reshape(restored.shape[-2:])
    sky = read_sky(run.buffers.sky)
    components, freqs, apparent = sky.components, sky.freqs_hz, sky.apparent_jy
    x = (freqs - freqs.mean()) / freqs.mean()
    px, py = WCS(header).celestial.world_to_pixel_values(components.ra_deg, components.dec_deg)
    npix = restored.shape[0]
    inside = [
        i for i in np.argsort(-apparent.mean(1)) if 2 <= px[i] < npix - 2 and 2 <= py[i] < npix - 2
    ]
    for i in inside[:3]:
        slope, intercept = np.polyfit(x, apparent[i], 1)
        y0, x0 = round(float(py[i])) - 2, round(float(px[i])) - 2
        near = restored[y0 : y0 + 5, x0 : x0 + 5]
        dy, dx = np.unravel_index(np.argmax(near), near.shape)
        assert alpha[y0 + dy, x0 + dx] == pytest.approx(slope / intercept, abs=0.2), (
            components.names[i]
        )


def test_mfs_restored_is_the_model_restored_onto_the_residual_written(
    three_terms: Buffers,
) -> None:
    """With three Taylor terms, the PSF-peak Hessian couples term 0's residual to term 2's:
    ``mfs_residual`` is the residual ``mfs_restored`` holds (once the moment residual, 7 rms
    of it off), and metrics.json's MFS rms is that image's."""
    (restored, header), (model, _), (residual, _) = (
        fitsio.read_image(three_terms.image(name))
        for name in ("mfs_restored", "mfs_model", "mfs_residual")
    )
    bmaj, bmin, bpa = header["BMAJ"], header["BMIN"], header["BPA"]  # the header's own beam
    sigmas = np.array([bmaj, bmin]) / abs(header["CDELT2"]) / restore.FWHM_PER_SIGMA
    beam = restore.Beam(bmaj, bmin, bpa, *sigmas, np.radians(bpa))
    restored, model, residual = (a[0, 0].astype(float) for a in (restored, model, residual))
    rms = float(np.sqrt(np.mean(residual**2)))
    expected = restore.restore(model, residual, beam)
    assert np.abs(restored - expected).max() < 1e-3 * rms
    metrics = json.loads(three_terms.metrics.read_text())["mfs"]
    assert metrics["residual_rms_jy"] == pytest.approx(rms, rel=1e-6)
    assert metrics["dynamic_range"] == pytest.approx(restored.max() / rms, rel=1e-6)


def test_three_terms_restore_the_flux_at_the_reference_frequency(three_terms: Buffers) -> None:
    """Taylor term 0 of three is the intensity at the reference frequency, which the MFS
    truth now is: the four brightest within 1.5 % of it (0.92-0.97 of the windows' mean flux,
    which the truth once was)."""
    sources = json.loads(three_terms.metrics.read_text())["mfs"]["sources"]
    for source in sources[:4]:
        assert source["flux_ratio"] == pytest.approx(1.0, abs=0.015), source["name"]
