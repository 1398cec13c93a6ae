"""Crash and resume: SIGKILL each heavy step at a random point, re-run, get identical products.

A step killed so is one the cluster ended, which the engine retries (after a backoff of
30 s): each run is stopped (as ``argo stop``) once its step is killed, and run again.
The reference run uses one Dask worker and the crashed one two, so the comparison also
shows that products do not depend on the number of workers (determinism)."""

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
from astropy.io import fits

from dag import outputs
from dag.outputs import run_params
from steps import manifest, runner, store
from steps.configdb import ConfigDB, open_backend
from steps.params import parse
from steps.runner import PIPELINE, key_parameters
from tests import cli

SPECTRAL_INDEX = ("mfs_alpha.fits", "previews/spectral_index.png")
SMALL = {
    "n_workers": 1,
    "nfreqwin": 2,
    "ntimes": 3,
    "rmax": 300.0,
    "npixel": 128,
    "cellsize": 0.002,
    "niter": 100,
    "nmajor": 2,
}


def start(params_file: Path, root: Path) -> subprocess.Popen:
    return cli.start("run", str(params_file), "--buffer-root", str(root))


def step_phase(root: Path, pb_id: str, step: str) -> str | None:
    with ConfigDB(open_backend(str(root / ".sdp-config"))) as db:
        state = db.run(lambda txn: txn.get_state(pb_id))
    steps = getattr(state, "steps", None) or {}
    return steps.get(step, {}).get("phase")


def kill_step(run: subprocess.Popen, root: Path, pb_id: str, step: str, rng: random.Random):
    """Wait until ``step`` runs, let it work for a random moment, then SIGKILL its tree."""
    deadline = time.monotonic() + 120
    while step_phase(root, pb_id, step) != "Running":
        assert run.poll() is None and time.monotonic() < deadline, f"{step} never started"
        time.sleep(0.05)
    time.sleep(rng.uniform(0.1, 1.5))
    victims = [
        p
        for p in psutil.Process(run.pid).children(recursive=True)
        if {"step", step} <= set(p.cmdline())
    ]
    assert victims, f"no process for step {step}"
    for process in victims:
        for child in [*process.children(recursive=True), process]:
            child.send_signal(signal.SIGKILL)


def products(root: Path, pb: str) -> dict[str, np.ndarray]:
    vis, img = root / f"buff-{pb}-vis", root / f"buff-{pb}-img"
    arrays = {}
    for name in ("model", "corrupted", "calibrated"):
        ds = store.open_store(vis / f"{name}.zarr")
        arrays[name] = ds["VISIBILITY"].values
    for name in ("gains_true", "gains_solved"):
        arrays[name] = store.open_dataset(vis / f"{name}.zarr")["GAIN"].values
    for name in ("deconvolved", "residual", "restored"):
        arrays[name] = fits.getdata(img / f"{name}.fits")
    for name in ("MODEL", "RESIDUAL", "PSF"):  # in full precision (the FITS are float32)
        arrays[name] = store.open_dataset(img / "ical_model.zarr")[name].values
        assert np.isfinite(arrays[name]).all(), f"a plane of {name} was never written"
    return arrays


def test_killed_steps_resume_to_identical_products(tmp_path):
    rng = random.Random(20261126)
    root = tmp_path / "buffers"
    reference = tmp_path / "reference.json"
    reference.write_text(json.dumps({**SMALL, "pb_id": "pb-ref-20261126-00000"}))
    assert cli.batch_imaging("run", str(reference), "--buffer-root", str(root)).returncode == 0

    pb = "pb-crash-20261126-00000"
    params = tmp_path / "crash.json"
    params.write_text(json.dumps({**SMALL, "pb_id": pb, "n_workers": 2}))
    for step in PIPELINE:  # each run is killed one step further on
        run = start(params, root)
        kill_step(run, root, pb, step, rng)
        run.send_signal(signal.SIGTERM)  # stopped before its retry
        _, log = run.communicate(timeout=300)
        assert run.returncode == 1, log[-2000:]
        assert step_phase(root, pb, step) in ("Running", "Failed")  # killed: never finished
        done = PIPELINE[: PIPELINE.index(step)]
        for earlier in done[:-1]:  # everything before the last completed step was reused
            assert f"Step {earlier}: products complete" in log

    final = start(params, root)
    _, log = final.communicate(timeout=300)
    assert final.returncode == 0, log[-2000:]
    for earlier in PIPELINE[:-1]:
        assert f"Step {earlier}: products complete" in log
    for buffer in (root / f"buff-{pb}-vis", root / f"buff-{pb}-img"):
        assert manifest.verify(buffer) == []
        # no temporaries of the killed runs (stores, calibrate's scratch) are left behind
        assert not [p for p in buffer.rglob(".*") if manifest.LEFTOVER.search(p.name)]
    expected, got = products(root, "pb-ref-20261126-00000"), products(root, pb)
    for name, array in expected.items():
        np.testing.assert_array_equal(got[name], array, err_msg=name)


def test_only_science_parameters_key_a_steps_products():
    base = parse({})
    operational = parse({"n_workers": 7, "cpu_limit": "16", "step_deadline_s": 600,
                         "artifacts": True, "config_db": "/elsewhere"})  # fmt: skip
    for step in PIPELINE:
        assert key_parameters(operational, step) == key_parameters(base, step)
        for change in ({"nfreqwin": 4}, {"seed": 1}):
            assert key_parameters(parse(change), step) != key_parameters(base, step), change

    def keyed(change: dict) -> list[str]:
        new = parse(change)
        return [s for s in PIPELINE if key_parameters(new, s) != key_parameters(base, s)]

    # the corruption keys the steps from corrupt on, the MS exports the steps writing them
    assert keyed({"phase_error": 0.5}) == ["corrupt", "calibrate", "image"]
    assert keyed({"export_ms": True}) == ["simulate", "calibrate"]
    # what only ICAL reads keys calibrate and image, not the simulated and corrupted data
    for change in ({"epsilon": 1e-6}, {"niter": 5}, {"calibration_context": "T"},
                   {"g_interval_s": 60.0}, {"scales": [0, 4]}):  # fmt: skip
        for step in PIPELINE:
            changed = key_parameters(parse(change), step) != key_parameters(base, step)
            assert changed == (step in ("calibrate", "image")), (change, step)


def test_products_of_an_earlier_version_are_made_anew(monkeypatch):
    """A step whose products changed for the same parameters (simulate's uvw frame) keys by
    its products' version: what an earlier version made is not reused."""
    params = parse({})
    before = {step: key_parameters(params, step) for step in PIPELINE}
    monkeypatch.setitem(
        runner.PRODUCTS_VERSION, "simulate", runner.PRODUCTS_VERSION["simulate"] + 1
    )
    after = {step: key_parameters(params, step) for step in PIPELINE}
    assert [step for step in PIPELINE if after[step] != before[step]] == ["simulate"]


def test_a_file_in_a_buffer_keys_by_its_content_under_the_given_root(tmp_path, monkeypatch):
    """``buffer:`` files are found under the pod's buffer root, or the one given (as
    ``outputs --buffer-root`` does)."""
    layout = tmp_path / "buff-in" / "layout.csv"
    layout.parent.mkdir()
    layout.write_text("name,x,y\n")
    params = parse({}).model_copy(update={"configuration": "buffer:buff-in/layout.csv"})
    monkeypatch.delenv("BATCH_IMAGING_BUFFER_ROOT", raising=False)  # the pod's: /buffer
    assert key_parameters(params, "simulate")["configuration_sha256"] is None
    given = key_parameters(params, "simulate", tmp_path)["configuration_sha256"]
    assert given == manifest.sha256(layout)
    monkeypatch.setenv("BATCH_IMAGING_BUFFER_ROOT", str(tmp_path))
    assert key_parameters(params, "simulate")["configuration_sha256"] == given


def test_changing_ical_parameters_reuses_the_simulated_data(tmp_path):
    """A re-run with other CLEAN settings reuses simulate and corrupt, and redoes the rest
    (Hogbom makes no spectral index: the first run's goes)."""
    params = tmp_path / "params.json"
    params.write_text(json.dumps({**SMALL, "nmajor": 1, "pb_id": "pb-rerun-20261201-00000"}))
    first = cli.batch_imaging("run", str(params), "--buffer-root", str(tmp_path))
    assert first.returncode == 0, first.stderr[-2000:]
    made = run_params(tmp_path, None, None)
    assert all((tmp_path / made.buffer_img / name).is_file() for name in SPECTRAL_INDEX)
    assert "Calibration term B is not solved: it starts at major cycle 4" in first.stderr
    other = ("-p", "niter=60", "-p", "algorithm=hogbom")  # no spectral index
    again = cli.batch_imaging("run", str(params), "--buffer-root", str(tmp_path), *other)
    assert again.returncode == 0, again.stderr[-2000:]
    for step in PIPELINE:
        reused = f"Step {step}: products complete and inputs unchanged" in again.stderr
        assert reused == (step in ("simulate", "corrupt")), step
    # the block holds what ran (the file with the command line), so nothing is stale
    ran = run_params(tmp_path, None, None)
    assert (ran.pb_id, ran.niter, ran.nmajor) == ("pb-rerun-20261201-00000", 60, 1)
    assert not [p.relative for p in outputs.products(ran, tmp_path) if p.stale]
    alpha = [tmp_path / ran.buffer_img / name for name in SPECTRAL_INDEX]
    assert not any(path.exists() for path in alpha), "the first run's spectral index is left"


def test_a_killed_engine_takes_its_steps_with_it(tmp_path):
    """SIGKILL of ``batch-imaging run`` gives it no chance to stop its steps: the kernel ends
    the running step (and so its Dask workers), so that none goes on writing into the
    buffers beside a re-run."""
    pb = "pb-orphan-20261201-00000"
    params = tmp_path / "params.json"
    params.write_text(json.dumps({**SMALL, "npixel": 512, "nmajor": 50, "pb_id": pb}))
    run = start(params, tmp_path)
    deadline = time.monotonic() + 120
    while step_phase(tmp_path, pb, "calibrate") != "Running":
        assert run.poll() is None and time.monotonic() < deadline, "calibrate never started"
        time.sleep(0.05)
    time.sleep(1.0)  # its Dask workers started
    tree = psutil.Process(run.pid).children(recursive=True)
    assert any({"step", "calibrate"} <= set(p.cmdline()) for p in tree)
    run.kill()
    run.wait()
    _, alive = psutil.wait_procs(tree, timeout=8)  # calibrate alone would run on for minutes
    left = [process.cmdline()[:5] for process in alive]
    for process in alive:
        process.kill()
    run.communicate(timeout=30)  # its log pipe, which the steps held open
    assert not left, left
