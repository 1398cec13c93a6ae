"""``batch-imaging submit|status|logs``: runs on an Argo server, through Hera's WorkflowsService.

The server is configured as for the argo CLI: ``ARGO_SERVER`` (host:port), ``ARGO_SECURE``
(https unless ``false``), ``ARGO_INSECURE_SKIP_VERIFY``, ``ARGO_BASE_HREF``, ``ARGO_NAMESPACE``
and ``ARGO_TOKEN`` (or ``ARGO_TOKEN_FILE``, a file holding it). The token is only ever sent
in the Authorization header; it is never printed or logged.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
from hera.workflows import WorkflowsService
from hera.workflows import models as m
from hera.workflows.models.io.argoproj.workflow.v1alpha1 import LogEntry

from dag.runner import config_db_url, pods_db
from dag.workflow import BUFFERS, NAME
from steps import params as parameters
from steps.params import Params, ParamsError, pairs

DEFAULT_SERVER = "localhost:2746"
DEFAULT_NAMESPACE = "default"


class ArgoConfigError(ParamsError):
    """The Argo server settings are incomplete or contradictory."""


def _true(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in ("1", "true", "yes")


def token() -> str | None:
    """``$ARGO_TOKEN``, or the contents of ``$ARGO_TOKEN_FILE``; None when neither is set."""
    value = os.environ.get("ARGO_TOKEN")
    path = os.environ.get("ARGO_TOKEN_FILE")
    if value and path:
        raise ArgoConfigError("set ARGO_TOKEN or ARGO_TOKEN_FILE, not both")
    if path:
        try:
            value = Path(path).read_text().strip()
        except OSError as exc:
            raise ArgoConfigError(f"cannot read ARGO_TOKEN_FILE: {exc.strerror}") from None
    return value or None


def service() -> WorkflowsService:
    """A WorkflowsService for the server the environment names, like the argo CLI."""
    server = os.environ.get("ARGO_SERVER", DEFAULT_SERVER)
    if "://" in server:
        raise ArgoConfigError(f"ARGO_SERVER is host:port (no scheme), not {server!r}")
    scheme = "https" if _true("ARGO_SECURE", True) else "http"
    base = os.environ.get("ARGO_BASE_HREF", "").strip("/")
    host = f"{scheme}://{server}/{base + '/' if base else ''}"
    return WorkflowsService(
        host=host,
        token=token(),
        verify_ssl=not _true("ARGO_INSECURE_SKIP_VERIFY", False),
        namespace=os.environ.get("ARGO_NAMESPACE", DEFAULT_NAMESPACE),
    )


# what a cluster run cannot do without: given in the file or with -p, never a default
CLUSTER_REQUIRED = {
    "pb_id": "the processing block the run claims, as `batch-imaging sdp assign` created it",
    "config_db": "etcd://HOST:PORT of the configuration database, as the pods reach it",
}


def run_parameters(params_file: str, overrides: dict[str, str]) -> Params:
    """Parameters of a run: the file, the overrides, and the DaskCluster's scheduler.  The
    processing block and the configuration database the pods reach must be named, and the
    buffers must not be another block's (its products would be overwritten)."""
    given = parameters.decode_strings(overrides)
    raw = parameters.read(params_file)
    for name, what in CLUSTER_REQUIRED.items():
        if isinstance(raw, dict) and not {**raw, **given}.get(name):
            raise ParamsError(
                f"{name}: required to run on a cluster ({what}): give it in the file or with "
                f"-p {name}=..."
            )
    params = parameters.load(params_file, **given)
    pods_db(config_db_url(params.config_db), "config_db =")
    for name in BUFFERS.values():
        owner = re.fullmatch(r"buff-(pb-.+)-(vis|img)", getattr(params, name))  # as SDP names
        if owner and owner[1] != params.pb_id:
            raise ParamsError(
                f"{name} = {getattr(params, name)!r}: the buffer of processing block "
                f"{owner[1]}, not of {params.pb_id}, whose products would be overwritten; "
                f"give -p {name}=buff-{params.pb_id}-{owner[2]} (this block's)"
            )
    if params.dask_cluster and not params.dask_scheduler:
        from dag.workflow import dask_scheduler_address

        params = params.model_copy(update={"dask_scheduler": dask_scheduler_address(params.pb_id)})
    return params


def workflow_body(params: Params, inline: bool = False, image: str | None = None) -> dict:
    """The Workflow to create: a reference to the installed WorkflowTemplate, or (inline)
    the whole rendered spec, for a cluster that does not have the template."""
    from dag.render import example_manifest, template_manifest

    body = example_manifest(params)
    if inline:
        spec = template_manifest(image)["spec"]
        body["spec"] = {**spec, "arguments": body["spec"]["arguments"]}
    return body


def submit(
    params: Params, how: str = "create", image: str | None = None, dry_run: bool = False
) -> m.Workflow | dict[str, Any]:
    """Start a run: ``create`` a Workflow (referencing the template, or ``inline``), or
    ``submit`` the WorkflowTemplate on the server. With dry_run, return the request body."""
    namespace = os.environ.get("ARGO_NAMESPACE", DEFAULT_NAMESPACE)
    if how == "submit":
        options = m.SubmitOpts(
            generate_name=f"{NAME}-",
            labels=",".join(f"{k}={v}" for k, v in _labels(params).items()),
            parameters=[f"{k}={v}" for k, v in params.as_strings().items()],
        )
        request = m.WorkflowSubmitRequest(
            namespace=namespace,
            resource_kind="WorkflowTemplate",
            resource_name=NAME,
            submit_options=options,
        )
        if dry_run:
            return request.model_dump(by_alias=True, exclude_none=True, mode="json")
        return service().submit_workflow(request, namespace=namespace)
    body = workflow_body(params, how == "inline", image)
    request = m.WorkflowCreateRequest(namespace=namespace, workflow=m.Workflow.model_validate(body))
    if dry_run:
        return request.model_dump(by_alias=True, exclude_none=True, mode="json")
    return service().create_workflow(request, namespace=namespace)


def _labels(params: Params) -> dict[str, str]:
    from dag.render import run_labels

    return {k: v for k, v in run_labels(params).items() if v}


def status_lines(workflow: m.Workflow) -> list[str]:
    """A workflow's phase, progress and each step's phase, progress and outputs."""
    status = workflow.status or m.WorkflowStatus()
    name = workflow.metadata.name
    lines = [f"{name}: {status.phase or 'Pending'} {status.progress or ''}".rstrip()]
    if status.message:
        lines.append(f"  {status.message}")
    nodes = sorted((status.nodes or {}).values(), key=lambda n: str(n.started_at or ""))
    for node in nodes:
        if node.type not in ("Pod", "Skipped", "Omitted") and node.type is not None:
            continue
        outputs = (node.outputs.parameters or []) if node.outputs else []
        artifacts = (node.outputs.artifacts or []) if node.outputs else []
        shown = ", ".join(
            [f"{p.name}={p.value}" for p in outputs if p.value]
            + [f"{a.name}={_location(a)}" for a in artifacts]
        )
        lines.append(
            f"  {node.display_name or node.name:<22} {node.phase or '':<10} "
            f"{node.progress or '':<6} {shown}".rstrip()
        )
    return lines


def _location(artifact: m.Artifact) -> str:
    """Where an output artifact was saved, as ``<repository kind>:<key>``."""
    for kind in ("s3", "gcs", "azure", "oss", "hdfs", "artifactory", "http"):
        location = getattr(artifact, kind, None)
        if location is not None:
            key = next(
                (
                    getattr(location, a)
                    for a in ("key", "blob", "path", "url")
                    if hasattr(location, a)
                ),
                "",
            )
            return f"{kind}:{key}"
    return "(saved)"


def logs(name: str) -> list[str]:
    """The main containers' logs of a run, ``pod: line`` each.

    The server streams one ``{"result": LogEntry}`` JSON object per line, so this reads the
    stream with the service's session rather than ``WorkflowsService.workflow_logs`` (which
    parses a single object).
    """
    svc = service()
    url = f"{svc.host}api/v1/workflows/{quote(svc.namespace)}/{quote(name)}/log"
    response = svc.session.get(
        url,
        params={"logOptions.container": "main"},
        headers={"Authorization": svc.token} if svc.token else {},
        verify=svc.verify_ssl,
        stream=True,
        timeout=60,
    )
    if not response.ok:
        raise RuntimeError(f"Argo server: HTTP {response.status_code} for logs of {name}")
    lines = []
    for raw in response.iter_lines():
        if raw:
            entry = LogEntry.model_validate(json.loads(raw).get("result", {}))
            lines.append(f"{entry.pod_name}: {entry.content}")
    return lines


@contextmanager
def _reaching_server() -> Iterator[None]:
    """Name the server that could not be reached, and how to name another."""
    server = os.environ.get("ARGO_SERVER")
    where = server or f"{DEFAULT_SERVER} (ARGO_SERVER is not set: set it to host:port)"
    try:
        yield
    except requests.exceptions.SSLError as exc:
        raise RuntimeError(
            f"TLS with the Argo server at {where} failed ({exc}); a self-signed certificate "
            "needs ARGO_INSECURE_SKIP_VERIFY=true, as for the argo CLI"
        ) from None
    except requests.ConnectionError as exc:
        raise RuntimeError(f"cannot reach the Argo server at {where} ({exc})") from None


def cmd_submit(args: argparse.Namespace) -> int:
    params = run_parameters(args.params, pairs(args.param))
    how = "inline" if args.inline else "submit" if args.from_template else "create"
    with _reaching_server():
        result = submit(params, how, args.image, args.dry_run)
    if isinstance(result, dict):
        print(json.dumps(result, indent=2))
    else:
        print(f"{result.metadata.name} submitted ({result.metadata.namespace})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with _reaching_server():
        workflow = service().get_workflow(args.run)
    print("\n".join(status_lines(workflow)))
    phase = workflow.status.phase if workflow.status else None
    return 1 if phase in ("Failed", "Error") else 0


def cmd_logs(args: argparse.Namespace) -> int:
    with _reaching_server():
        lines = logs(args.run)
    print("\n".join(lines))
    return 0


def add_commands(subparsers: Any) -> None:
    """Add ``submit``, ``status`` and ``logs`` to the ``batch-imaging`` command."""
    submit_ = subparsers.add_parser("submit", help="start a run on the Argo server")
    submit_.add_argument("params", help="JSON file of processing-block parameters")
    submit_.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE")
    mode = submit_.add_mutually_exclusive_group()
    mode.add_argument(
        "--from-template",
        action="store_true",
        help="submit the installed WorkflowTemplate server-side (default: create a Workflow "
        "referencing it, with its title and labels)",
    )
    mode.add_argument(
        "--inline", action="store_true", help="create a Workflow with the whole spec inline"
    )
    submit_.add_argument("--image", default=None, help="image of an --inline run")
    submit_.add_argument(
        "--dry-run", action="store_true", help="print the request body; send nothing"
    )
    submit_.set_defaults(func=cmd_submit)
    status = subparsers.add_parser("status", help="phase, progress and outputs of a run")
    status.add_argument("run", help="workflow name")
    status.set_defaults(func=cmd_status)
    logs_ = subparsers.add_parser("logs", help="logs of a run's steps")
    logs_.add_argument("run", help="workflow name")
    logs_.set_defaults(func=cmd_logs)
