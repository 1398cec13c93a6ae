"""Contract test of ``batch-imaging submit|status|logs`` against the Argo server's API.

A local HTTP server (127.0.0.1, a free port) plays the argo-server's REST endpoints and checks
every request against the server's API definitions: the paths, the Authorization header, and
the request bodies, validated with Hera's models (WorkflowCreateRequest, WorkflowSubmitRequest)
and with the Argo v4 JSON schema with unknown keys rejected. It is a contract test of what we
send and how we read the answers, not a stand-in for Argo: nothing is scheduled or run.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlparse

import pytest
from hera.workflows import models as hm
from test_manifests import argo_validate

from dag import argo
from dag.cli import main
from dag.workflow import NAME

TOKEN = "s3cr3t-token-value"
NAMESPACE = "sdp"
RUN = "batch-imaging-abcde"
CONFIG_DB = "etcd://sdp-etcd.sdp:2379"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "batch_imaging.json"
REPORT_KEY = f"{RUN}/{RUN}-report-artifacts-1/report.html"
STATUS = {
    "phase": "Running",
    "progress": "3/9",
    "nodes": {
        "n1": {"id": "n1", "name": f"{RUN}.image", "displayName": "image", "type": "Pod",
               "phase": "Succeeded", "progress": "8/8", "startedAt": "2026-01-01T00:00:02Z",
               "outputs": {"parameters": [{"name": "restored_peak_jy", "value": "5.29"}]}},
        "n0": {"id": "n0", "name": f"{RUN}.claim", "displayName": "claim", "type": "Pod",
               "phase": "Running", "startedAt": "2026-01-01T00:00:01Z"},
        "n2": {"id": "n2", "name": RUN, "displayName": RUN, "type": "DAG", "phase": "Running"},
        "n3": {"id": "n3", "name": f"{RUN}.report-artifacts", "displayName": "report-artifacts",
               "type": "Pod", "phase": "Succeeded", "startedAt": "2026-01-01T00:00:03Z",
               "outputs": {"artifacts": [{"name": "report", "path": "/buffer/b/report.html",
                                          "s3": {"key": REPORT_KEY}}]}},
    },
}  # fmt: skip


class ArgoServer(BaseHTTPRequestHandler):
    """The argo-server endpoints we use; records each request, rejects invalid ones."""

    requests: ClassVar[list[tuple[str, str, Any]]] = []

    def log_message(self, *_: Any) -> None:  # keep pytest output clean
        pass

    def _reply(self, code: int, body: Any, ndjson: bool = False) -> None:
        data = (
            "\n".join(json.dumps(line) for line in body) if ndjson else json.dumps(body)
        ).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._reply(401, {"code": 16, "message": "token not valid"})
            return False
        return True

    def do_POST(self) -> None:
        if not self._authorised():
            return
        path = urlparse(self.path).path
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(("POST", path, body))
        if path == f"/api/v1/workflows/{NAMESPACE}":
            definition, model = "WorkflowCreateRequest", hm.WorkflowCreateRequest
        elif path == f"/api/v1/workflows/{NAMESPACE}/submit":
            definition, model = "WorkflowSubmitRequest", hm.WorkflowSubmitRequest
        else:
            self._reply(404, {"code": 5, "message": "Not Found"})
            return
        try:
            argo_validate(body, f"io.argoproj.workflow.v1alpha1.{definition}")
            assert model.model_validate(body).model_dump(by_alias=True, exclude_none=True) == body
        except Exception as exc:  # a contract violation: what argo-server would reject
            self._reply(400, {"code": 3, "message": str(exc)[:500]})
            return
        self._reply(
            200,
            {"metadata": {"name": RUN, "namespace": NAMESPACE}, "spec": {}, "status": {}},
        )

    def do_GET(self) -> None:
        if not self._authorised():
            return
        url = urlparse(self.path)
        self.requests.append(("GET", url.path, parse_qs(url.query)))
        if url.path == f"/api/v1/workflows/{NAMESPACE}/{RUN}":
            self._reply(200, {"metadata": {"name": RUN, "namespace": NAMESPACE}, "spec": {},
                              "status": STATUS})  # fmt: skip
        elif url.path == f"/api/v1/workflows/{NAMESPACE}/{RUN}/log":
            lines = [
                {"result": {"podName": f"{RUN}-claim-1", "content": "INFO:claimed"}},
                {"result": {"podName": f"{RUN}-image-2", "content": "INFO:peak 5.29"}},
            ]
            self._reply(200, lines, ndjson=True)
        else:
            self._reply(404, {"code": 5, "message": "Not Found"})


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ArgoServer)
    ArgoServer.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    monkeypatch.setenv("ARGO_SERVER", f"127.0.0.1:{httpd.server_address[1]}")
    monkeypatch.setenv("ARGO_SECURE", "false")
    monkeypatch.setenv("ARGO_NAMESPACE", NAMESPACE)
    monkeypatch.setenv("ARGO_TOKEN_FILE", str(token_file))
    monkeypatch.delenv("ARGO_TOKEN", raising=False)
    yield httpd
    httpd.shutdown()


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    path = tmp_path / "params.json"
    path.write_text(
        json.dumps({"nfreqwin": 2, "pb_id": "pb-test-20260101-00001", "config_db": CONFIG_DB})
    )
    return path


def test_create_references_the_template(server, params_file, capsys) -> None:
    assert main(["submit", str(params_file), "-p", "sbi_id=sbi-test-20260101-00000"]) == 0
    method, path, body = ArgoServer.requests[-1]
    assert (method, path) == ("POST", f"/api/v1/workflows/{NAMESPACE}")
    workflow = body["workflow"]
    assert workflow["spec"]["workflowTemplateRef"] == {"name": NAME}
    values = {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}
    assert values["nfreqwin"] == "2" and values["sbi_id"] == "sbi-test-20260101-00000"
    assert (
        "pb-test-20260101-00001"
        in workflow["metadata"]["annotations"]["workflows.argoproj.io/title"]
    )
    out = capsys.readouterr()
    assert f"{RUN} submitted" in out.out
    assert TOKEN not in out.out + out.err


def test_submit_from_the_template(server, params_file) -> None:
    assert main(["submit", str(params_file), "--from-template"]) == 0
    _, path, body = ArgoServer.requests[-1]
    assert path == f"/api/v1/workflows/{NAMESPACE}/submit"
    assert (body["resourceKind"], body["resourceName"]) == ("WorkflowTemplate", NAME)
    assert "nfreqwin=2" in body["submitOptions"]["parameters"]
    assert body["submitOptions"]["labels"] == "sdp.skao.int/pb-id=pb-test-20260101-00001"


def test_inline_workflow_and_dask_cluster_scheduler(server, params_file) -> None:
    args = [
        "submit",
        str(params_file),
        "--inline",
        "--image",
        "reg/bi:1",
        "-p",
        "dask_cluster=true",
    ]
    assert main(args) == 0
    workflow = ArgoServer.requests[-1][2]["workflow"]
    assert "workflowTemplateRef" not in workflow["spec"]
    assert {t["name"] for t in workflow["spec"]["templates"]} >= {"main", "exit", "simulate"}
    values = {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}
    assert values["dask_scheduler"] == "tcp://proc-pb-test-20260101-00001-dask-scheduler:8786"


def test_status_and_logs(server, capsys) -> None:
    assert main(["status", RUN]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{RUN}: Running 3/9"
    assert out[1].split()[:2] == ["claim", "Running"]  # steps in start order, no DAG node
    assert "restored_peak_jy=5.29" in out[2] and "8/8" in out[2]
    assert f"report=s3:{REPORT_KEY}" in out[3]
    assert main(["logs", RUN]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{RUN}-claim-1: INFO:claimed",
        f"{RUN}-image-2: INFO:peak 5.29",
    ]
    _, path, query = ArgoServer.requests[-1]
    assert path.endswith("/log") and query == {"logOptions.container": ["main"]}


def test_a_wrong_token_is_refused_and_not_printed(server, params_file, monkeypatch, capsys):
    monkeypatch.delenv("ARGO_TOKEN_FILE")
    monkeypatch.setenv("ARGO_TOKEN", "wrong-token")
    assert main(["submit", str(params_file)]) != 0
    out = capsys.readouterr()
    assert "wrong-token" not in out.out + out.err


def test_a_cluster_run_needs_its_processing_block_and_database(tmp_path, capsys) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"nfreqwin": 2}))  # no pb_id: no shared placeholder block
    assert main(["submit", str(path), "--dry-run"]) == 2
    assert "pb_id: required to run on a cluster" in capsys.readouterr().err
    pb = ["-p", "pb_id=pb-x-20260101-00001"]
    # no config_db: the pods would look for etcd on their own 127.0.0.1
    assert main(["submit", str(path), "--dry-run", *pb]) == 2
    assert "config_db: required to run on a cluster" in capsys.readouterr().err
    assert main(["submit", str(path), "--dry-run", *pb, "-p", f"config_db={tmp_path}"]) == 2
    assert "must be etcd://HOST:PORT (not the embedded file store)" in capsys.readouterr().err
    for loopback in ("etcd://127.0.0.1:2379", "etcd://localhost:2379", "etcd://[::1]:2379"):
        assert main(["submit", str(path), "--dry-run", *pb, "-p", f"config_db={loopback}"]) == 2
        assert "a loopback address is each pod's own" in capsys.readouterr().err
    assert main(["submit", str(path), "--dry-run", *pb, "-p", f"config_db={CONFIG_DB}"]) == 0


def test_a_cluster_run_refuses_another_blocks_buffers(capsys) -> None:
    """The example names the buffers of its own block: run for another, it must not write
    into them."""
    other = ["-p", "pb_id=pb-mvp01-20200523-00009", "-p", f"config_db={CONFIG_DB}"]
    assert main(["submit", str(EXAMPLE), "--dry-run", *other]) == 2
    err = capsys.readouterr().err
    assert "buffer_vis = 'buff-pb-mvp01-20200523-00001-vis': the buffer of processing " in err
    assert "give -p buffer_vis=buff-pb-mvp01-20200523-00009-vis" in err
    own = ["-p", "buffer_vis=buff-pb-mvp01-20200523-00009-vis"]
    own += ["-p", "buffer_img=buff-pb-mvp01-20200523-00009-img"]
    assert main(["submit", str(EXAMPLE), "--dry-run", *other, *own]) == 0
    mine = ["-p", "pb_id=pb-mvp01-20200523-00001", "-p", f"config_db={CONFIG_DB}"]
    assert main(["submit", str(EXAMPLE), "--dry-run", *mine]) == 0
    named = ["-p", "buffer_vis=buff-survey-vis", "-p", "buffer_img=buff-survey-img"]
    assert main(["submit", str(EXAMPLE), "--dry-run", *other, *named]) == 0  # no block's


def test_configuration_errors(monkeypatch) -> None:
    monkeypatch.setenv("ARGO_SERVER", "https://argo:2746")
    with pytest.raises(argo.ArgoConfigError, match="no scheme"):
        argo.service()
    monkeypatch.setenv("ARGO_SERVER", "argo:2746")
    monkeypatch.setenv("ARGO_TOKEN", "a")
    monkeypatch.setenv("ARGO_TOKEN_FILE", "/nonexistent")
    with pytest.raises(argo.ArgoConfigError, match="not both"):
        argo.service()
    monkeypatch.delenv("ARGO_TOKEN_FILE")
    monkeypatch.setenv("ARGO_INSECURE_SKIP_VERIFY", "true")
    svc = argo.service()
    assert svc.host == "https://argo:2746/" and svc.verify_ssl is False
    assert svc.token == "Bearer a"


def test_an_unreachable_server_is_named(monkeypatch, caplog) -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("ARGO_SERVER", f"127.0.0.1:{port}")
    monkeypatch.setenv("ARGO_SECURE", "false")
    assert main(["status", "batch-imaging-x"]) == 1
    assert f"cannot reach the Argo server at 127.0.0.1:{port}" in caplog.text
    monkeypatch.delenv("ARGO_SERVER")
    assert main(["logs", "batch-imaging-x"]) == 1
    assert "(ARGO_SERVER is not set: set it to host:port)" in caplog.text
