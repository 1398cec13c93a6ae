"""Preview PNGs: made from a run's products, right size, not blank; robust to missing inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from steps import previews
from steps.buffers import Buffers
from steps.params import parse
from tests.small_run import SmallRun, small_run


@pytest.fixture(scope="session")
def run(tmp_path_factory: pytest.TempPathFactory) -> SmallRun:
    return small_run(tmp_path_factory)


def _check_png(path: Path) -> None:
    assert path.stat().st_size > 5_000
    pixels = imread(path)
    assert pixels.shape[1::-1] == previews.PIXELS  # (width, height)
    assert pixels[..., :3].std() > 0.05  # drawn, not blank


def test_report_step_wrote_every_preview(run: SmallRun) -> None:
    directory = run.buffers.previews
    for name in ("restored", "residual", "spectral_index", "psf", "uv_coverage", "gain_phases"):
        _check_png(directory / f"{name}.png")
    assert run.buffers.psf.is_file()
    if run.buffers.convergence.exists():  # written by ICAL
        _check_png(directory / "ical_convergence.png")


def test_convergence_series_of_what_calibrate_writes() -> None:
    data = {
        "cycles": [
            {"cycle": 0, "phase_rms_rad": 0.9, "residual_rms_jy": 0.5, "solved_terms": []},
            {"cycle": 1, "phase_rms_rad": 0.1, "residual_rms_jy": 0.05, "solved_terms": ["T"]},
        ]
    }
    assert previews.convergence_series(data) == {
        "phase_rms_rad": [0.9, 0.1],
        "residual_rms_jy": [0.5, 0.05],
    }
    data["cycles"][1]["phase_rms_rad"] = None  # a series some cycle lacks is not drawn
    assert list(previews.convergence_series(data)) == ["residual_rms_jy"]
    assert previews.convergence_series([1, 2]) == {}  # damaged: nothing to draw


def test_convergence_title_says_when_ical_stopped_early() -> None:
    cycles = [{"cycle": c} for c in range(5)]
    assert previews.convergence_title({"nmajor": 5, "stopped": "converged", "cycles": cycles}) == (
        "ICAL convergence (converged at cycle 4 of 5)"
    )
    assert previews.convergence_title({"nmajor": 5, "stopped": "diverged", "cycles": cycles}) == (
        "ICAL convergence (diverged at cycle 4 of 5)"
    )
    stopped = {"nmajor": 4, "stopped": "nmajor", "cycles": cycles}
    assert previews.convergence_title(stopped) == "ICAL convergence"
    assert previews.convergence_title({"cycles": cycles}) == "ICAL convergence"  # no nmajor
    older = {"nmajor": 5, "cycles": cycles}  # written before ICAL recorded why it stopped
    assert previews.convergence_title(older) == "ICAL convergence (converged at cycle 4 of 5)"


def test_ical_convergence_preview(tmp_path: Path) -> None:
    buffers = Buffers(vis=tmp_path / "vis", img=tmp_path / "img")
    buffers.img.mkdir()
    cycles = [
        {"phase_rms_rad": phase, "residual_rms_jy": rms}
        for phase, rms in ((1.0, 0.3), (0.2, 0.05), (0.01, 0.02))
    ]
    buffers.convergence.write_text(json.dumps({"cycles": cycles}))
    written = previews.write_all(parse({}), buffers)
    assert list(written) == ["ical_convergence"]  # every other input is missing: skipped
    _check_png(written["ical_convergence"])


def test_a_damaged_product_is_an_error_from_the_process_drawing_it(tmp_path: Path) -> None:
    buffers = Buffers(vis=tmp_path / "vis", img=tmp_path / "img")
    buffers.img.mkdir()
    buffers.convergence.write_text(json.dumps({"cycles": "damaged"}))
    with pytest.raises(ValueError, match="holds no per-cycle series"):
        previews.write_all(parse({}), buffers)
    assert not buffers.preview("ical_convergence").exists()


def test_missing_products_write_nothing(tmp_path: Path) -> None:
    buffers = Buffers(vis=tmp_path / "vis", img=tmp_path / "img")
    assert previews.write_all(parse({}), buffers) == {}
    assert not np.any([p.suffix == ".png" for p in tmp_path.rglob("*")])


def test_psf_made_for_a_run_without_one_is_the_image_steps(run: SmallRun, tmp_path: Path) -> None:
    """A run whose image step did not write ``psf.fits`` gets the same PSF from the report."""
    from astropy.io import fits

    made = previews.write_psf(run.params, Buffers(vis=run.buffers.vis, img=tmp_path))
    ours, theirs = fits.open(made)[0], fits.open(run.buffers.psf)[0]
    np.testing.assert_allclose(ours.data, theirs.data, atol=1e-3)
    for card in ("CRVAL1", "CDELT1", "CRVAL4", "DATE-OBS", "OBSGEO-X", "WEIGHTNG"):
        assert ours.header[card] == theirs.header[card], card
    assert theirs.header["WEIGHTNG"] == run.params.weighting == "natural"
    uniform = run.params.model_copy(update={"weighting": "uniform"})
    (tmp_path / "u").mkdir()
    made = previews.write_psf(uniform, Buffers(vis=run.buffers.vis, img=tmp_path / "u"))
    with fits.open(made) as hdul:
        assert hdul[0].header["WEIGHTNG"] == "uniform"
        assert np.abs(hdul[0].data - theirs.data).max() > 0.01  # other weights, other PSF
