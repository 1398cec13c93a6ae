"""Measurement Set export: round trip to the store, MS v2 conventions, and WSClean as a client."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from casacore import tables
from casacore.measures import measures

from dag.cli import main
from steps import store
from steps.metrics import peak_near
from steps.msexport import ms_path, write_ms
from steps.science import fitsio
from tests.small_run import SmallRun, small_run


@pytest.fixture(scope="session")
def run(tmp_path_factory: pytest.TempPathFactory) -> SmallRun:
    return small_run(tmp_path_factory)


def _open(path: Path, sub: str = "") -> tables.table:
    return tables.table(f"{path}/{sub}" if sub else str(path), ack=False)


def test_steps_wrote_one_ms_per_store(run: SmallRun) -> None:
    assert ms_path(run.buffers.model).name == "model.ms"
    assert (run.buffers.vis / "model.ms").is_dir()
    assert (run.buffers.vis / "calibrated.ms").is_dir()


def test_round_trip_is_exact(run: SmallRun) -> None:
    obs = store.layout_of(store.open_store(run.buffers.calibrated))
    raw = store.open_store(run.buffers.corrupted)["VISIBILITY"].values
    calibrated = store.open_store(run.buffers.calibrated)
    ntime, nbl = obs.times.size, obs.antenna1.size
    with _open(ms_path(run.buffers.calibrated)) as ms:
        assert ms.nrows() == ntime * nbl  # evenly spaced windows: one SPW, rows (time, baseline)
        np.testing.assert_array_equal(ms.getcol("UVW").reshape(ntime, nbl, 3), obs.uvw)
        np.testing.assert_array_equal(ms.getcol("TIME"), np.repeat(obs.times, nbl))
        np.testing.assert_array_equal(ms.getcol("TIME_CENTROID"), np.repeat(obs.times, nbl))
        np.testing.assert_array_equal(ms.getcol("ANTENNA1"), np.tile(obs.antenna1, ntime))
        np.testing.assert_array_equal(ms.getcol("ANTENNA2"), np.tile(obs.antenna2, ntime))
        data, corrected = ms.getcol("DATA"), ms.getcol("CORRECTED_DATA")
        assert data.dtype == np.complex64 and data.shape == (ntime * nbl, obs.frequencies.size, 1)
        # the MS phase sign is opposite to the store's (see steps/msexport.py): conjugated
        np.testing.assert_array_equal(np.conj(data).reshape(raw.shape), raw)
        np.testing.assert_array_equal(
            np.conj(corrected).reshape(raw.shape), calibrated["VISIBILITY"].values
        )
        np.testing.assert_array_equal(
            ms.getcol("FLAG").reshape(raw.shape), calibrated["FLAG"].values
        )
        np.testing.assert_array_equal(
            ms.getcol("WEIGHT_SPECTRUM").reshape(raw.shape), calibrated["WEIGHT"].values
        )
        np.testing.assert_allclose(ms.getcol("INTERVAL"), obs.integration_time)
        np.testing.assert_allclose(ms.getcol("EXPOSURE"), obs.integration_time)
    with _open(ms_path(run.buffers.calibrated), "SPECTRAL_WINDOW") as spw:
        np.testing.assert_array_equal(spw.getcol("CHAN_FREQ")[0], obs.frequencies)
        np.testing.assert_array_equal(spw.getcol("CHAN_WIDTH")[0], obs.channel_width)


def test_ms_v2_definition(run: SmallRun) -> None:
    """Required columns, keywords and measure references of the MS v2 definition."""
    path = ms_path(run.buffers.calibrated)
    attrs = store.open_store(run.buffers.calibrated).attrs
    with _open(path) as ms:
        assert ms.getkeyword("MS_VERSION") == 2.0
        for sub in ("ANTENNA", "DATA_DESCRIPTION", "FEED", "FIELD", "FLAG_CMD", "HISTORY"):
            assert sub in ms.getkeywords()
        for sub in ("OBSERVATION", "POINTING", "POLARIZATION", "PROCESSOR", "SPECTRAL_WINDOW"):
            assert sub in ms.getkeywords()
        assert set(tables.required_ms_desc("MAIN")) - {"_define_hypercolumn_"} <= {
            *ms.colnames(),
            "_keywords_",
            "_private_keywords_",
        }
        assert ms.getcolkeyword("UVW", "QuantumUnits") == ["m", "m", "m"]
        assert ms.getcolkeyword("UVW", "MEASINFO") == {"type": "uvw", "Ref": "J2000"}
        assert ms.getcolkeyword("TIME", "MEASINFO") == {"type": "epoch", "Ref": "UTC"}
        assert ms.getcolkeyword("TIME", "QuantumUnits") == ["s"]
        assert ms.getcolkeyword("DATA", "QuantumUnits") == ["Jy"]
        assert not ms.getcol("FLAG_ROW").any()
        np.testing.assert_allclose(ms.getcol("SIGMA"), 1 / np.sqrt(ms.getcol("WEIGHT")))
    with _open(path, "ANTENNA") as antenna:
        assert antenna.getcolkeyword("POSITION", "MEASINFO")["Ref"] == "ITRF"
        np.testing.assert_allclose(antenna.getcol("POSITION"), attrs["antenna_itrf_m"])
        assert list(antenna.getcol("NAME")) == list(attrs["antenna_names"])
        np.testing.assert_array_equal(antenna.getcol("DISH_DIAMETER"), 38.0)
    with _open(path, "FIELD") as field:
        assert field.getcolkeyword("PHASE_DIR", "MEASINFO")["Ref"] == "J2000"
        assert field.getcolkeyword("PHASE_DIR", "QuantumUnits") == ["rad", "rad"]
        np.testing.assert_allclose(
            field.getcol("PHASE_DIR")[0, 0], np.radians([run.params.ra, run.params.dec])
        )
    with _open(path, "POLARIZATION") as pol:
        assert pol.getcol("CORR_TYPE").tolist() == [[1]]  # Stokes I
    with _open(path, "SPECTRAL_WINDOW") as spw:
        assert spw.getcol("MEAS_FREQ_REF").tolist() == [5]  # TOPO
        assert spw.getcolkeyword("CHAN_FREQ", "QuantumUnits") == ["Hz"]
    with _open(path, "OBSERVATION") as obs:
        name = obs.getcol("TELESCOPE_NAME")[0]
    site = measures().observatory(name)  # casacore knows the telescope (raises if not)
    assert np.degrees(site["m1"]["value"]) == pytest.approx(-26.8, abs=0.1)


def test_uvw_sign_is_casacore_geometry(run: SmallRun, tmp_path: Path) -> None:
    """UVW = ANTENNA2 - ANTENNA1 in the J2000 frame, as casacore derives it from the antenna
    positions, TIME and PHASE_DIR."""
    path = shutil.copytree(ms_path(run.buffers.model), tmp_path / "geo.ms")
    tables.addDerivedMSCal(str(path))
    with _open(path) as ms:
        uvw, derived = ms.getcol("UVW"), ms.getcol("UVW_J2000")
    length = np.linalg.norm(uvw, axis=1)
    # to the annual aberration (<= 1e-4 rad) casacore applies and the simulation does not;
    # the hour angle and declination of date taken for J2000 ones were 2e-3 off
    assert np.all(np.linalg.norm(uvw - derived, axis=1) < 2e-4 * length + 1e-3)


def test_uneven_windows_are_spectral_windows(tmp_path: Path) -> None:
    freqs = np.array([100e6, 110e6, 130e6])
    ant1, ant2 = np.array([0, 0, 1]), np.array([1, 2, 2])
    rng = np.random.default_rng(1)
    layout = store.Layout(
        times=np.array([5e9, 5e9 + 60]),
        frequencies=freqs,
        channel_width=1e6,
        antenna1=ant1,
        antenna2=ant2,
        antenna_names=["A", "B", "C"],
        uvw=rng.normal(size=(2, 3, 3)) * 100,
        integration_time=60.0,
    )
    attrs = {
        "antenna_names": ["A", "B", "C"],
        "antenna_itrf_m": (rng.normal(size=(3, 3)) * 100 + [-2.56e6, 5.09e6, -2.86e6]).tolist(),
        "antenna_diameter_m": 38.0,
        "phase_centre": {"ra_deg": 10.0, "dec_deg": -40.0, "frame": "icrs"},
    }
    tmp = store.create(tmp_path / "s.zarr", layout, attrs, time_chunk=1)
    vis = (rng.normal(size=(3, 2, 3)) + 1j * rng.normal(size=(3, 2, 3))).astype(np.complex64)
    for i in range(3):
        store.write_window(tmp, i, vis[i], np.ones((2, 3)), np.zeros((2, 3), bool))
    data = store.finalize(tmp, tmp_path / "s.zarr")
    assert len(store.time_chunks(data)) == 2  # the MS is written a time chunk at a time
    out = write_ms(tmp_path / "s.ms", data)
    with _open(out, "SPECTRAL_WINDOW") as spw:
        np.testing.assert_array_equal(spw.getcol("CHAN_FREQ")[:, 0], freqs)
    with _open(out) as ms:
        assert ms.nrows() == 2 * 3 * 3
        ddid = ms.getcol("DATA_DESC_ID").reshape(2, 3, 3)  # (time, spw, baseline)
        np.testing.assert_array_equal(ddid[:, :, 0], [[0, 1, 2], [0, 1, 2]])
        got = np.conj(ms.getcol("DATA")[:, 0, 0]).reshape(2, 3, 3)
        np.testing.assert_array_equal(got, vis.transpose(1, 0, 2))
        np.testing.assert_array_equal(ms.getcol("TIME"), np.repeat(layout.times, 3 * 3))
        uvw = ms.getcol("UVW").reshape(2, 3, 3, 3)  # (time, spw, baseline, uvw)
        np.testing.assert_array_equal(uvw, np.repeat(layout.uvw[:, None], 3, axis=1))


def test_cli_export_ms(run: SmallRun, tmp_path: Path) -> None:
    out = tmp_path / "cli.ms"
    assert main(["export-ms", str(run.buffers.model), str(out)]) == 0
    with _open(out) as ms:
        assert ms.nrows() > 0 and "CORRECTED_DATA" not in ms.colnames()


def test_cli_export_ms_replaces_only_a_measurement_set(run: SmallRun, tmp_path: Path) -> None:
    """An existing MS is replaced; anything else named as OUT (a directory of other files,
    the store itself or a directory holding it) is refused with exit 2 and left as it was."""
    out = tmp_path / "again.ms"
    for _ in range(2):
        assert main(["export-ms", str(run.buffers.model), str(out)]) == 0
    other = tmp_path / "precious"
    (other / "sub").mkdir(parents=True)
    (other / "sub" / "notes.txt").write_text("important")
    store = run.buffers.model
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    for target in (other, store, store.parent, store / "inside.ms"):
        assert main(["export-ms", str(store), str(target)]) == 2, target
    assert (other / "sub" / "notes.txt").read_text() == "important"
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before
    corrected = run.buffers.calibrated
    assert main(["export-ms", str(store), str(corrected), "--corrected", str(corrected)]) == 2


def _brightest(path: Path, plane: int) -> tuple[float, float, float]:
    """Peak (Jy/beam) and sub-pixel position of the brightest pixel of one plane."""
    data, _ = fitsio.read_image(path)
    image = data.reshape(-1, data.shape[-2], data.shape[-1])[plane]
    y, x = np.unravel_index(np.argmax(image), image.shape)
    return peak_near(image, float(x), float(y), radius=1)


@pytest.mark.skipif(
    shutil.which("wsclean") is None,
    reason="wsclean not installed (Debian package wsclean; `make test` installs it)",
)
def test_wsclean_images_the_exported_ms(run: SmallRun, tmp_path: Path) -> None:
    """WSClean finds our brightest source at the same pixel and flux in the centre window."""
    params = run.params
    restored = run.buffers.image("restored")
    header = fits.getheader(restored)
    centre = params.nfreqwin // 2
    command = [
        "wsclean", "-quiet", "-pol", "i", "-weight", "natural",
        "-size", str(params.npixel), str(params.npixel),
        "-scale", f"{np.degrees(params.cellsize)}deg",
        "-channel-range", str(centre), str(centre + 1),
        "-data-column", "CORRECTED_DATA",
        "-niter", "2000", "-mgain", "0.8", "-auto-threshold", "3",
        "-beam-shape", f"{header['BMAJ']}deg", f"{header['BMIN']}deg", f"{header['BPA']}deg",
        "-name", str(tmp_path / "wsc"), str(ms_path(run.buffers.calibrated)),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    ours = _brightest(restored, centre)
    theirs = _brightest(tmp_path / "wsc-image.fits", 0)
    assert theirs[0] == pytest.approx(ours[0], rel=0.03)
    assert np.hypot(theirs[1] - ours[1], theirs[2] - ours[2]) < 1.0
    ours_sky = WCS(header).celestial.pixel_to_world_values(ours[1], ours[2])
    theirs_sky = WCS(fits.getheader(tmp_path / "wsc-image.fits")).celestial.pixel_to_world_values(
        theirs[1], theirs[2]
    )
    assert np.allclose(ours_sky, theirs_sky, atol=np.degrees(params.cellsize))
