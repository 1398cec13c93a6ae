"""Other fields end to end: a user catalogue at RA 150, Dec -60 lands where the file put it."""

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from astropy.io import fits
from astropy.wcs import WCS

from steps import simulate
from steps.buffers import Buffers
from steps.params import parse
from steps.science import layout
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
    components, freqs, apparent = read_sky(buffers.sky)
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


def test_synthetic_field_and_a_layout_file(tmp_path: Path) -> None:
    params = parse({**SMALL, "sky_model": "synthetic", "flux_limit": 1.0})
    components, apparent, provenance = simulate.field_components(params)
    assert len(components.names) > 10 and apparent.shape == (len(components.names), 2)
    assert "seed 180555" in provenance
    again, _, _ = simulate.field_components(params)
    np.testing.assert_array_equal(components.ra_deg, again.ra_deg)
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
