"""Other fields end to end: a user catalogue at RA 150, Dec -60 lands where the file put it."""

import csv
import json
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
import zarr
from astropy.io import fits
from astropy.wcs import WCS
from scipy.interpolate import RectBivariateSpline

from steps import simulate
from steps.buffers import Buffers
from steps.params import parse
from steps.science import beam, layout, sky
from steps.science.sky import DATA_DIR
from steps.skyfile import read_sky
from tests.small_run import run_in_process

CATALOGUE = """name,ra_deg,dec_deg,flux_jy,ref_freq_hz,alpha
east,154.0,-59.5,8.0,100e6,-0.7
south,149.0,-62.0,5.0,150e6,-0.9
north,151.0,-58.2,4.0,100e6,0.0
"""
SMALL = {
    "n_workers": 1,
    "nfreqwin": 2,
    "ntimes": 3,
    "rmax": 300.0,
    "npixel": 256,
    "cellsize": 0.001,
    "niter": 200,
    "nmajor": 2,
    "ra": 150.0,
    "dec": -60.0,
    "pb_id": "pb-fields-00000000-00000",
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    """simulate -> corrupt -> calibrate -> image on an in-process Dask cluster."""
    root = tmp_path_factory.mktemp("fields")
    (root / "cat.csv").write_text(CATALOGUE)
    params = parse({**SMALL, "sky_model": str(root / "cat.csv")})
    buffers = Buffers.of(params, root / "buffers")
    run_in_process(params, buffers)
    return params, buffers


def test_sources_appear_where_the_file_put_them(run) -> None:
    params, buffers = run
    with fits.open(buffers.image("restored")) as hdul:
        header, data = hdul[0].header, hdul[0].data
    wcs = WCS(header).celestial
    assert header["CRVAL1"] == pytest.approx(150.0) and header["CRVAL2"] == pytest.approx(-60.0)
    sky = read_sky(buffers.sky)
    components, freqs, apparent = sky.components, sky.freqs_hz, sky.apparent_jy
    assert components.names == ["east", "south", "north"]
    np.testing.assert_allclose(freqs, params.frequencies(), atol=100.0)
    plane = data[params.nfreqwin // 2, 0]
    for i in range(3):
        x, y = wcs.world_to_pixel_values(components.ra_deg[i], components.dec_deg[i])
        ix, iy = round(float(x)), round(float(y))
        patch = plane[iy - 3 : iy + 4, ix - 3 : ix + 4]
        py, px = np.unravel_index(np.argmax(patch), patch.shape)
        assert abs(ix - 3 + px - x) <= 1 and abs(iy - 3 + py - y) <= 1, components.names[i]
        assert patch.max() == pytest.approx(apparent[i, params.nfreqwin // 2], rel=0.1)
    # the brightest pixel of the image is the brightest apparent source
    x, y = wcs.world_to_pixel_values(components.ra_deg, components.dec_deg)
    py, px = np.unravel_index(np.argmax(plane), plane.shape)
    brightest = int(np.argmax(apparent[:, params.nfreqwin // 2]))
    assert np.hypot(px - x[brightest], py - y[brightest]) <= 1


def test_provenance_in_store_and_metrics(run) -> None:
    params, buffers = run
    attrs = zarr.open_group(buffers.model, mode="r").attrs
    assert attrs["sky_model"] == params.sky_model and attrs["sky_components"] == 3
    assert attrs["sky_model_provenance"].startswith(f"catalogue {params.sky_model} (3 sources")
    assert "sha256" in attrs["sky_model_provenance"]
    assert (
        attrs["configuration"] == "ska1-low" and "rmax=300 m" in attrs["configuration_provenance"]
    )
    metrics = json.loads(buffers.metrics.read_text())
    assert {row["name"] for row in metrics["sources"]} == {"east", "south", "north"}
    # the station with the largest phase error, named as the layout names it
    assert metrics["phase_worst_station"] in attrs["antenna_names"]
    worst = metrics["phase_rms_shift_removed_worst_station_rad"]
    assert worst >= metrics["phase_rms_shift_removed_rad"]


def test_mfs_truth_is_the_flux_at_the_reference_frequency(run) -> None:
    """metrics.json's MFS truth is each catalogue power law at the windows' mean, 100 MHz,
    times the station beam there: 0.15-1.1 % off the windows' mean apparent flux, which the
    truth once was, for these sources 2 deg out."""
    params, buffers = run
    catalogue = {row["name"]: row for row in csv.DictReader(StringIO(CATALOGUE))}
    names = list(catalogue)
    ra, dec = (np.array([float(catalogue[n][k]) for n in names]) for k in ("ra_deg", "dec_deg"))
    l, m, _ = sky.lmn(ra, dec, params.ra, params.dec)  # noqa: E741
    expected = [
        float(catalogue[n]["flux_jy"])
        * (100e6 / float(catalogue[n]["ref_freq_hz"])) ** float(catalogue[n]["alpha"])
        for n in names
    ] * beam.StationBeam().power(l, m, 100e6)
    truth = {
        s["name"]: s["true_flux_jy"]
        for s in json.loads(buffers.metrics.read_text())["mfs"]["sources"]
    }
    np.testing.assert_allclose([truth[n] for n in names], expected, rtol=1e-8)
    windows_mean = read_sky(buffers.sky).apparent_jy.mean(axis=1)
    assert np.all(np.abs(windows_mean / expected - 1) > 1e-3)


def test_mfs_truth_by_hand(tmp_path: Path) -> None:
    """simulate's MFS truth by hand, at 110 MHz (windows 90, 110 and 130 MHz): a source on
    the phase centre has its power law's flux there (the beam is 1); one 4 deg north also
    the beam image's value at m = sin 4 deg scaled to 100 MHz (the beam shrinks as 1/nu),
    read with a spline of its own, over its value at the centre."""
    (tmp_path / "cat.csv").write_text(
        "name,ra_deg,dec_deg,flux_jy,ref_freq_hz,alpha\n"
        "centre,150.0,-60.0,3.0,150e6,-0.8\nnorth,150.0,-56.0,5.0,100e6,0.4\n"
    )
    band = {"freq_min": 90e6, "freq_max": 130e6, "nfreqwin": 3}
    truth, _ = simulate.field_components(
        parse({**SMALL, **band, "sky_model": str(tmp_path / "cat.csv")})
    )
    with fits.open(DATA_DIR / "ska1_low_beam_100mhz.fits") as hdul:
        header, image = hdul[0].header, hdul[0].data[0, 0].astype(float)
    spline = RectBivariateSpline(np.arange(image.shape[0]), np.arange(image.shape[1]), image)
    cy, cx = header["CRPIX2"] - 1, header["CRPIX1"] - 1
    y = cy + np.sin(np.radians(4.0)) * (110e6 / 100e6) / np.radians(header["CDELT2"])
    gain = spline.ev(y, cx) / spline.ev(cy, cx)
    assert truth.mfs_freq_hz == 110e6
    expected = [3.0 * (110 / 150) ** -0.8, 5.0 * 1.1**0.4 * gain]
    np.testing.assert_allclose(truth.mfs_apparent_jy, expected, rtol=1e-9)
    assert gain == pytest.approx(0.26, abs=0.01)  # the main lobe's edge, off any pixel centre


def test_synthetic_field_and_a_layout_file(tmp_path: Path) -> None:
    params = parse({**SMALL, "sky_model": "synthetic", "flux_limit": 1.0})
    truth, provenance = simulate.field_components(params)
    count = len(truth.components.names)
    assert count > 10 and truth.apparent_jy.shape == (count, 2)
    assert "seed 180555" in provenance
    again, _ = simulate.field_components(params)
    np.testing.assert_array_equal(truth.components.ra_deg, again.components.ra_deg)
    # a user layout (WGS84 CSV of the core, same centre) gives the shipped layout's baselines
    rows = (layout.DATA_DIR / "ska1_low_stations.csv").read_text().splitlines()
    path = tmp_path / "core.csv"
    centre = "# centre_lon_deg = 116.7644482\n# centre_lat_deg = -26.82472208\n"
    table = "\n".join(",".join(r.split(",")[:4]) for r in rows[:225])
    path.write_text(f"{centre}# centre_height_m = 365.0\n{table}\n")
    synthetic = {**SMALL, "sky_model": "synthetic"}  # GLEAM's subset does not cover this field
    user, obs = simulate.observation(parse({**synthetic, "configuration": str(path)}))
    shipped, ref = simulate.observation(parse(synthetic))
    assert user.names == shipped.names
    np.testing.assert_allclose(obs.uvw, ref.uvw, atol=1e-3)


def test_one_window_says_freq_max_is_not_used() -> None:
    assert simulate.single_window(parse({"nfreqwin": 2})) is None
    assert simulate.single_window(parse({"nfreqwin": 1, "freq_max": 0.9e8})) is None
    assert simulate.single_window(parse({"nfreqwin": 1, "freq_max": 1.1e8})) == (
        "nfreqwin = 1: one window at freq_min = 90 MHz, 0.9 MHz wide; freq_max = 110 MHz is "
        "not used (as the original's linspace)"
    )


def test_a_cell_coarser_than_the_longest_baselines_nyquist_cell_is_named() -> None:
    """One 1 km baseline at 100 MHz: 333.6 wavelengths, a Nyquist cell of 1.5 mrad."""
    uvw = np.array([[[600.0, -800.0, 5.0]]])
    freqs = np.array([90e6, 100e6])
    assert simulate.undersampled(0.0014, uvw, freqs) is None
    message = simulate.undersampled(0.002, uvw, freqs)
    assert message is not None
    assert (
        "cellsize = 0.002 rad" in message and "(0.0015 rad: 334 wavelengths at 100 MHz)" in message
    )


def test_a_phase_centre_low_in_the_sky_is_said() -> None:
    """Analytic cases: the celestial equator sets at hour angle 90 deg from any latitude, and
    the south pole stands at minus the latitude at every hour angle."""
    lat = -26.82472208
    assert simulate.low_elevation(lat, -30.0, [-30.0, 0.0, 30.0]) is None  # the seed's
    assert simulate.low_elevation(lat, -90.0, [-90.0, 90.0]) is None  # 26.8 deg up
    note = simulate.low_elevation(lat, 0.0, [-90.0, 0.0, 90.0])
    assert note is not None and note.startswith(
        "dec = 0: the phase centre is at 0.0 deg elevation at hour angle +-90 deg"
    )
    assert "at 4.2 deg elevation at hour angle +-30 deg" in str(
        simulate.low_elevation(lat, 55.0, [-30.0, 30.0])
    )
