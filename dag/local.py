"""The local engine: runs a rendered Argo workflow on this machine with Argo's semantics.

It reads the manifest (not a copy of the step list): the entrypoint DAG's tasks run in
dependency order (independent tasks concurrently), ``{{...}}`` parameter expressions are
substituted, each container template's command runs as a subprocess (``batch-imaging`` is
this installation's console script), ``/buffer/<name>`` volume mounts map to
``<buffer root>/<name>``, output parameters are read from their ``valueFrom.path`` files, failed
tasks are retried as their ``retryStrategy`` says, and the ``onExit`` handler runs last with
``{{workflow.status}}`` set.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dag.workflow import OUTPUTS_DIR
from steps.buffers import BUFFER_ROOT_ENV
from steps.log import LOG

EXPRESSION = re.compile(r"{{\s*([A-Za-z0-9_.\-]+)\s*}}")
BUFFER_MOUNT = re.compile(r"^/buffer/[^/]+$")


class WorkflowError(RuntimeError):
    """The manifest uses something this engine cannot honour faithfully."""


@dataclass
class Node:
    """One task's (or the exit handler's) execution record."""

    name: str
    phase: str = "Pending"
    started: float = 0.0
    finished: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)
    message: str = ""

    @property
    def duration(self) -> float:
        return self.finished - self.started


@dataclass
class Run:
    """The result of running a workflow locally."""

    name: str
    phase: str
    nodes: dict[str, Node]


def _depends(task: dict[str, Any]) -> list[str]:
    """Task names a task waits for (``depends: "a && b.Succeeded"`` or ``dependencies``)."""
    if "dependencies" in task:
        return list(task["dependencies"])
    text = task.get("depends", "")
    if not text:
        return []
    names = []
    for term in text.split("&&"):
        term = term.strip()
        if not re.fullmatch(r"[A-Za-z0-9\-]+(\.Succeeded)?", term):
            raise WorkflowError(f"unsupported depends expression {text!r}")
        names.append(term.removesuffix(".Succeeded"))
    return names


class LocalEngine:
    """Execute one Workflow or WorkflowTemplate manifest with given parameters."""

    def __init__(
        self, manifest: dict[str, Any], buffer_root: Path, env: dict[str, str] | None = None
    ):
        self.spec = manifest["spec"]
        self.templates = {t["name"]: t for t in self.spec["templates"]}
        self.buffer_root = Path(buffer_root).resolve()
        self.env = env or {}

    def run(self, parameters: dict[str, str], name: str | None = None) -> Run:
        """Run the entrypoint DAG then the exit handler; return the phases."""
        declared = {
            p["name"]: p.get("value", "")
            for p in self.spec.get("arguments", {}).get("parameters", [])
        }
        unknown = set(parameters) - set(declared)
        if unknown:
            raise WorkflowError(f"unknown workflow parameter(s): {', '.join(sorted(unknown))}")
        scope = {f"workflow.parameters.{k}": str(v) for k, v in {**declared, **parameters}.items()}
        scope["workflow.name"] = name or f"batch-imaging-{uuid.uuid4().hex[:5]}"
        nodes = self._run_dag(self.templates[self.spec["entrypoint"]], scope)
        phase = "Succeeded" if all(n.phase == "Succeeded" for n in nodes.values()) else "Failed"
        if "onExit" in self.spec:
            handler = Node(name=self.spec["onExit"])
            self._execute(
                handler, self.templates[handler.name], {**scope, "workflow.status": phase}
            )
            nodes[f"{handler.name} (onExit)"] = handler
        return Run(name=scope["workflow.name"], phase=phase, nodes=nodes)

    def _run_dag(self, template: dict[str, Any], scope: dict[str, str]) -> dict[str, Node]:
        if "dag" not in template:
            raise WorkflowError(f"entrypoint {template['name']!r} is not a DAG template")
        tasks = {t["name"]: t for t in template["dag"]["tasks"]}
        waits = {name: _depends(task) for name, task in tasks.items()}
        nodes = {name: Node(name=name) for name in tasks}
        running: dict[str, tuple[subprocess.Popen, Path, int]] = {}
        daemons: dict[str, tuple[subprocess.Popen, Path]] = {}
        try:
            while True:
                for name, task in tasks.items():
                    if nodes[name].phase == "Pending":
                        upstream = [nodes[d].phase for d in waits[name]]
                        if any(p in ("Failed", "Omitted", "Error") for p in upstream):
                            nodes[name].phase = "Omitted"
                        elif all(p == "Succeeded" for p in upstream):
                            nodes[name].phase, nodes[name].started = "Running", time.time()
                            running[name] = (*self._start_task(task, scope, nodes), 0)
                if not running:
                    return nodes
                time.sleep(0.05)
                for name, (process, outputs, attempt) in list(running.items()):
                    template_ = self.templates[tasks[name]["template"]]
                    code = process.poll()
                    if template_.get("daemon") and code is None:
                        if self._ready(template_, outputs):  # a ready daemon lets the DAG go on
                            del running[name]
                            daemons[name] = (process, outputs)
                            nodes[name].phase, nodes[name].finished = "Succeeded", time.time()
                            LOG.info("Step %s ready (daemon)", name)
                        continue
                    if code is None:
                        continue
                    del running[name]
                    if code != 0 and attempt < self._retries(template_):
                        LOG.warning("Step %s failed (exit %d); retrying", name, code)
                        time.sleep(self._backoff(template_, attempt))
                        running[name] = (*self._start_task(tasks[name], scope, nodes), attempt + 1)
                        continue
                    self._finish(nodes[name], template_, code, outputs)
        finally:
            for process, _ in daemons.values():  # the DAG is done: stop its daemons
                process.terminate()
                process.wait()

    def _start_task(
        self, task: dict[str, Any], scope: dict[str, str], nodes: dict[str, Node]
    ) -> tuple[subprocess.Popen, Path]:
        task_scope = {**scope, **self._task_outputs(nodes)}
        return self._start(task["template"], task_scope, self._arguments(task, task_scope))

    def _ready(self, template: dict[str, Any], outputs: Path) -> bool:
        """Run the readiness probe's exec command (pod paths of outputs mapped to local)."""
        probe = template.get("container", {}).get("readinessProbe", {}).get("exec")
        if probe is None:
            return True  # Argo treats a daemon without a probe as ready once started
        command = [_local_path(part, outputs) for part in probe["command"]]
        return subprocess.run(command, check=False).returncode == 0

    def _execute(self, node: Node, template: dict[str, Any], scope: dict[str, str]) -> None:
        node.started = time.time()
        process, outputs = self._start(template["name"], scope, {})
        process.wait()
        self._finish(node, template, process.returncode, outputs)

    def _finish(self, node: Node, template: dict[str, Any], code: int, outputs: Path) -> None:
        node.finished = time.time()
        node.phase = "Succeeded" if code == 0 else "Failed"
        node.message = "" if code == 0 else f"exit code {code}"
        for parameter in template.get("outputs", {}).get("parameters", []):
            source = parameter["valueFrom"]
            path = Path(_local_path(source["path"], outputs))
            node.outputs[parameter["name"]] = (
                path.read_text().strip() if path.is_file() else source.get("default", "")
            )
        LOG.info("Step %s %s in %.1f s", node.name, node.phase, node.duration)

    @staticmethod
    def _task_outputs(nodes: dict[str, Node]) -> dict[str, str]:
        return {
            f"tasks.{node.name}.outputs.parameters.{key}": value
            for node in nodes.values()
            for key, value in node.outputs.items()
        }

    def _arguments(self, task: dict[str, Any], scope: dict[str, str]) -> dict[str, str]:
        return {
            p["name"]: substitute(p.get("value", ""), scope)
            for p in task.get("arguments", {}).get("parameters", [])
        }

    @staticmethod
    def _retries(template: dict[str, Any]) -> int:
        return int(template.get("retryStrategy", {}).get("limit", 0))

    @staticmethod
    def _backoff(template: dict[str, Any], attempt: int) -> float:
        backoff = template.get("retryStrategy", {}).get("backoff", {})
        duration = float(str(backoff.get("duration", "0")).removesuffix("s") or 0)
        return duration * float(backoff.get("factor", 1)) ** attempt

    def _start(
        self, template_name: str, scope: dict[str, str], inputs: dict[str, str]
    ) -> tuple[subprocess.Popen, Path]:
        template = self.templates[template_name]
        if "container" not in template:
            raise WorkflowError(f"template {template_name!r} is not a container template")
        declared = {
            p["name"]: p.get("value", "") for p in template.get("inputs", {}).get("parameters", [])
        }
        scope = {
            **scope,
            **{f"inputs.parameters.{k}": v for k, v in {**declared, **inputs}.items()},
        }
        container = template["container"]
        for mount in container.get("volumeMounts", []):
            path = substitute(mount["mountPath"], scope)
            if not BUFFER_MOUNT.match(path):
                raise WorkflowError(f"volume mount {path!r} is not a /buffer/<name> mount")
        command = [
            substitute(part, scope) for part in container["command"] + container.get("args", [])
        ]
        if command[0] == "batch-imaging":
            command = [sys.executable, "-m", "dag", *command[1:]]
        outputs = Path(tempfile.mkdtemp(prefix=f"{template_name}-outputs-"))
        env = {
            **os.environ,
            **self.env,
            **{e["name"]: substitute(e.get("value", ""), scope) for e in container.get("env", [])},
            BUFFER_ROOT_ENV: str(self.buffer_root),
            "BATCH_IMAGING_OUTPUTS": str(outputs),
            "ARGO_PROGRESS_FILE": str(outputs / "progress"),
        }
        return subprocess.Popen(command, env=env), outputs


def _local_path(text: str, outputs: Path) -> str:
    """Map a path under the pod's outputs directory to this step's local one."""
    if text.startswith(OUTPUTS_DIR + "/"):
        return str(outputs / text.removeprefix(OUTPUTS_DIR + "/"))
    return text


def substitute(text: str, scope: dict[str, str]) -> str:
    """Replace Argo ``{{name}}`` expressions; an unknown name is an error, as in Argo."""

    def value(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in scope:
            raise WorkflowError(f"unresolved expression {{{{{key}}}}}")
        return scope[key]

    return EXPRESSION.sub(value, text)
