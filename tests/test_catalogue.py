"""Catalogue and layout files: formats, and row-by-row errors naming file, line and field."""

from pathlib import Path

import numpy as np
import pytest

from steps import resources
from steps.params import ParamsError, parse
from steps.science import layout
from steps.science.catalogue import CatalogueError, read_catalogue

CSV = """# a comment
name,ra_deg,dec_deg,flux_jy,ref_freq_hz,alpha,curvature,major_arcsec,minor_arcsec,pa_deg
A,150.0,-60.0,2.5,150e6,-0.7,,,,
B,150.5,-60.2,1.0,100e6,-0.8,0.1,120,60,30
"""

SOURCEDB = (
    "# (Name, Type, Patch, Ra, Dec, I, Q, U, V, ReferenceFrequency='1.5e8', SpectralIndex='[]', "
    "LogarithmicSI, MajorAxis, MinorAxis, Orientation) = format\n"
    """, , p1, 10:00:00, -60.00.00
s0,POINT,p1,10:00:00.0,-60.00.00.0,2.5,0,0,0,,[-0.7],true,,,
s1,GAUSSIAN,p1,10:02:00,-60.12.00,1.0,0,0,0,1e8,"[-0.8, 0.1]",true,120,60,30
s2,POINT,p1,150.25deg,-1.0471975511965976rad,0.5,0,0,0,,[],,,,
"""
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_and_sourcedb_give_the_same_sources(tmp_path: Path) -> None:
    csv_sky = read_catalogue(write(tmp_path, "sky.csv", CSV))
    db_sky = read_catalogue(write(tmp_path, "sky.txt", SOURCEDB))
    assert csv_sky.names == ["A", "B"] and db_sky.names == ["s0", "s1", "s2"]
    for sky in (csv_sky, db_sky):
        np.testing.assert_allclose(sky.ra_deg[:2], [150.0, 150.5])
        np.testing.assert_allclose(sky.dec_deg[:2], [-60.0, -60.2])
        np.testing.assert_allclose(sky.ref_freq_hz[:2], [150e6, 100e6])
        np.testing.assert_allclose(sky.major_arcsec[:2], [0.0, 120.0])
        np.testing.assert_allclose(sky.minor_arcsec[:2], [0.0, 60.0])
        np.testing.assert_allclose(sky.pa_deg[:2], [0.0, 30.0])
        # log-parabola: S = 1.0 * x^(-0.8 + 0.1 log10 x) at x = 2
        x = 2.0
        assert sky.flux_at([2e8])[1, 0] == pytest.approx(x ** (-0.8 + 0.1 * np.log10(x)))
        assert sky.flux_at([75e6])[0, 0] == pytest.approx(2.5 * 0.5**-0.7)
    np.testing.assert_allclose([db_sky.ra_deg[2], db_sky.dec_deg[2]], [150.25, -60.0])


@pytest.mark.parametrize(
    ("text", "line", "field", "why"),
    [
        (CSV.replace(",alpha,", ",spectral,"), 2, "alpha", "missing column"),
        (CSV.replace("2.5,150e6", "2.5x,150e6"), 3, "flux_jy", "not a number"),
        (CSV.replace("150.5,", "400.5,"), 4, "ra_deg", "out of range"),
        (CSV.replace("-60.2", "-91"), 4, "dec_deg", "out of range"),
        (CSV.replace("\nB,", "\nA,"), 4, "name", "repeats line 3"),
        (CSV.replace("120,60", "60,120"), 4, "minor_arcsec", "exceeds major"),
        (CSV.replace(",-0.7,", ",-0.7"), 3, "row", "cells"),
        (SOURCEDB.replace("10:02:00", "10:62:00"), 4, "Ra", "< 60"),
        (SOURCEDB.replace("GAUSSIAN", "SHAPELET"), 4, "Type", "POINT or GAUSSIAN"),
        (SOURCEDB.replace("s1,", "s0,"), 4, "Name", "repeats line 3"),
        (SOURCEDB.replace("Dec, I,", "Dec, Flux,"), 1, "I", "missing"),
        (SOURCEDB.replace("150.25deg", "150.25"), 5, "Ra", "deg/rad"),
    ],
)
def test_malformed_catalogue_names_file_line_and_field(
    tmp_path: Path, text: str, line: int, field: str, why: str
) -> None:
    path = write(tmp_path, "bad.csv", text)
    with pytest.raises(CatalogueError) as error:
        read_catalogue(path)
    message = str(error.value)
    assert f"{path}, line {line}, field {field}:" in message and why in message, message


def test_params_resolve_and_validate_catalogue_paths(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "sky.csv", CSV)
    params = parse({"sky_model": "sky.csv", "ra": 150.0, "dec": -60.0})
    assert params.sky_model == str(tmp_path / "sky.csv")
    assert parse(params.model_dump()).sky_model == params.sky_model
    assert parse({"sky_model": "buffer:my-sky/cat.csv"}).sky_model == "buffer:my-sky/cat.csv"
    for bad, fragment in [
        ("nothere.csv", "neither gleam nor synthetic nor an existing file"),
        ("buffer:../x.csv", "buffer:<name>/<file>"),
    ]:
        with pytest.raises(ParamsError, match="sky_model") as error:
            parse({"sky_model": bad})
        assert fragment in str(error.value)
    write(tmp_path, "bad.csv", CSV.replace("-60.2", "south"))
    with pytest.raises(ParamsError) as error:
        parse({"sky_model": "bad.csv"})
    assert f"{tmp_path / 'bad.csv'}, line 4, field dec_deg: 'south' is not a number" in str(
        error.value
    )


CENTRE = (
    "# centre_lon_deg = 116.7644482\n# centre_lat_deg = -26.82472208\n# centre_height_m = 365\n"
)


def _layout_files(tmp_path: Path) -> dict[str, Path]:
    """The first 20 SKA1-Low stations written in the three frames."""
    ska = layout.load_stations("ska1-low")
    sel = slice(0, 20)
    names = ska.names[sel]
    lon, lat, h = (
        np.array([float(r.split(",")[i]) for r in rows])
        for rows in [(layout.DATA_DIR / "ska1_low_stations.csv").read_text().splitlines()[1:21]]
        for i in (1, 2, 3)
    )
    frames = {
        "enu": ("east_m,north_m,up_m", ska.enu[sel], CENTRE),
        "itrf": ("itrf_x_m,itrf_y_m,itrf_z_m", ska.itrf[sel], ""),
        "wgs84": ("lon_deg,lat_deg,height_m", np.stack([lon, lat, h], axis=1), CENTRE),
    }
    paths = {}
    for frame, (header, values, meta) in frames.items():
        rows = [
            f"{n},{v[0]:.10f},{v[1]:.10f},{v[2]:.6f}" for n, v in zip(names, values, strict=True)
        ]
        paths[frame] = write(tmp_path, f"{frame}.csv", meta + f"name,{header}\n" + "\n".join(rows))
    return paths


def test_layout_files_in_three_frames_agree(tmp_path: Path) -> None:
    ska = layout.load_stations("ska1-low")
    for frame, path in _layout_files(tmp_path).items():
        stations = layout.load_stations(str(path))
        assert stations.names == ska.names[:20] and stations.lines == list(
            range(5 if frame != "itrf" else 2, 25 if frame != "itrf" else 22)
        )
        np.testing.assert_allclose(stations.itrf, ska.itrf[:20], atol=1e-3)
        # baselines (hence uvw) do not depend on the reference point
        uvw = layout.uvw(stations, np.array([0.3]), -1.0)
        np.testing.assert_allclose(
            uvw, layout.uvw(ska_first(ska, 20), np.array([0.3]), -1.0), atol=2e-3
        )


def ska_first(ska: layout.Stations, n: int) -> layout.Stations:
    from dataclasses import replace

    return replace(ska, names=ska.names[:n], xyz=ska.xyz[:n], enu=ska.enu[:n], itrf=ska.itrf[:n])


@pytest.mark.parametrize(
    ("edit", "line", "field", "why"),
    [
        (lambda t: t.replace("east_m", "x"), 4, "east_m", "missing column"),
        (lambda t: t.replace("# centre_lat_deg = -26.82472208\n", ""), 3, "centre_lat_deg", "ENU"),
        (lambda t: t.replace("C2,", "C1,", 1), 6, "name", "station 'C1' repeats line 5"),
        (lambda t: t.replace(t.splitlines()[6].split(",")[2], "12a"), 7, "north_m", "not a number"),
    ],
)
def test_malformed_layout_names_file_line_and_field(tmp_path: Path, edit, line, field, why) -> None:
    path = _layout_files(tmp_path)["enu"]
    path.write_text(edit(path.read_text()))
    with pytest.raises(CatalogueError) as error:
        layout.load_stations(str(path))
    assert f"{path}, line {line}, field {field}:" in str(error.value) and why in str(error.value)


def test_layout_with_fewer_than_two_stations_in_rmax(tmp_path: Path) -> None:
    path = _layout_files(tmp_path)["enu"]
    distance = np.hypot(*layout.load_stations(str(path)).enu[:, :2].T)
    second = np.argsort(distance)[1]
    params = parse({"configuration": str(path), "rmax": float(distance[second]) + 0.1})
    assert params.configuration == str(path)
    with pytest.raises(ParamsError) as error:
        parse({"configuration": str(path), "rmax": float(distance[second]) - 0.1})
    message = str(error.value)
    assert f"{path}, line {second + 5}, field rmax:" in message and "fewer than 2" in message


def test_a_layout_in_a_buffer_sizes_the_run(tmp_path: Path, monkeypatch) -> None:
    """The memory and disk estimate reads a ``buffer:`` layout where the buffers are (the
    root given, else the pod's), and names the field when the file is not there."""
    path = tmp_path / "buff-in" / "layout.csv"
    path.parent.mkdir()
    _layout_files(tmp_path)["enu"].rename(path)
    params = parse({}).model_copy(update={"configuration": "buffer:buff-in/layout.csv"})
    direct = resources.estimate(params.model_copy(update={"configuration": str(path)}))
    monkeypatch.setenv("BATCH_IMAGING_BUFFER_ROOT", str(tmp_path / "elsewhere"))
    assert resources.estimate(params, tmp_path) == direct
    with pytest.raises(ParamsError, match=r"configuration = 'buffer:buff-in/layout\.csv': no "):
        resources.estimate(params)
    monkeypatch.setenv("BATCH_IMAGING_BUFFER_ROOT", str(tmp_path))
    assert resources.estimate(params) == direct


def test_a_catalogue_with_nothing_in_the_image_is_said(tmp_path: Path) -> None:
    from steps.simulate import field_components

    path = write(tmp_path, "sky.csv", CSV)  # two sources near RA 150, Dec -60
    params = parse({"sky_model": str(path), "ra": 150.0, "dec": -30.0, "npixel": 64})
    with pytest.raises(ValueError, match=r"no component lies inside the 64 x 64 image at RA "
                       r"150, Dec -30 \(2 lie outside it\)"):  # fmt: skip
        field_components(params)
