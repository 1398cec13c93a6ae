"""The whole DAG on this machine, as a user runs it: ``batch-imaging run PARAMS``."""

import json
import math
import os
import re

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from steps.buffers import PREVIEWS
from steps.metrics import peak_near
from steps.science import beam, sky
from tests.cli import batch_imaging

SMALL = {
    "n_workers": 2,
    "nfreqwin": 2,
    "ntimes": 3,
    "rmax": 300.0,
    "npixel": 256,
    "cellsize": 0.001,
    "buffer_vis": "buff-e2e-vis",
    "buffer_img": "buff-e2e-img",
}
SEED_LOG = [
    "INFO:batch_imaging:Claimed processing block pb-",
    "INFO:batch_imaging:Waiting for resources to be available",
    "INFO:batch_imaging:Resources are available",
    "INFO:batch_imaging:Creating buffer reservations",
    "INFO:batch_imaging:Deploying Dask EE",
    "INFO:batch_imaging:Running simulation pipeline",
    "INFO:batch_imaging:Running ICAL pipeline",
    "INFO:batch_imaging:Finished processing",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    params = root / "params.json"
    params.write_text(json.dumps(SMALL))
    result = batch_imaging(
        *("run", str(params), "--buffer-root", str(root / "buffers")),
        *("-p", "artifacts=true", "--artifact-repository", str(root / "artifacts")),
    )
    return result, root / "buffers"


def test_run_succeeds_with_the_seed_log(run):
    result, _ = run
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    positions = []
    for expected in SEED_LOG:
        matches = [i for i, line in enumerate(lines) if line.startswith(expected)]
        assert matches, f"missing log line {expected!r}"
        positions.append(matches[0])
    assert positions == sorted(positions), "seed log lines out of order"
    assert not [line for line in lines if line.endswith(" ")], "lines with trailing spaces"
    assert "further from the truth than no calibration" not in result.stderr
    convergence = json.loads((run[1] / SMALL["buffer_img"] / "ical_convergence.json").read_text())
    last = convergence["cycles"][-1]["cycle"]  # ICAL may stop before nmajor (5) once converged
    assert (f"ICAL converged at cycle {last} of 5:" in result.stderr) == (last < 5)
    # each heavy step's progress, as the Argo UI shows it: windows, or ICAL's major cycles
    table = {}
    for line in lines:
        if line.startswith("INFO:batch_imaging:  "):
            name, *columns = line.removeprefix("INFO:batch_imaging:").split()
            table[name] = columns
    assert table["calibrate"][:4] == ["Succeeded", table["calibrate"][1], "s", "6/6"]
    for step in ("simulate", "corrupt"):
        assert re.fullmatch(r"(\d+)/\1", table[step][3]), table[step]


def test_products_are_in_the_buffers(run):
    _, buffers = run
    vis, img = buffers / "buff-e2e-vis", buffers / "buff-e2e-img"
    for name in ("model.zarr", "corrupted.zarr", "calibrated.zarr", "gains_true.zarr"):
        assert (vis / name).is_dir(), name
    for name in ("deconvolved.fits", "residual.fits", "restored.fits", "metrics.json"):
        assert (img / name).is_file(), name
    assert not list(buffers.rglob(".*.tmp-*")), "temporary files left behind"
    # every product has the umask's mode (the FITS files too: not the 0600 of a temporary file)
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in img.iterdir() if p.is_file()}
    assert set(modes.values()) == {0o666 & ~umask}, modes


def test_report_and_previews_are_output_artifacts(run):
    result, buffers = run
    img = buffers / "buff-e2e-img"
    assert "report-artifacts" in result.stderr and "Skipped" in result.stderr
    saved = {
        path.name: path for path in (buffers.parent / "artifacts").rglob("*") if path.is_file()
    }
    assert set(saved) == {"report.html", *(f"{name}.png" for name in PREVIEWS)}
    assert saved["report.html"].read_bytes() == (img / "report.html").read_bytes()
    page = saved["report.html"].read_text()  # the claim daemon still runs: the rest is done
    assert '<span class="status-Succeeded">Succeeded</span></h1>' in page
    assert "holds the claim while the workflow runs" in page
    for name in PREVIEWS:
        assert saved[f"{name}.png"].read_bytes() == (img / "previews" / f"{name}.png").read_bytes()
    # Argo's default key: <workflow>/<pod>/<file>, the pod named after the template
    workflow, pod = saved["report.html"].relative_to(buffers.parent / "artifacts").parts[:2]
    assert workflow.startswith("batch-imaging-pb-local-")
    assert pod.startswith(f"{workflow}-report-artifacts-")


def test_brightest_source_restored_at_its_position_and_flux(run):
    _, buffers = run
    with fits.open(buffers / "buff-e2e-img" / "restored.fits") as hdul:
        header, data = hdul[0].header, hdul[0].data
    wcs = WCS(header)
    assert header["BUNIT"].upper() == "JY/BEAM" and header["BMAJ"] > 0
    freqs = wcs.sub(["spectral"]).pixel_to_world_values(np.arange(data.shape[0]))
    half_width_deg = math.degrees(SMALL["npixel"] * SMALL["cellsize"] / 2)
    components = sky.load_gleam(3.0, 0.0, -30.0, 2 * half_width_deg)
    apparent = sky.apparent_flux(components, freqs, 0.0, -30.0, beam.StationBeam())
    for window in range(data.shape[0]):
        brightest = int(np.argmax(apparent[:, window]))
        x, y = wcs.celestial.world_to_pixel_values(
            components.ra_deg[brightest], components.dec_deg[brightest]
        )
        plane = data[window, 0]
        # sub-pixel peak: ICAL from an empty model leaves the sky free to shift by a fraction
        # of a pixel (a phase gradient self-calibration cannot determine)
        peak, px, py = peak_near(plane, float(x), float(y))
        assert math.hypot(px - x, py - y) <= 0.5, (px, x, py, y)
        assert peak == pytest.approx(apparent[brightest, window], rel=0.05)


def test_calibration_gone_wrong_is_said(tmp_path):
    """Pixels far coarser than the array's resolution give ICAL a wrong model: the run
    ends, but its log says that the solved gains are worse than none."""
    params = tmp_path / "coarse.json"
    coarse = {**SMALL, "n_workers": 1, "npixel": 64, "cellsize": 0.02, "niter": 50, "nmajor": 2}
    params.write_text(json.dumps(coarse))
    result = batch_imaging("run", str(params), "--buffer-root", str(tmp_path / "buffers"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "WARNING:batch_imaging:ICAL left the gains further from the truth" in result.stderr
