"""Bad input catalogue: every malformed input fails cleanly, with one line, and leaves nothing.

Each case runs the real ``batch-imaging`` command.  Usage errors (bad parameters, files,
arguments) exit 2, runtime errors (a damaged store or buffer) exit 1; the last line of stderr
names the problem, no traceback is shown, and no buffer or database entry is left behind.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from dag.cli import main
from steps import manifest, store
from tests.cli import COMMAND, batch_imaging

SEED = json.loads((Path(__file__).parents[1] / "examples" / "batch_imaging.json").read_text())
SBI = json.loads(
    (Path(__file__).parents[1] / "examples" / "sbi-mvp01-20200523-00000.json").read_text()
)


def params(**change):
    return json.dumps({**SEED, **change})


# (id, file contents or None, extra argv, exit code, fragment of the message)
PARAMS_CASES = [
    ("missing-file", None, [], 2, "cannot read parameter file"),
    ("empty-file", "", [], 2, "invalid JSON at line 1"),
    ("truncated-json", '{"nfreqwin": 8', [], 2, "invalid JSON"),
    ("duplicate-keys", '{"nfreqwin": 8, "nfreqwin": 4}', [], 2, "duplicate key(s): nfreqwin"),
    ("nan", '{"rmax": NaN}', [], 2, "NaN is not a number"),
    ("infinity", '{"rmax": Infinity}', [], 2, "Infinity is not a number"),
    ("not-an-object", "[1, 2, 3]", [], 2, "must be a JSON object"),
    ("not-utf8", b"\xff\xfe{", [], 2, "not UTF-8"),
    ("unknown-key", params(nfreqwins=8), [], 2, "nfreqwins: unknown key"),
    ("wrong-type", params(n_workers="four"), [], 2, "n_workers = 'four'"),
    ("boolean-count", params(nfreqwin=True), [], 2, "nfreqwin = True: must be an integer, not"),
    ("boolean-number", params(rmax=False), [], 2, "rmax = False: must be a number, not"),
    ("zero-workers", params(n_workers=0), [], 2, "n_workers = 0"),
    (
        "seed-past-int64",
        params(seed=1e20),
        [],
        2,
        "seed = 100000000000000000000: Input should be less than 9223372036854775808",
    ),
    ("negative-workers", params(n_workers=-3), [], 2, "n_workers = -3"),
    ("zero-windows", params(nfreqwin=0), [], 2, "nfreqwin = 0"),
    ("zero-times", params(ntimes=0), [], 2, "ntimes = 0"),
    ("negative-times", params(ntimes=-5), [], 2, "ntimes = -5"),
    ("freq-order", params(freq_min=1.2e8), [], 2, "freq_max = 110000000.0: must be >= freq_min"),
    ("freq-out-of-band", params(freq_max=5e9), [], 2, "freq_max = 5000000000.0"),
    ("rmax-zero", params(rmax=0), [], 2, "rmax = 0"),
    ("rmax-one-station", params(rmax=5.0), [], 2, "at least 2 are needed"),
    ("dec-never-up", params(dec=75.0), [], 2, "dec = 75.0: is below the horizon"),
    ("ra-out-of-range", params(ra=-10.0), [], 2, "ra = -10.0"),
    ("gleam-uncovered", params(dec=30.0), [], 2, "sky_model = 'gleam': the shipped GLEAM subset"),
    ("negative-scale", params(scales=[0, -3]), [], 2, "scales.1 = -3"),
    (
        "terms-never-solved",
        params(calibration_context="GB", nmajor=2),
        [],
        2,
        "calibration_context = 'GB': no term is ever solved with nmajor = 2",
    ),
    ("odd-npixel", params(npixel=1023), [], 2, "npixel = 1023: must be even"),
    ("cellsize-zero", params(cellsize=0), [], 2, "cellsize = 0"),
    ("phase-error-negative", params(phase_error=-1), [], 2, "phase_error = -1"),
    ("buffer-size-zero", params(buffer_size="0"), [], 2, "buffer_size = '0': must be >= 1Mi"),
    ("absurd-size", params(npixel=16384, cellsize=0.00005, nfreqwin=512), [], 2, "GiB of memory"),
    ("absurd-visibilities", params(rmax=100000.0, ntimes=1440), [], 2, "GiB"),
    ("traversal-buffer", params(buffer_vis="../etc"), [], 2, "buffer_vis = '../etc'"),
    ("shell-buffer", params(buffer_img="x;rm -rf ~"), [], 2, "buffer_img = 'x;rm -rf ~'"),
    ("non-ascii-buffer", params(buffer_img="bufé-img"), [], 2, "buffer_img = 'bufé-img'"),
    ("overlong-buffer", params(buffer_vis="b" * 64), [], 2, "RFC 1123"),
    ("same-buffers", params(buffer_img=SEED["buffer_vis"]), [], 2, "must differ"),
    ("shell-pb-id", params(pb_id="pb-$(reboot)"), [], 2, "pb_id = 'pb-$(reboot)'"),
    ("overlong-pb-id", params(pb_id="p" * 65), [], 2, "pb_id"),
    ("unknown-layout", params(configuration="meerkat"), [], 2, "configuration"),
    ("missing-sky-file", params(sky_model="nowhere/sky.csv"), [], 2, "sky_model"),
    ("override-nan", params(), ["-p", "rmax=NaN"], 2, "rmax"),
    ("override-no-equals", params(), ["-p", "nfreqwin"], 2, "expected NAME=VALUE"),
    (
        "override-list-not-json",
        params(),
        ["-p", "scales=1,2"],
        2,
        "scales = '1,2': must be a JSON array of numbers 0..1024 (e.g. [0.0, 3.0, 10.0]), not",
    ),
    ("override-unknown", params(), ["-p", "colour=blue"], 2, "colour: unknown key"),
    ("artifacts-nowhere", params(), ["-p", "artifacts=true"], 2, "--artifact-repository DIR"),
    ("dask-cluster-here", params(), ["-p", "dask_cluster=true"], 2, "dask_cluster = true"),
    (
        "dask-scheduler-malformed",
        params(),
        ["-p", "dask_scheduler=garbage"],
        2,
        "dask_scheduler = 'garbage': must be tcp://HOST:PORT or HOST:PORT (PORT 1-65535",
    ),
    (
        "config-db-malformed",
        params(),
        ["-p", "config_db=etcd://h:x"],
        2,
        "config_db = 'etcd://h:x'",
    ),
]


def assert_clean_failure(result: subprocess.CompletedProcess, code: int, fragment: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert fragment in last, last


@pytest.mark.parametrize(
    ("contents", "argv", "code", "fragment"),
    [case[1:] for case in PARAMS_CASES],
    ids=[case[0] for case in PARAMS_CASES],
)
def test_run_rejects_bad_parameters_before_writing(tmp_path, contents, argv, code, fragment):
    path = tmp_path / "params.json"
    if isinstance(contents, bytes):
        path.write_bytes(contents)
    elif contents is not None:
        path.write_text(contents)
    result = batch_imaging("run", str(path), "--buffer-root", "buffers", *argv, cwd=tmp_path)
    assert_clean_failure(result, code, fragment)
    assert not (tmp_path / "buffers").exists(), "something was written"


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["outputs", "BAD ID"], "PB_ID: Processing block id 'BAD ID' does not match"),
        (["sdp", "status", "--config-db", "etcd://h:x"], "config_db = 'etcd://h:x': must be"),
        (["bridge", "--config-db", "etcd://h:99999"], "config_db = 'etcd://h:99999': must be"),
        (["outputs", "--config-db", "http://h:1"], "config_db = 'http://h:1': must be"),
    ],
)
def test_commands_refuse_a_bad_id_or_url_in_one_line(tmp_path, argv, fragment):
    assert_clean_failure(batch_imaging(*argv, cwd=tmp_path), 2, fragment)


def test_verify_names_an_unreadable_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text("{bad")
    result = batch_imaging("verify", str(tmp_path), cwd=tmp_path)
    assert_clean_failure(result, 1, "manifest.json: unreadable (JSONDecodeError")


def test_run_refuses_a_pb_another_run_has_claimed(tmp_path):
    """A block whose claim another run holds (on Argo, on another host: no local process to
    see) is refused before anything is written, and its state is left as that run keeps it."""
    from dag.runner import embedded_db, register
    from steps.configdb import ConfigDB, open_backend
    from steps.params import parse

    root = tmp_path / "buffers"
    root.mkdir()
    pb_id = "pb-held-20260101-00000"
    with ConfigDB(open_backend(embedded_db(root))) as db:
        register(db, parse({"pb_id": pb_id}), {})
        lease = db.lease(60)

        elsewhere = {"name": "elsewhere", "engine": "argo"}

        def take(txn) -> None:
            assert txn.take_pb(pb_id, lease)
            txn.update_state(pb_id, status="RUNNING", run=elsewhere)

        db.run(take)
        try:
            path = tmp_path / "params.json"
            path.write_text(params(pb_id=pb_id))
            result = batch_imaging("run", str(path), "--buffer-root", "buffers", cwd=tmp_path)
            assert_clean_failure(result, 1, f"is claimed by process {os.getpid()}")
            state = db.run(lambda txn: txn.get_state(pb_id))
            assert state.status == "RUNNING" and state.run == elsewhere
            assert not (root / f"buff-{pb_id}-vis").exists()
        finally:
            lease.revoke()


def test_run_refuses_a_pb_another_process_is_running(tmp_path):
    from dag.runner import HOSTNAME, embedded_db, register
    from steps.configdb import ConfigDB, open_backend
    from steps.params import parse
    from steps.processes import started_at

    root = tmp_path / "buffers"
    root.mkdir()
    pb_id = "pb-busy-20260101-00000"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with ConfigDB(open_backend(embedded_db(root))) as db:
            register(db, parse({"pb_id": pb_id}), {})
            run = {"name": f"batch-imaging-{pb_id}", "hostname": HOSTNAME, "pid": other.pid}
            run["started_at"] = started_at(other.pid)  # as a `batch-imaging run` records it
            db.run(lambda txn: txn.update_state(pb_id, status="RUNNING", run=run))
        path = tmp_path / "params.json"
        path.write_text(params(pb_id=pb_id))
        result = batch_imaging("run", str(path), "--buffer-root", "buffers", cwd=tmp_path)
        assert_clean_failure(result, 1, f"already being run by process {other.pid}")
        with ConfigDB(open_backend(embedded_db(root))) as db:
            state = db.run(lambda txn: txn.get_state(pb_id))
        assert state.status == "RUNNING" and state.run["pid"] == other.pid  # untouched
        assert not (root / f"buff-{pb_id}-vis").exists()
    finally:
        other.kill()
        other.wait()


SBI_CASES = [
    ("sbi-truncated", json.dumps(SBI)[:-20], "invalid JSON"),
    ("sbi-bad-id", json.dumps({**SBI, "id": "sbi x!"}), "id = 'sbi x!'"),
    (
        "sbi-pb-without-workflow",
        json.dumps({**SBI, "processing_blocks": [{"id": "pb-a-1", "parameters": {}}]}),
        "workflow: required but missing",
    ),
    (
        "sbi-duplicate-pb",
        json.dumps({**SBI, "processing_blocks": SBI["processing_blocks"][:1] * 2}),
        "duplicate processing block id",
    ),
    ("sbi-not-object", "[]", "must be a JSON object"),
]


@pytest.mark.parametrize(
    ("contents", "fragment"), [c[1:] for c in SBI_CASES], ids=[c[0] for c in SBI_CASES]
)
def test_sdp_assign_rejects_bad_sbi(tmp_path, contents, fragment):
    (tmp_path / "sbi.json").write_text(contents)
    result = batch_imaging("sdp", "assign", "sbi.json", "--config-db", "db", cwd=tmp_path)
    assert_clean_failure(result, 2, fragment)
    status = batch_imaging("sdp", "status", "--config-db", "db", cwd=tmp_path)
    assert "pb-" not in status.stdout, "a processing block was created"


def small_store(path: Path) -> Path:
    layout = store.Layout(
        times=5e9 + 600.0 * np.arange(2),
        frequencies=np.array([1e8]),
        channel_width=1e6,
        antenna1=np.array([0]),
        antenna2=np.array([1]),
        antenna_names=["a", "b"],
        uvw=np.ones((2, 1, 3)),
        integration_time=600.0,
    )
    attrs = {"antenna_names": ["a", "b"], "phase_centre": {"ra_deg": 0.0, "dec_deg": -30.0}}
    return store.create(path, layout, attrs)


def empty_store(tmp: Path) -> Path:
    (tmp / "in.zarr").mkdir()
    return tmp / "in.zarr"


def corrupted_store(tmp: Path) -> Path:
    path = store.finalize(small_store(tmp / "in.zarr"), tmp / "in.zarr")
    (path / "zarr.json").write_text("{not json")
    return path


def incomplete_store(tmp: Path) -> Path:
    return small_store(tmp / "in.zarr").rename(tmp / "in.zarr")


def a_file(tmp: Path) -> Path:
    (tmp / "sky_model.csv").write_text("name,ra,dec\n")
    return tmp / "sky_model.csv"


def foreign_schema_store(tmp: Path) -> Path:
    path = store.finalize(small_store(tmp / "in.zarr"), tmp / "in.zarr")
    zarr.open_group(path, mode="r+").attrs["schema_version"] = 0
    return path


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (empty_store, "unreadable"),
        (corrupted_store, "unreadable"),
        (incomplete_store, "incomplete"),
        (foreign_schema_store, "schema version 0"),
        (lambda tmp: tmp / "missing.zarr", "missing.zarr does not exist"),
        (a_file, "sky_model.csv is not a visibility store (a file, not a Zarr directory)"),
    ],
    ids=["empty", "corrupted", "incomplete", "foreign-schema", "missing", "a-file"],
)
def test_export_ms_refuses_bad_stores(tmp_path, make, fragment):
    source = make(tmp_path)
    result = batch_imaging("export-ms", str(source), "out.ms", cwd=tmp_path)
    assert_clean_failure(result, 2, fragment)  # what it was given is not a store it reads
    assert not list(tmp_path.glob("*out.ms*")), "a partial Measurement Set was left"


def test_export_ms_refuses_an_output_whose_directory_does_not_exist(tmp_path):
    source = store.finalize(small_store(tmp_path / "in.zarr"), tmp_path / "in.zarr")
    result = batch_imaging("export-ms", str(source), "nowhere/out.ms", cwd=tmp_path)
    assert_clean_failure(result, 2, "out = nowhere/out.ms: its directory nowhere does not exist")


def test_verify_reports_a_foreign_or_tampered_buffer(tmp_path):
    buffer = tmp_path / "buff-x-img"
    buffer.mkdir()
    result = batch_imaging("verify", buffer.name, cwd=tmp_path)
    assert_clean_failure(result, 1, f"{buffer.name}: no manifest.json (not a buffer")
    assert result.stderr.count(buffer.name) == 1, result.stderr  # the path once
    before = manifest.snapshot([buffer])
    (buffer / "restored.fits").write_bytes(b"SIMPLE" * 100)
    manifest.record([buffer], "image", {}, [], before, {}, "pb-x-20260101-00000")
    assert batch_imaging("verify", str(buffer), cwd=tmp_path).returncode == 0
    (buffer / "restored.fits").write_bytes(b"SIMPLF" * 100)
    result = batch_imaging("verify", str(buffer), cwd=tmp_path)
    assert_clean_failure(result, 1, "restored.fits: sha256 differs")


@pytest.mark.parametrize(
    ("argv", "fragment", "code"),
    [
        (["frobnicate"], "invalid choice: 'frobnicate'", 2),
        (["step", "teleport"], "invalid choice: 'teleport'", 2),
        (["run"], "the following arguments are required: params", 2),
        (["params", "validate"], "params validate needs a FILE", 2),
        (["sdp", "release", "sbi-nope", "--config-db", "db"], "no configuration store at", 2),
        (
            ["step", "claim", "-p", "pb_id=pb-nope-20260101-00000", "-p", "config_db=db"],
            "processing block pb-nope-20260101-00000 does not exist in the configuration DB",
            1,  # the step's runtime: the block may yet be created
        ),
    ],
    ids=[
        "unknown-command",
        "unknown-step",
        "run-without-file",
        "validate-without-file",
        "release-unknown-sbi",
        "step-of-an-unknown-pb",
    ],
)
def test_cli_usage_errors(tmp_path, argv, fragment, code):
    result = batch_imaging(*argv, cwd=tmp_path)
    assert result.returncode == code
    assert "Traceback" not in result.stderr
    assert fragment in result.stderr.strip().splitlines()[-1]


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "p.json").write_text(params(nfreqwin=0))
    result = batch_imaging("--debug", "run", "p.json", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_report_refuses_a_fits_image_without_wcs(tmp_path):
    import os

    from astropy.io import fits

    from dag.runner import register
    from steps.buffers import BUFFER_ROOT_ENV
    from steps.configdb import ConfigDB, open_backend
    from steps.params import parse

    params = parse({"pb_id": "pb-fits-20261126-00000", "config_db": str(tmp_path / "db")})
    with ConfigDB(open_backend(params.config_db)) as db:
        register(db, params, {})
    image = tmp_path / params.buffer_img
    image.mkdir()
    fits.PrimaryHDU(np.ones((1, 1, 64, 64), np.float32)).writeto(image / "mfs_restored.fits")
    result = batch_imaging(
        *("step", "report", "-p", f"pb_id={params.pb_id}", "-p", f"config_db={params.config_db}"),
        env={**os.environ, BUFFER_ROOT_ENV: str(tmp_path)},
    )
    assert_clean_failure(result, 1, "mfs_restored.fits: no celestial WCS")
    assert not (image / "report.html").exists()


def test_bridge_refuses_the_file_store_for_the_argo_engine(tmp_path):
    result = batch_imaging("bridge", "--engine", "argo", "--config-db", "db", cwd=tmp_path)
    assert_clean_failure(result, 2, "must be etcd://HOST:PORT")


@pytest.mark.parametrize(
    "argv",
    [
        ["verify", "nosuch"],
        ["outputs", "--buffer-root", ".", "pb-nope-20260101-00000"],
    ],
)
def test_commands_given_what_does_not_exist_are_usage_errors(argv, tmp_path, monkeypatch, capsys):
    """Exit 2 and one ``batch-imaging: error:`` line, as for any other bad input."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".sdp-config").mkdir()  # a DB without that block
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("batch-imaging: error: ") and len(err.splitlines()) == 1, err


def test_a_reader_that_goes_away_ends_the_command_quietly():
    """``batch-imaging ... | head``: exit 141 (SIGPIPE, as `cat`), no error in the log."""
    command = subprocess.Popen(
        [*COMMAND, "params", "schema"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert command.stdout is not None and command.stderr is not None
    command.stdout.close()  # the reader goes before the command writes
    assert command.wait(timeout=60) == 141
    assert command.stderr.read() == b""
    command.stderr.close()


@pytest.mark.parametrize("command", [["run", "params.json"], ["run-pb", "pb-x-20261202-00000"]])
def test_a_buffer_root_that_is_a_file_or_not_writable_is_bad_input(tmp_path, command):
    (tmp_path / "params.json").write_text(params())
    (tmp_path / "afile").write_text("")
    result = batch_imaging(*command, "--buffer-root", "afile", cwd=tmp_path)
    assert_clean_failure(result, 2, "--buffer-root afile is not a directory")
    result = batch_imaging(*command, "--buffer-root", "afile/buffers", cwd=tmp_path)
    assert_clean_failure(result, 2, "--buffer-root afile/buffers: afile is not a directory")
    result = batch_imaging(*command, "--buffer-root", "/proc/buffers", cwd=tmp_path)
    assert_clean_failure(result, 2, "--buffer-root /proc/buffers: /proc is not writable")
