"""The run report: one self-contained ``report.html`` in the image buffer.

Parameters, the step timeline (the PB state's ``steps``), the previews inlined as ``data:``
URIs, the metrics and the source table; no scripts and no external assets, so it reads offline.
"""

from __future__ import annotations

import base64
import datetime
import json
from collections.abc import Collection, Mapping
from html import escape
from pathlib import Path
from typing import Any

from steps import atomic
from steps.buffers import PREVIEWS, Buffers
from steps.log import LOG
from steps.params import Params
from steps.runner import DAEMON_STEP

RECORD_TITLES = {  # lists of records in metrics.json, each shown as a table
    "sources": "Brightest sources (centre window): true apparent flux (the sky model times "
    "the station beam, Jy) against the restored peak (Jy/beam)",
    "mfs.sources": "Brightest sources (MFS image): true apparent flux at the reference "
    "frequency (Jy), against the restored peak (Jy/beam)",
    "ical.terms": "Calibration terms",
}
STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1100px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 2px 8px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.bar { background: #4a90d9; height: 0.9em; }
.Failed .bar { background: #d9534f; }
.status-FINISHED { color: #2e7d32; } .status-FAILED { color: #c62828; }
figure { display: inline-block; margin: 0.5em 0; width: 49%; }
figure img { width: 100%; }
figcaption { text-align: center; font-size: 0.9em; }
"""


def _table(rows: list[list[str]], header: list[str], numeric: Collection[int] = ()) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{cell}</td>' if i in numeric else f"<td>{cell}</td>"
            for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return escape(str(value))


def _parameters(params: Params) -> str:
    rows = [
        [escape(name), escape(json.dumps(value)), escape(field.description or "")]
        for (name, value), field in zip(
            params.model_dump().items(), Params.model_fields.values(), strict=True
        )
    ]
    return _table(rows, ["parameter", "value", "meaning"])


def _seconds(entry: Mapping[str, Any], key: str) -> float | None:
    try:
        return datetime.datetime.fromisoformat(entry[key]).timestamp()
    except (KeyError, TypeError, ValueError):
        return None


def _message(name: str, entry: Mapping[str, Any]) -> str:
    """A step's message, or what its phase alone does not say (reused, holding the claim)."""
    if entry.get("message"):
        return str(entry["message"])
    if entry.get("reused"):
        return "reused: products complete and inputs unchanged"
    if name == DAEMON_STEP and entry.get("phase") == "Running":
        return "holds the claim while the workflow runs"
    if name == "report" and entry.get("phase") == "Running":
        return "making this report"
    return ""


def _timeline(steps: Mapping[str, Mapping[str, Any]]) -> str:
    if not steps:
        return "<p>No step timeline recorded.</p>"
    spans = {name: (_seconds(e, "started"), _seconds(e, "finished")) for name, e in steps.items()}
    starts = [s for s, _ in spans.values() if s is not None]
    ends = [f for _, f in spans.values() if f is not None] + starts
    t0, total = min(starts, default=0.0), max(max(ends, default=0.0) - min(starts, default=0.0), 1)
    rows = []
    for name in sorted(steps, key=lambda n: spans[n][0] or float("inf")):
        entry, (start, end) = steps[name], spans[name]
        bar = ""
        if start is not None:
            left = 100 * (start - t0) / total
            width = max(100 * ((end or start) - start) / total, 0.5)
            bar = f'<div class="bar" style="margin-left:{left:.1f}%;width:{width:.1f}%"></div>'
        rows.append(
            [
                escape(name),
                f'<span class="{escape(str(entry.get("phase", "")))}">'
                f"{escape(str(entry.get('phase', '')))}</span>",
                escape(str(entry.get("started", ""))),
                _number(entry.get("duration_s", "")),
                f'<div class="{escape(str(entry.get("phase", "")))}" style="width:300px">'
                f"{bar}</div>",
                escape(_message(name, entry)),
            ]
        )
    return _table(
        rows, ["step", "phase", "started (UTC)", "duration (s)", "timeline", "message"], {3}
    )


def _flat(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics with the keys of nested objects joined by dots."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def _is_records(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _metrics(metrics: Mapping[str, Any]) -> str:
    if not metrics:
        return "<p>No metrics (the image step did not finish).</p>"
    rows = [
        [escape(key), ", ".join(map(_number, value)) if isinstance(value, list) else _number(value)]
        for key, value in _flat(metrics).items()
        if not _is_records(value)
    ]
    return _table(rows, ["metric", "value"], {1})


def _records(metrics: Mapping[str, Any]) -> str:
    """Each list of records in the metrics (the sources, the calibration terms) as a table."""
    tables = []
    for key, records in _flat(metrics).items():
        if not _is_records(records):
            continue
        header = list(dict.fromkeys(k for row in records for k in row))
        numeric = {
            i
            for i, k in enumerate(header)
            if all(
                isinstance(row.get(k), int | float) and not isinstance(row.get(k), bool)
                for row in records
            )
        }
        rows = [[_number(row.get(k, "")) for k in header] for row in records]
        title = escape(RECORD_TITLES.get(key, key))
        tables.append(f"<h2>{title}</h2>\n{_table(rows, header, numeric)}")
    return "\n".join(tables)


def _previews(previews: Mapping[str, Path]) -> str:
    if not previews:
        return "<p>No previews were made.</p>"
    figures = []
    for name, path in previews.items():
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        caption = escape(PREVIEWS.get(name, name))
        figures.append(
            f'<figure><img id="preview-{escape(name)}" alt="{caption}" '
            f'src="data:image/png;base64,{data}"><figcaption>{caption}</figcaption></figure>'
        )
    return "\n".join(figures)


def _made_by(params: Params, metrics: Mapping[str, Any]) -> str:
    """Which block's run measured the metrics, where not this one's (its products reused)."""
    made = metrics.get("pb_id")
    if made is None or made == params.pb_id:
        return ""
    return (
        f"<p>Measured by the run of processing block <code>{escape(str(made))}</code>, whose "
        "products this run reused.</p>\n"
    )


def render(
    params: Params,
    status: str,
    steps: Mapping[str, Mapping[str, Any]],
    metrics: Mapping[str, Any],
    previews: Mapping[str, Path],
) -> str:
    """The report page as HTML text."""
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    title = f"batch-imaging {escape(params.pb_id)}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{STYLE}</style></head>
<body>
<h1>{title}: <span class="status-{escape(status)}">{escape(status)}</span></h1>
<p>Report written {now}; visibility buffer <code>{escape(params.buffer_vis)}</code>,
image buffer <code>{escape(params.buffer_img)}</code>.</p>
<h2>Step timeline</h2>
{_timeline(steps)}
<h2>Previews</h2>
{_previews(previews)}
<h2>Metrics</h2>
{_made_by(params, metrics)}{_metrics(metrics)}
{_records(metrics)}
<h2>Parameters</h2>
{_parameters(params)}
</body></html>
"""


def write(
    params: Params,
    buffers: Buffers,
    status: str,
    steps: Mapping[str, Mapping[str, Any]],
    previews: Mapping[str, Path],
) -> Path:
    """Write ``report.html`` into the image buffer (atomically); metrics are read if present."""
    metrics = json.loads(buffers.metrics.read_text()) if buffers.metrics.exists() else {}
    buffers.img.mkdir(parents=True, exist_ok=True)
    atomic.write_text(buffers.report, render(params, status, steps, metrics, previews))
    return buffers.report


def status_of(steps: Mapping[str, Mapping[str, Any]]) -> str:
    """The run's phase as its recorded steps show it (this step and the claim daemon, which
    runs until the DAG ends, aside): Failed if one failed, Running while one is unfinished,
    Succeeded when all succeeded (steps record only these three phases)."""
    phases = [
        str(e.get("phase", ""))
        for name, e in steps.items()
        if name != "report" and not (name == DAEMON_STEP and e.get("phase") == "Running")
    ]
    if "Failed" in phases:
        return "Failed"
    if not phases or any(p != "Succeeded" for p in phases):
        return "Running"
    return "Succeeded"


def run(params: Params, buffers: Buffers) -> dict[str, str]:
    """The ``report`` step: previews and ``report.html`` from the products and the timeline."""
    from steps import previews
    from steps.configdb import ConfigDB, connect

    with ConfigDB(connect(params.config_db or None)) as db:
        state = db.run(lambda txn: txn.get_state(params.pb_id))
    steps = getattr(state, "steps", None) or {}
    status = status_of(steps)
    path = write(params, buffers, status, steps, previews.write_all(params, buffers))
    LOG.info("Run report: %s", path)
    return {"report": str(path)}
