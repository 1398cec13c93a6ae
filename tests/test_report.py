"""The run report: self-contained HTML with the run's timeline, previews, metrics and sources,
rendered by headless Chromium (the Debian package)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from steps import previews, report, store
from steps.params import parse
from tests.small_run import SmallRun, small_run

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (Debian package chromium; `make test`)"
)
MARK_IMAGES = """<script>addEventListener("load", () => {
  for (const img of document.images) img.setAttribute("data-width", img.naturalWidth);
  document.body.setAttribute("data-loaded", "yes");
});</script>"""


@pytest.fixture(scope="session")
def run(tmp_path_factory: pytest.TempPathFactory) -> SmallRun:
    return small_run(tmp_path_factory)


@pytest.fixture(scope="session")
def page(run: SmallRun) -> str:
    return (run.buffers.report).read_text(encoding="utf-8")


def _chromium(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", *args, url,
    ]  # fmt: skip
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=60)


def test_report_content(run: SmallRun, page: str) -> None:
    for step in ("simulate", "corrupt", "calibrate", "image"):
        assert f"<td>{step}</td>" in page
    assert '<span class="status-Succeeded">Succeeded</span></h1>' in page  # from the timeline
    metrics = json.loads(run.buffers.metrics.read_text())
    assert metrics["sources"][0]["name"] in page
    for title in ("Brightest sources (centre window)", "Brightest sources (MFS image)",
                  "Calibration terms"):  # fmt: skip
        assert f"<h2>{title}" in page
    assert "{&#x27;" not in page and "[{" not in page  # records as tables, not Python reprs
    terms = {t["name"]: t for t in metrics["ical"]["terms"]}  # intervals with their units
    assert "<th>interval_integrations</th>" in page and "<th>interval_s</th>" in page
    layout = store.layout_of(store.open_store(run.buffers.calibrated))
    integration = layout.integration_time
    assert terms["T"]["interval_integrations"] == 1
    # B's 1e5 s interval is the whole observation, given as such, not as ~1e5 s
    assert terms["B"]["interval_integrations"] == len(layout.times)
    for term in terms.values():
        assert term["interval_s"] == pytest.approx(term["interval_integrations"] * integration)
    assert "restored_peak_jy" in page and "clean_beam.bmaj_deg" in page
    assert f"<td>{run.params.pb_id}</td>" not in page  # parameters table lists names, values
    assert '"pb-test-20260101-00000"' in page.replace("&quot;", '"')
    assert page.count('src="data:image/png;base64,') == len(
        list(run.buffers.previews.glob("*.png"))
    )


def test_metrics_another_blocks_run_measured_are_said_to_be(run: SmallRun) -> None:
    metrics = json.loads(run.buffers.metrics.read_text())
    assert "Measured by the run of" not in report.render(run.params, "Succeeded", {}, metrics, {})
    other = {**metrics, "pb_id": "pb-other-20260101-00000"}
    page = report.render(run.params, "Succeeded", {}, other, {})
    assert "Measured by the run of processing block <code>pb-other-20260101-00000</code>" in page


def test_report_is_self_contained(page: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", page)
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_status_comes_from_the_recorded_steps() -> None:
    done = {"phase": "Succeeded"}
    assert report.status_of({"simulate": done, "image": done, "report": {"phase": "Running"}}) == (
        "Succeeded"
    )
    assert report.status_of({"simulate": done, "image": {"phase": "Running"}}) == "Running"
    assert report.status_of({"simulate": {"phase": "Failed"}, "image": done}) == "Failed"
    assert report.status_of({}) == "Running"
    # the claim daemon runs until the DAG ends: it does not hold the report's status back
    claim = {"phase": "Running"}
    assert report.status_of({"claim": claim, "simulate": done, "image": done}) == "Succeeded"
    assert report.status_of({"claim": {"phase": "Failed"}, "image": done}) == "Failed"
    timeline = report._timeline(
        {"claim": claim, "simulate": {**done, "reused": True}, "report": {"phase": "Running"}}
    )
    assert "holds the claim while the workflow runs" in timeline
    assert "making this report" in timeline
    assert "reused: products complete and inputs unchanged" in timeline


def test_report_without_products(tmp_path: Path) -> None:
    from steps.buffers import Buffers

    buffers = Buffers(vis=tmp_path / "vis", img=tmp_path / "img")
    path = report.write(parse({}), buffers, "FAILED", {}, {})
    text = path.read_text()
    assert "FAILED" in text and "No metrics" in text and "No previews" in text


@needs_chromium
def test_chromium_loads_every_image(run: SmallRun, page: str, tmp_path: Path) -> None:
    marked = tmp_path / "marked.html"
    marked.write_text(page.replace("</body>", MARK_IMAGES + "</body>"), encoding="utf-8")
    dom = _chromium(tmp_path, marked.as_uri(), "--dump-dom", "--virtual-time-budget=5000").stdout
    assert 'data-loaded="yes"' in dom
    widths = [int(w) for w in re.findall(r'data-width="(\d+)"', dom)]
    assert len(widths) == page.count("<img ") and len(widths) >= 5
    assert all(w == previews.PIXELS[0] for w in widths)


@needs_chromium
def test_chromium_screenshot_is_not_blank(run: SmallRun, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    url = (run.buffers.report).as_uri()
    _chromium(tmp_path, url, f"--screenshot={shot}", "--window-size=1200,2000")
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1200)
    saturation = pixels.max(axis=2) - pixels.min(axis=2)
    lower = saturation[600:]  # below the timeline: the previews, which are in colour
    assert np.mean(lower > 0.3) > 0.01, "no coloured preview pixels rendered"
    assert np.mean(pixels.mean(axis=2) < 0.5) > 0.01, "no dark (text or image) pixels"
