"""``batch-imaging outputs``: a run's products with sizes, locally and as PVC paths."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dag.cli import main
from dag.outputs import POD_ROOT, human, products, run_params, stale_files
from dag.runner import WORKFLOW, engine_arguments, given_or_embedded, register
from steps import manifest
from steps.configdb import ConfigDB, PBState, ProcessingBlock, open_backend
from steps.configdb.entities import Workflow
from steps.params import ParamsError, parse
from steps.runner import key_parameters
from tests.small_run import RAW, SmallRun, small_run


@pytest.fixture(scope="session")
def run(tmp_path_factory: pytest.TempPathFactory) -> SmallRun:
    return small_run(tmp_path_factory)


def test_products_of_the_run(run: SmallRun) -> None:
    rows = {p.relative: p for p in products(run.params, run.root)}
    for name in ("model.zarr", "calibrated.ms", "restored.fits", "report.html", "previews"):
        assert rows[name].size and rows[name].size > 0, name
        assert rows[name].description
    assert rows["restored.fits"].pod_path == (f"{POD_ROOT}/{run.params.buffer_img}/restored.fits")
    assert rows["model.zarr"].pvc == run.params.buffer_vis


def test_products_of_other_parameters_are_stale(
    run: SmallRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not [p.relative for p in products(run.params, run.root) if p.stale]
    # a block with another niter whose run has not (yet) remade anything: calibrate's and
    # image's products are an earlier run's, simulate's and corrupt's are still its own
    other = run.params.model_copy(update={"niter": run.params.niter + 1})
    stale = {p.relative: p.stale for p in products(other, run.root) if p.stale}
    assert {"calibrated.zarr", "gains_solved.zarr", "restored.fits", "report.html"} <= set(stale)
    assert not stale.keys() & {"model.zarr", "corrupted.zarr", "gains_true.zarr", "sky_model.csv"}
    assert stale["restored.fits"].startswith(f"made by an earlier run of {other.pb_id} with")
    # another sky: everything the pipeline made
    other = run.params.model_copy(update={"ra": run.params.ra + 1.0})
    stale = {p.relative for p in products(other, run.root) if p.stale}
    assert {"model.zarr", "corrupted.zarr", "calibrated.zarr", "restored.fits"} <= stale
    # as the command shows it, for a block naming these buffers that has not run yet (in a
    # store of its own: the run's block stays the latest for the other tests)
    pb_id, store = "pb-other-20250101-00000", str(tmp_path / "config")
    requested = {**RAW, "niter": run.params.niter + 1, "pb_id": pb_id}
    requested |= {"buffer_vis": run.params.buffer_vis, "buffer_img": run.params.buffer_img}
    with ConfigDB(open_backend(store)) as db:
        register(db, parse({**requested, "config_db": store}), requested)
    assert main(["outputs", "--buffer-root", str(run.root), "--config-db", store, pb_id]) == 0
    out = capsys.readouterr().out
    assert "STALE calibrated visibilities" in out and "STALE simulated" not in out
    assert "restored.fits, " in out and "has not remade" not in out
    assert f"made by the run of {run.params.pb_id}, with other parameters or inputs\n" in out


def test_a_product_the_step_no_longer_makes_is_stale(tmp_path: Path) -> None:
    """An MS left by an earlier calibrate (with export_ms) keeps that run's key: stale, while
    what the latest run of the step made is current; a manifest that does not name the
    block that made a file (written before it did) says no more than that it is another's."""
    params = parse({})
    vis = tmp_path / params.buffer_vis
    key = manifest.step_key("calibrate", key_parameters(params, "calibrate"), [vis], [])
    entry = {"step": "calibrate", "size": 1, "sha256": ""}
    files = {
        "calibrated.zarr/zarr.json": {**entry, "key": key, "pb_id": params.pb_id},
        "calibrated.ms/table.dat": {**entry, "key": "old", "pb_id": "pb-old-20260101-00000"},
        "restored.fits": {**entry, "step": "image", "key": "old"},
    }
    vis.mkdir()
    steps = {
        "calibrate": {"key": key, "inputs": [], "outputs": {}},
        "image": {"key": "old", "inputs": [], "outputs": {}},
    }
    manifest.save(vis, {"schema": manifest.SCHEMA, "files": files, "steps": steps})
    assert stale_files(params, [vis], tmp_path) == {
        vis / "calibrated.ms": "left by an earlier run of step calibrate "
        "(pb-old-20260101-00000's): with these parameters it makes none",
        vis / "restored.fits": "made by an earlier run with other parameters or inputs than "
        f"{params.pb_id}'s",
    }


def test_run_params_from_the_config_db(run: SmallRun) -> None:
    assert run_params(run.root, None, None).pb_id == run.params.pb_id  # the latest block
    assert run_params(run.root, run.params.pb_id, None).nfreqwin == run.params.nfreqwin
    with pytest.raises(ParamsError, match="pb-elsewhere-20260101-00000 is not in"):
        run_params(run.root, "pb-elsewhere-20260101-00000", None)  # run on another DB


def test_the_latest_block_is_the_batch_block_run_last(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without a PB_ID: the batch_imaging block whose run was submitted (or requested, by a
    bridge) last, not the id that sorts last; by id where no block has a run recorded."""
    store = str(tmp_path / "config")
    caplog.set_level(logging.INFO, "batch_imaging")
    realtime = Workflow(type="realtime", id="test_realtime", version="0.2.2")
    with ConfigDB(open_backend(store)) as db:
        for txn in db.txn():
            txn.create_pb(ProcessingBlock(id="pb-z-20260101-00000", workflow=realtime))
            for pb_id in ("pb-b-20260101-00000", "pb-c-20260101-00000"):
                txn.create_pb(ProcessingBlock(id=pb_id, workflow=WORKFLOW))
        assert run_params(tmp_path, None, store).pb_id == "pb-c-20260101-00000"
        assert "pb-c-20260101-00000 (by id: none has a run recorded)" in caplog.text
        runs = {
            "pb-a-20260101-00000": {"submitted": "2026-01-02T00:00:00+00:00"},
            "pb-b-20260101-00000": {"requested": "2026-01-01T00:00:00+00:00"},
        }
        for txn in db.txn():
            txn.create_pb(ProcessingBlock(id="pb-a-20260101-00000", workflow=WORKFLOW))
            for pb_id, run in runs.items():
                txn.create_state(pb_id, PBState(status="FINISHED", run=run))
    assert run_params(tmp_path, None, store).pb_id == "pb-a-20260101-00000"
    assert "pb-a-20260101-00000 (run submitted 2026-01-02T00:00:00+00:00)" in caplog.text


def test_cli_lists_sizes_and_pvcs(run: SmallRun, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["outputs", "--buffer-root", str(run.root)]) == 0
    out = capsys.readouterr().out
    assert f"PVC {run.params.buffer_img}, mounted at {POD_ROOT}/{run.params.buffer_img}/" in out
    assert "report.html" in out and "KiB" in out


def test_cli_without_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["outputs", "--buffer-root", str(tmp_path)]) != 0
    assert main(["outputs", "--buffer-root", str(tmp_path), "pb-x-20260101-00001"]) == 0
    assert "buff-pb-x-20260101-00001-img" in capsys.readouterr().out


def test_the_sdp_environment_names_the_db(
    tmp_path: Path, etcd_server, monkeypatch, capsys, caplog
) -> None:
    """Without --config-db or local runs, SDP_CONFIG_HOST/PORT name the DB (as for the other
    commands); with none, the default parameters are assumed, and a warning says so."""
    pb_id = "pb-env-20260101-00001"
    requested = {"pb_id": pb_id, "buffer_vis": "env-vis", "buffer_img": "env-img"}
    with ConfigDB(open_backend(etcd_server.url)) as db:
        register(db, parse(requested), requested)
    monkeypatch.setenv("SDP_CONFIG_HOST", "127.0.0.1")
    monkeypatch.setenv("SDP_CONFIG_PORT", etcd_server.url.rsplit(":", 1)[1])
    assert run_params(tmp_path, pb_id, None).buffer_vis == "env-vis"
    monkeypatch.delenv("SDP_CONFIG_HOST")
    assert main(["outputs", "--buffer-root", str(tmp_path), pb_id]) == 0
    assert "Buffer buff-pb-env-20260101-00001-vis" in capsys.readouterr().out
    assert "No configuration DB" in caplog.text and "default parameters" in caplog.text


def test_human_sizes() -> None:
    assert [human(s) for s in (None, 12, 2048, 3 * 2**30)] == ["-", "12 B", "2.0 KiB", "3.0 GiB"]


def test_commands_find_the_blocks_of_local_runs(tmp_path: Path, monkeypatch) -> None:
    """`outputs` and `run-pb` look in the buffer root's own store when neither a DB nor
    SDP_CONFIG_HOST is given."""
    monkeypatch.delenv("SDP_CONFIG_HOST", raising=False)
    assert given_or_embedded(None, tmp_path) is None  # no local runs: the SDP defaults
    (tmp_path / ".sdp-config").mkdir()
    assert given_or_embedded(None, tmp_path) == str((tmp_path / ".sdp-config").resolve())
    assert given_or_embedded("etcd://db:2379", tmp_path) == "etcd://db:2379"
    monkeypatch.setenv("SDP_CONFIG_HOST", "sdp-etcd")  # the SDP's database named: that one
    assert given_or_embedded(None, tmp_path) is None


def test_a_local_run_uses_the_machines_cores_unless_the_block_gives_a_cpu_request(
    monkeypatch,
) -> None:
    """A local "pod" is the whole machine: the heavy steps' PYTHON_CPU_COUNT (requests.cpu)
    is its cores, unless the block sets cpu_request / cpu_limit itself."""
    monkeypatch.setattr("dag.runner.cores", lambda: 16)
    arguments = engine_arguments(parse({"n_workers": 4}))
    assert (arguments["cpu_request"], arguments["cpu_limit"], arguments["n_workers"]) == (
        "16",
        "16",
        "4",
    )
    assert engine_arguments(parse({"cpu_request": "1"}))["cpu_request"] == "1"
