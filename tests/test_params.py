"""The parameter model: the seed's defaults and a clear error for every invalid value."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from steps.params import Params, ParamsError, highest_declination, load, parse, parse_strings

SEED_EXAMPLE = {
    "n_workers": 4,
    "freq_min": 0.9e8,
    "freq_max": 1.1e8,
    "nfreqwin": 8,
    "ntimes": 5,
    "rmax": 750.0,
    "ra": 0.0,
    "dec": -30.0,
    "buffer_vis": "buff-pb-mvp01-20200523-00001-vis",
    "buffer_img": "buff-pb-mvp01-20200523-00001-img",
}


def test_seed_example_and_defaults():
    params = parse(SEED_EXAMPLE)
    assert params.n_workers == 4 and params.nfreqwin == 8
    defaults = parse({"pb_id": "pb-mvp01-20200523-00001"})
    assert defaults.n_workers == 2
    assert defaults.buffer_vis == "buff-pb-mvp01-20200523-00001-vis"
    assert defaults.buffer_img == "buff-pb-mvp01-20200523-00001-img"
    assert (defaults.npixel, defaults.cellsize, defaults.phase_error) == (1024, 0.0005, 1.0)
    assert (defaults.seed, defaults.flux_limit, defaults.nmajor) == (180555, 3.0, 5)


def test_frequencies_and_hour_angles():
    params = parse(SEED_EXAMPLE)
    freqs = params.frequencies()
    assert freqs[0] == 0.9e8 and freqs[-1] == pytest.approx(1.1e8) and len(freqs) == 8
    assert params.channel_width() == pytest.approx(20e6 / 7)
    assert params.hour_angles_deg() == [-30.0, -15.0, 0.0, 15.0, 30.0]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"freq_min": 1.2e8}, ["freq_max", "110000000.0", "freq_min"]),
        ({"nfreqwin": 0}, ["nfreqwin", "0", "greater than or equal to 1"]),
        ({"ntimes": -1}, ["ntimes", "-1", "greater than or equal to 1"]),
        ({"rmax": 5.0}, ["rmax", "5.0", "at least 2", "rmax >="]),
        ({"dec": 70.0}, ["dec", "70.0", "horizon", "allowed -90 <= dec < 59.7"]),
        ({"buffer_vis": "Buffer_Vis"}, ["buffer_vis", "Buffer_Vis", "RFC 1123"]),
        ({"buffer_img": "x" * 64}, ["buffer_img", "RFC 1123"]),
        ({"buffer_img": "../etc"}, ["buffer_img", "../etc", "RFC 1123"]),
        ({"buffer_img": "buff-pb-mvp01-20200523-00001-vis"}, ["buffer_img", "differ"]),
        ({"nfreqwins": 8}, ["nfreqwins", "unknown key", "nfreqwin"]),
        ({"npixel": 1023}, ["npixel", "1023", "even"]),
        ({"n_workers": "four"}, ["n_workers", "four", "integer"]),
        ({"ra": 360.0}, ["ra", "360.0", "less than 360"]),
        ({"freq_min": 1e6}, ["freq_min", "1000000.0", "greater than or equal to 50000000"]),
        ({"pb_id": "pb id; rm -rf /"}, ["pb_id", "must match"]),
        ({"dec": 30.0}, ["sky_model = 'gleam'", "covers only 10 deg", "'synthetic'"]),
        ({"ra": 150.0}, ["sky_model = 'gleam'", "reaches", "catalogue file"]),
        # the shipped GLEAM subset stops at 1 Jy; its brightest source is 22.4 Jy
        ({"flux_limit": 0.2}, ["flux_limit = 0.2", "only S151 > 1 Jy", "allowed >= 1"]),
        ({"flux_limit": 30.0}, ["flux_limit = 30.0", "brightest there: 22.4382 Jy"]),
        ({"npixel": 32, "cellsize": 1e-5}, ["flux_limit", "no GLEAM source lies inside"]),
        # in the circle through the image's corners, but not inside the image
        ({"npixel": 64, "cellsize": 0.002, "flux_limit": 14.4}, ["brightest there: 6.40893 Jy"]),
        ({"cpu_request": "8", "cpu_limit": "4"}, ["cpu_request", "'8'", "<= cpu_limit (4)"]),
        ({"cpu_request": "0"}, ["cpu_request", "'0'", "> 0"]),
        ({"memory_request": "16Gi"}, ["memory_request", "'16Gi'", "<= memory_limit (8Gi)"]),
        ({"memory_limit": "1Mi"}, ["memory_limit", "'1Mi'", ">= 512Mi"]),
        ({"cpu_limit": "1.2.3"}, ["cpu_limit", "1.2.3", "should match pattern"]),
        ({"buffer_size": "."}, ["buffer_size", "should match pattern"]),
        ({"dask_scheduler": "tcp://h:0"}, ["dask_scheduler", "'tcp://h:0'", "PORT 1-65535"]),
        ({"dask_scheduler": "tls://h:8786"}, ["dask_scheduler", "must be tcp://HOST:PORT"]),
    ],
)
def test_invalid_values_name_field_value_and_range(change, expected):
    with pytest.raises(ParamsError) as error:
        parse({**SEED_EXAMPLE, **change})
    message = str(error.value)
    for fragment in expected:
        assert fragment in message


@pytest.mark.parametrize(
    "address", ["tcp://proc-pb-x-scheduler:8786", "10.0.0.1:8786", "tcp://[::1]:8786", ""]
)
def test_a_dask_scheduler_is_an_address_dask_reaches_or_empty(address):
    assert parse({"dask_scheduler": address}).dask_scheduler == address


def test_highest_declination_is_where_the_source_sets_at_ha_30():
    # SKA1-Low at latitude -26.82 deg: tan(dec) = -cos(30 deg) / tan(lat) -> 59.72 deg
    assert highest_declination() == pytest.approx(59.719, abs=1e-3)
    parse({**SEED_EXAMPLE, "dec": 59.0, "sky_model": "synthetic"})


def test_strings_as_argo_passes_them_round_trip():
    params = parse(SEED_EXAMPLE)
    assert parse_strings(params.as_strings()) == params


def test_load_rejects_duplicate_keys_and_nan(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"nfreqwin": 8, "nfreqwin": 4}')
    with pytest.raises(ParamsError, match=r"duplicate key.*nfreqwin"):
        load(path)
    path.write_text('{"rmax": NaN}')
    with pytest.raises(ParamsError, match="NaN is not a number"):
        load(path)
    path.write_text('{"rmax": 750')
    with pytest.raises(ParamsError, match="invalid JSON at line 1"):
        load(path)
    path.write_text(json.dumps(SEED_EXAMPLE))
    assert load(path, nfreqwin=2).nfreqwin == 2


def test_schema_lists_every_field():
    schema = Params.model_json_schema()
    assert set(SEED_EXAMPLE) <= set(schema["properties"])
    assert schema["additionalProperties"] is False


LIGHT_START = """
import json, sys
from dag.cli import parser
from steps.params import parse_strings
parser("step").parse_args(["step", "release"])
parse_strings({k: str(v) for k, v in json.load(open(sys.argv[1])).items()})
print(json.dumps([m for m in ("hera", "astropy", "scipy", "dask", "xarray") if m in sys.modules]))
"""


def test_a_step_starts_and_checks_its_parameters_without_the_heavy_libraries():
    """Every container starts as ``batch-imaging step NAME -p ...`` and checks its parameters:
    neither imports Hera, astropy, scipy, Dask or xarray (the light steps would pay for them)."""
    example = Path(__file__).parent.parent / "examples" / "batch_imaging.json"
    command = [sys.executable, "-c", LIGHT_START, str(example)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == []


def test_an_image_larger_than_the_sky_is_refused() -> None:
    """A SIN image's pixels must lie on the sky (l^2 + m^2 < 1), corners included."""
    parse({"npixel": 512, "cellsize": 0.0027})  # corners at l^2 + m^2 = 0.96
    with pytest.raises(ParamsError, match=r"cellsize = 0\.05: with npixel = 64 .* off the sky"):
        parse({"npixel": 64, "cellsize": 0.05})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"nfreqwin": "8"}, "nfreqwin = '8': must be a JSON integer, not a string"),
        ({"export_ms": "yes"}, "export_ms = 'yes': must be a JSON boolean, not a string"),
        ({"rmax": "750"}, "rmax = '750': must be a JSON number, not a string"),
    ],
)
def test_a_file_must_have_the_schemas_types(data, message) -> None:
    """Typed JSON is not coerced (the published schema says integer, boolean, number); the
    command line's strings are decoded first, so ``-p nfreqwin=8`` still works."""
    with pytest.raises(ParamsError, match=re.escape(message)):
        parse(data)
    assert parse({"nfreqwin": 8.0}).nfreqwin == 8
    assert parse_strings({"nfreqwin": "8", "export_ms": "true"}).export_ms is True
    assert parse_strings({"export_ms": "True", "artifacts": "FALSE"}).export_ms is True
    with pytest.raises(ParamsError, match="export_ms = 'yes': must be a JSON boolean"):
        parse_strings({"export_ms": "yes"})


def test_the_step_process_estimate_follows_what_it_holds() -> None:
    """MS-MFS keeps a few planes per Taylor term on the step process, whatever the windows
    (the cubes stream through the store); per-window algorithms keep every window's model."""
    from steps.resources import estimate

    def coordinator(**overrides) -> float:
        return estimate(Params(npixel=2048, **overrides)).coordinator

    plane = 2048**2 * 8
    assert coordinator(nfreqwin=32) == coordinator(nfreqwin=8) == 18 * plane
    assert coordinator(nfreqwin=32, algorithm="hogbom") == (18 + 96) * plane
