"""The local engine: runs a rendered Argo workflow on this machine with Argo's semantics.

It reads the manifest (not a copy of the step list) and honours, as Argo does:

- DAG tasks in ``depends``/``dependencies`` order (independent tasks concurrently): a task
  starts once every task its ``depends`` names is done or daemoned, if the expression holds
  (``dag.expression``'s subset of expr-lang over ``<task>.Succeeded|Failed|Errored|Skipped|
  Omitted|Daemoned``, a bare ``<task>`` being ``Succeeded || Skipped || Daemoned``), and is
  Omitted if not; ``when`` (``A == B``, ``A != B``), ``failFast`` (by default, once a task
  failed and none runs, no task starts: Argo's controller, which still starts tasks while one
  runs), and the task phases Succeeded, Failed, Error, Skipped, Omitted;
- ``{{...}}`` substitution of workflow (name, uid, namespace, parameters), input and task
  output parameters (unknown: an error);
- container templates as subprocesses, each in its own process group as a container has its
  own PID namespace (``batch-imaging`` is this installation's console script; a terminal's
  Ctrl-C reaches the engine, not the steps; what a step started ends with it),
  ``/buffer/<name>`` mounts of PVC volumes as ``<buffer root>/<name>`` (a PVC that
  does not exist is an Error, as the pod could never start), emptyDir mounts, env values and
  ``resourceFieldRef`` env from the container's resources, output parameters from their
  ``valueFrom.path`` files, ``$ARGO_PROGRESS_FILE``, daemons with their readiness probe (a
  ready daemon's node is Running and daemoned until its DAG ends, then Succeeded), exit codes
  as a container's (a process killed by signal N exits 128 + N);
- resource templates for ``PersistentVolumeClaim`` (a directory under the buffer root;
  ``apply`` is idempotent, ``create`` fails if it exists, ``delete`` removes it);
- ``retryStrategy`` (limit, retryPolicy, ``expression`` over ``lastRetry.exitCode|status|
  duration|message`` with the ``dag.expression`` subset, backoff duration/factor/cap, and
  maxDuration, which also ends a retry attempt running past it; a step not retried or whose
  retries are spent ends with Argo's retry-node message: ``No more retries left``, ``Max
  duration limit exceeded``, ``Backoff would exceed max duration limit`` or
  ``retryStrategy.expression evaluated to false``), template ``activeDeadlineSeconds`` and
  ``timeout`` (a local pod starts at once, so both count from the attempt's start; Argo makes
  what is left of the timeout the pod's deadline) and workflow ``activeDeadlineSeconds`` (a
  pod past its deadline gets SIGTERM, and SIGKILL after the 30 s grace period, as from the
  kubelet; a workflow stopped or past its deadline is Failed),
  workflow-level ``synchronization.mutexes`` (a file
  lock under the buffer root, waited for), ``onExit`` (a container or a DAG) with
  ``{{workflow.status}}``;
- output artifacts (``path`` on a buffer or under the outputs directory, ``optional``,
  ``archive`` none or tar) saved to the artifact repository given to the engine, under Argo's
  default key ``<workflow>/<pod>/<file>`` (``<name>.tgz`` when archived); with no repository
  the step ends in Error with Argo's message, as a cluster without one does.

Fields that only the cluster can act on (pod security, scheduling, GC and TTL, labels, the
service account) are accepted and ignored; anything else is refused with WorkflowError,
never silently mis-run.  Known differences: a ready daemon that dies fails the whole DAG
(Argo fails its node only; this workflow's daemon holds the block's claim, without which
nothing may go on), a daemon's own deadline is not enforced, and no pod waits in Pending, so
a ``timeout`` never fails one with Argo's ``timeout``.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dag.expression import Expression, ExpressionError, evaluate, parse
from dag.workflow import OUTPUTS_DIR
from steps.buffers import BUFFER_ROOT_ENV
from steps.log import LOG
from steps.params import RFC1123_LABEL, quantity
from steps.processes import ENGINE_PID_ENV, cores, process_alive

EXPRESSION = re.compile(r"{{\s*([A-Za-z0-9_.\-]+)\s*}}")
BUFFER_MOUNT = re.compile(r"^/buffer/([^/]+)$")
DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
NUMBER = re.compile(r"-?(\d+\.?\d*|\.\d+)")  # govaluate reads digits and a point
MUTEX_POLL_S = 0.2
ENGINE_SCRATCH = re.compile(r"engine-(\d+)-\w+")  # a run's scratch: engine-<pid>-<random>
FINAL = {"Succeeded", "Failed", "Error", "Skipped", "Omitted"}
FAIL_FAST = "not scheduled: a task of the DAG failed (failFast)"
OMITTED = "omitted: depends condition not met"  # Argo's message
DEPENDS_RESULTS = {"Succeeded", "Failed", "Errored", "Skipped", "Omitted", "Daemoned"}
LAST_RETRY = {f"lastRetry.{name}" for name in ("exitCode", "status", "duration", "message")}
DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"
STOPPED = "Stopped with strategy 'Stop'"  # Argo's message of `argo stop`
GRACE_S = 30.0  # a pod's terminationGracePeriodSeconds (Kubernetes' default)
NO_ARTIFACT_REPOSITORY = (
    "Error (exit code 64): You need to configure artifact storage. More information on how "
    "to do this can be found in the docs: "
    "https://argo-workflows.readthedocs.io/en/latest/configure-artifact-repository/"
)

# What the engine acts on, and what only a cluster acts on (accepted, ignored).
SPEC_KEYS = {"entrypoint", "templates", "arguments", "onExit", "volumes", "synchronization"}
SPEC_KEYS |= {"activeDeadlineSeconds"}
CLUSTER_SPEC_KEYS = {
    "serviceAccountName", "podGC", "ttlStrategy", "workflowMetadata", "securityContext",
    "podMetadata", "volumeClaimGC", "nodeSelector", "tolerations", "affinity", "priority",
}  # fmt: skip
TEMPLATE_KEYS = {"name", "container", "resource", "dag", "inputs", "outputs", "retryStrategy"}
TEMPLATE_KEYS |= {"activeDeadlineSeconds", "timeout", "daemon"}
CLUSTER_TEMPLATE_KEYS = {"metadata", "nodeSelector", "tolerations", "affinity"}
DAG_KEYS = {"tasks", "failFast"}
DEPENDENCY_KEYS = {"depends", "dependencies"}
TASK_KEYS = {"name", "template", "when", "arguments"} | DEPENDENCY_KEYS
CONTAINER_KEYS = {"name", "image", "command", "args", "env", "volumeMounts", "resources"}
CONTAINER_KEYS |= {"readinessProbe", "securityContext", "imagePullPolicy", "workingDir"}


class WorkflowError(RuntimeError):
    """The manifest uses something this engine cannot honour faithfully."""


class PodError(RuntimeError):
    """The pod could not start (an Argo node Error, not a Failure)."""


@dataclass
class Node:
    """One task's (or the exit handler's) execution record."""

    name: str
    phase: str = "Pending"
    started: float = 0.0
    finished: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)
    message: str = ""
    progress: str = ""
    retries: int = 0
    artifacts: dict[str, Path] = field(default_factory=dict)  # name -> saved file
    attempt_started: float = 0.0  # the last attempt's start (``started``: the first's)
    exit_code: int | None = None  # the last attempt's main container's, if it had one
    daemoned: bool = False  # a ready daemon, Running until its DAG ends

    @property
    def duration(self) -> float:
        return self.finished - self.started if self.finished else 0.0


@dataclass
class Run:
    """The result of running a workflow locally."""

    name: str
    phase: str
    nodes: dict[str, Node]


@dataclass
class _Pod:
    """A running container template (one attempt of a task)."""

    name: str
    process: subprocess.Popen
    outputs: Path
    template: dict[str, Any]
    deadline: float | None
    scope: dict[str, str]
    kill_at: float | None = None  # SIGTERM sent (past its deadline, or stopped): SIGKILL due


@dataclass(frozen=True)
class _Depends:
    """A task's ``depends`` (None: none) and the tasks it waits for."""

    expression: Expression | None
    tasks: frozenset[str]


def _depends(task: dict[str, Any], names: Iterable[str]) -> _Depends:
    """A task's ``depends: "a && b.Succeeded"`` (``dependencies: [a, b]`` reads as ``a &&
    b``), with ``-`` in task names read as ``_``, as Argo evaluates it."""
    listed = task.get("dependencies")
    text = " && ".join(listed) if listed is not None else task.get("depends", "")
    if not text.strip():
        return _Depends(None, frozenset())
    field = f"task {task['name']}: depends"
    with _refused(field):
        expression = parse(text.replace("-", "_"))
    tasks = {name.replace("-", "_"): name for name in names}
    waits = set()
    for name in expression.names:
        key, _, result = name.partition(".")
        if key not in tasks or result not in DEPENDS_RESULTS | {""}:
            raise WorkflowError(f"{field}: {name!r} is not <task> or <task>.<result>")
        waits.add(tasks[key])
    return _Depends(expression, frozenset(waits))


def _done(node: Node) -> bool:
    """Argo's "fulfilled": ended, or a ready daemon."""
    return node.phase in FINAL or node.daemoned


def _results(name: str, node: Node) -> dict[str, bool]:
    """What ``depends`` reads of a done task: ``<task>.<result>``, and ``<task>`` for
    ``Succeeded || Skipped || Daemoned`` (Argo's expansion of a bare name)."""
    key = name.replace("-", "_")
    results = {
        "Succeeded": node.phase == "Succeeded",
        "Failed": node.phase == "Failed",
        "Errored": node.phase == "Error",
        "Skipped": node.phase == "Skipped",
        "Omitted": node.phase == "Omitted",
        "Daemoned": node.daemoned,
    }
    bare = results["Succeeded"] or results["Skipped"] or results["Daemoned"]
    return {key: bare, **{f"{key}.{result}": value for result, value in results.items()}}


def _last_retry(node: Node) -> dict[str, str]:
    """The ``lastRetry`` variables of a retry expression, strings as Argo gives them (the
    exit code -1 when the attempt had none, the duration in seconds)."""
    duration = str(node.finished - node.attempt_started).removesuffix(".0")  # Go's %v
    return {  # the LAST_RETRY names
        "lastRetry.exitCode": str(-1 if node.exit_code is None else node.exit_code),
        "lastRetry.status": node.phase,
        "lastRetry.duration": duration,
        "lastRetry.message": node.message,
    }


def _check_retry_expression(template: dict[str, Any]) -> None:
    """Refuse, before anything runs, a retry expression the engine could not evaluate when
    a step fails (one with ``{{...}}`` is checked then, once substituted)."""
    text = template.get("retryStrategy", {}).get("expression")
    if text is None or "{{" in text:
        return
    field = f"template {template['name']}: retryStrategy.expression"
    with _refused(field):
        names = parse(text).names
    if unknown := sorted(names - LAST_RETRY):
        raise WorkflowError(f"{field}: unknown name(s) {', '.join(unknown)} (known: lastRetry.*)")


@contextlib.contextmanager
def _refused(field: str) -> Iterator[None]:
    """An expression outside ``dag.expression``'s subset: a WorkflowError naming its field."""
    try:
        yield
    except ExpressionError as exc:
        raise WorkflowError(f"{field}: {exc}") from None


def _when(text: str) -> bool:
    """Evaluate a substituted ``when`` of the form ``A == B`` or ``A != B`` as Argo's
    govaluate does: numbers compare as numbers (``1.0 == 1``), ``true``/``false`` as
    booleans, quoted text as text, and operands of different kinds are unequal."""
    match = re.fullmatch(r"\s*(\S+)\s*(==|!=)\s*(\S+)\s*", text)
    if match is None:
        raise WorkflowError(f"unsupported when expression {text!r} (A == B or A != B)")
    left, op, right = match.groups()
    return (_operand(left) == _operand(right)) == (op == "==")


def _operand(word: str) -> tuple[str, float | bool | str]:
    """A ``when`` operand with its kind: a number, a boolean, or text (quoted or bare)."""
    if word[:1] in "'\"" and word[-1:] == word[:1] and len(word) > 1:
        return "text", word[1:-1]
    if NUMBER.fullmatch(word):
        return "number", float(word)
    if word in ("true", "false"):
        return "boolean", word == "true"
    return "text", word


def seconds(text: str | int | float) -> float:
    """A Go duration (``30s``, ``1h30m``) or a number of seconds."""
    text = str(text).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = DURATION.findall(text)
    if not parts or "".join(a + u for a, u in parts) != text:
        raise WorkflowError(f"invalid duration {text!r}")
    unit = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3}
    return sum(float(amount) * unit[u] for amount, u in parts)


def _integer(field: str, value: Any, scope: dict[str, str]) -> int | None:
    """An int-or-string field of the workflow (a retry limit, a backoff factor) after
    substitution, None when absent, or WorkflowError naming it (Argo's ``intstr.Int32``)."""
    if value is None:
        return None
    text = substitute(str(value), scope).strip()
    if not re.fullmatch(r"[+-]?\d+", text):
        raise WorkflowError(f"{field}: {text!r} is not an integer")
    return int(text)


def _check_keys(what: str, document: dict[str, Any], known: set[str]) -> None:
    unknown = set(document) - known
    if unknown:
        raise WorkflowError(f"{what}: unsupported field(s) {', '.join(sorted(unknown))}")


def _transient(message: str) -> bool:
    """Argo's OnTransientError for a local node: the controller's TRANSIENT_ERROR_PATTERN."""
    pattern = os.environ.get("TRANSIENT_ERROR_PATTERN")
    return bool(pattern) and re.search(pattern, message) is not None


class LocalEngine:
    """Execute one Workflow or WorkflowTemplate manifest with given parameters."""

    def __init__(
        self,
        manifest: dict[str, Any],
        buffer_root: Path,
        env: dict[str, str] | None = None,
        artifact_repository: Path | None = None,
    ):
        self.spec = manifest["spec"]
        _check_keys("spec", self.spec, SPEC_KEYS | CLUSTER_SPEC_KEYS)
        self.templates = {t["name"]: t for t in self.spec["templates"]}
        for template in self.templates.values():
            _check_keys(
                f"template {template['name']}", template, TEMPLATE_KEYS | CLUSTER_TEMPLATE_KEYS
            )
            if "container" in template:
                _check_keys(
                    f"container of {template['name']}", template["container"], CONTAINER_KEYS
                )
            _check_retry_expression(template)
            if re.fullmatch(r"[\d.]+", str(template.get("timeout", "s"))):  # as Go parses it
                raise WorkflowError(f"templates.{template['name']}.timeout: no unit")
            if "dag" in template:
                _check_keys(f"dag of {template['name']}", template["dag"], DAG_KEYS)
                if "timeout" in template:  # as Argo's validation
                    raise WorkflowError(f"templates.{template['name']}: a DAG has no timeout")
                for task in template["dag"]["tasks"]:
                    _check_keys(f"task {task.get('name')}", task, TASK_KEYS)
                kinds = {k for task in template["dag"]["tasks"] for k in task} & DEPENDENCY_KEYS
                if kinds == DEPENDENCY_KEYS:  # Argo's validation refuses the mix
                    raise WorkflowError(
                        f"templates.{template['name']} cannot use both 'depends' and "
                        "'dependencies' in the same DAG template"
                    )
        self.volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        self.buffer_root = Path(buffer_root).resolve()
        self.env = env or {}
        self.artifact_repository = artifact_repository
        self._scratch_dir: Path | None = None  # the running run's pod outputs

    def run(
        self, parameters: dict[str, str], name: str | None = None, uid: str | None = None
    ) -> Run:
        """Run the entrypoint DAG then the exit handler; return the phases."""
        declared = {
            p["name"]: p.get("value") for p in self.spec.get("arguments", {}).get("parameters", [])
        }
        unknown = set(parameters) - set(declared)
        if unknown:
            raise WorkflowError(f"unknown workflow parameter(s): {', '.join(sorted(unknown))}")
        missing = [k for k, v in declared.items() if v is None and k not in parameters]
        if missing:  # Argo's message for a parameter without a value
            raise WorkflowError(f"spec.arguments.{missing[0]}.value is required")
        scope = {f"workflow.parameters.{k}": str(v) for k, v in {**declared, **parameters}.items()}
        scope["workflow.name"] = name or f"batch-imaging-{uuid.uuid4().hex[:5]}"
        scope["workflow.uid"] = uid or str(uuid.uuid4())  # one run's, as a Workflow's uid
        scope["workflow.namespace"] = "local"
        self.buffer_root.mkdir(parents=True, exist_ok=True)
        with self._stop_on_signals(), self._mutexes(scope), _scratch(self.buffer_root) as scratch:
            self._scratch_dir = scratch
            limit = self.spec.get("activeDeadlineSeconds")
            deadline = time.time() + float(limit) if limit is not None else None
            nodes, early = self._run_dag(self.templates[self.spec["entrypoint"]], scope, deadline)
            phase = _phase(nodes.values(), early)
            self._exiting = "onExit" in self.spec  # no stop stops the exit handler, which
            self._stopping = False  # still runs, as after `argo stop`
            if "onExit" in self.spec:
                exit_scope = {**scope, "workflow.status": phase}
                handler = self.templates[self.spec["onExit"]]
                if "dag" not in handler:  # a single template: a DAG of one task
                    task = {"name": handler["name"], "template": handler["name"]}
                    handler = {"name": "onExit", "dag": {"tasks": [task]}}
                exits, early = self._run_dag(handler, exit_scope, None)
                nodes.update({f"{key} (onExit)": node for key, node in exits.items()})
                if phase == "Succeeded":  # a failed exit handler fails the workflow
                    phase = _phase(exits.values(), early)
        return Run(name=scope["workflow.name"], phase=phase, nodes=nodes)

    @contextlib.contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM stop the run as ``argo stop`` does: running steps are terminated,
        the rest omitted, and the exit handler runs with the workflow Failed, to its end (a
        stop does not stop Argo's exit handler nodes: they record how the run ended)."""
        self._stopping = self._exiting = False
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def stop(signum: int, _frame: object) -> None:
            if self._exiting:
                LOG.warning(
                    "Ignoring %s: the exit handler records how the run ended (SIGKILL ends it "
                    "without that)",
                    signal.Signals(signum).name,
                )
                return
            LOG.warning("Stopping the workflow (%s)", signal.Signals(signum).name)
            self._stopping = True

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @contextlib.contextmanager
    def _mutexes(self, scope: dict[str, str]) -> Iterator[None]:
        """Hold the workflow's mutexes, all of them or none while waiting (as a Pending
        workflow does), so that two runs each holding one of the other's never deadlock; a
        stop while waiting ends the run."""
        sync = self.spec.get("synchronization", {})
        _check_keys("synchronization", sync, {"mutexes"})
        locks = self.buffer_root / ".locks"
        keys = sorted(
            {
                (
                    mutex.get("namespace", scope["workflow.namespace"]),
                    substitute(mutex["name"], scope),
                )
                for mutex in sync.get("mutexes", [])
            }
        )
        waited: set[str] = set()
        while True:
            with contextlib.ExitStack() as stack:
                busy = None
                for namespace, key in keys:
                    locks.mkdir(exist_ok=True)
                    handle = stack.enter_context((locks / f"{namespace}.{key}.lock").open("w"))
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        busy = key
                        break
                if busy is None:
                    yield
                    return
            if self._stopping:
                raise WorkflowError(f"stopped while waiting for mutex {busy}")
            if busy not in waited:
                LOG.info("Waiting for mutex %s (held by another run)", busy)
                waited.add(busy)
            time.sleep(MUTEX_POLL_S * random.uniform(0.5, 1.5))  # nosec B311 - jitter only

    def _run_dag(
        self, template: dict[str, Any], scope: dict[str, str], deadline: float | None
    ) -> tuple[dict[str, Node], str | None]:
        """Run a DAG template; return its nodes and why it ended early (None if it ran to
        its end)."""
        if "dag" not in template:
            raise WorkflowError(f"template {template['name']!r} is not a DAG template")
        tasks = {t["name"]: t for t in template["dag"]["tasks"]}
        fail_fast = template["dag"].get("failFast", True) is not False
        self._ended: list[str] = []  # attempts that ended as they started (resource, PodError)
        waits = {name: _depends(task, tasks) for name, task in tasks.items()}
        nodes = {name: Node(name=name) for name in tasks}
        pods: dict[str, _Pod] = {}
        retry_at: dict[str, float] = {}
        daemons: list[_Pod] = []
        try:
            while True:
                if deadline is not None and time.time() > deadline:
                    why = "Step exceeded its deadline"
                    self._expire(why, nodes, pods, retry_at)
                    return nodes, why
                dead = [pod for pod in daemons if pod.process.poll() is not None]
                if self._stopping or dead:
                    for pod in dead:  # a daemon that dies (e.g. lost its claim) fails the DAG
                        node = next(n for n in nodes.values() if n.name == pod.name)
                        node.phase, node.daemoned, node.finished = "Failed", False, time.time()
                        node.message = f"daemon exited (code {pod.process.returncode})"
                        LOG.error("Step %s: %s", node.name, node.message)
                    why = STOPPED if self._stopping else "a daemon step failed"
                    self._expire(why, nodes, pods, retry_at)
                    return nodes, why
                failed = any(node.phase in ("Failed", "Error") for node in nodes.values())
                # Argo's controller: a failFast DAG with a failed task and nothing running
                # has failed, and starts nothing more (while a task runs, it still does)
                halted = fail_fast and failed and not pods and not retry_at
                for name, task in tasks.items():
                    if nodes[name].phase != "Pending":
                        continue
                    if halted:
                        nodes[name].phase, nodes[name].message = "Omitted", FAIL_FAST
                    else:
                        self._schedule(name, task, waits[name], scope, nodes, pods)
                for name, when in list(retry_at.items()):
                    if time.time() >= when:
                        del retry_at[name]
                        self._launch(name, tasks[name], scope, nodes, pods)
                for name, pod in list(pods.items()):
                    if self._poll(name, pod, nodes, daemons):
                        del pods[name]
                        self._completed(name, pod.template, nodes, retry_at, scope, tasks, pods)
                while self._ended:  # retried as a pod's attempt is (a retry may end at once)
                    name = self._ended.pop(0)
                    template = self.templates[tasks[name]["template"]]
                    self._completed(name, template, nodes, retry_at, scope, tasks, pods)
                if all(_done(node) for node in nodes.values()) and not pods:
                    return nodes, None
                time.sleep(0.05)
        finally:
            _terminate([*daemons, *pods.values()])  # the DAG is done: stop its daemons
            for node in nodes.values():
                if node.daemoned:  # as Argo's killDaemonedChildren
                    node.phase, node.daemoned, node.finished = "Succeeded", False, time.time()

    def _schedule(
        self,
        name: str,
        task: dict[str, Any],
        depends: _Depends,
        scope: dict[str, str],
        nodes: dict[str, Node],
        pods: dict[str, _Pod],
    ) -> None:
        """Once every task its ``depends`` names is done: start the task if that holds (and
        its ``when``), else omit it, as Argo does."""
        if not all(_done(nodes[task]) for task in depends.tasks):
            return
        if depends.expression is not None:
            results = {k: v for t in depends.tasks for k, v in _results(t, nodes[t]).items()}
            with _refused(f"task {name}: depends"):
                holds = depends.expression.evaluate(results)
            if not holds:
                nodes[name].phase, nodes[name].message = "Omitted", OMITTED
                return
        task_scope = {**scope, **self._task_outputs(nodes)}
        if "when" in task and not _when(substitute(task["when"], task_scope)):
            nodes[name].phase = "Skipped"
            LOG.info("Step %s skipped (when %s)", name, task["when"])
            return
        nodes[name].started = time.time()
        self._launch(name, task, scope, nodes, pods)

    def _launch(
        self,
        name: str,
        task: dict[str, Any],
        scope: dict[str, str],
        nodes: dict[str, Node],
        pods: dict[str, _Pod],
    ) -> None:
        """Start one attempt: a subprocess for a container, at once for a resource."""
        node = nodes[name]
        node.phase, node.attempt_started, node.exit_code = "Running", time.time(), None
        task_scope = {**scope, **self._task_outputs(nodes)}
        template = self.templates[task["template"]]
        inputs = self._inputs(template, self._arguments(task, task_scope))
        local = {**task_scope, **{f"inputs.parameters.{k}": v for k, v in inputs.items()}}
        if "resource" in template:
            node.phase, node.message = self._resource(template, local)
            node.finished = time.time()
            LOG.info("Step %s %s %s", name, node.phase, node.message)
            self._ended.append(name)
        elif "container" in template:
            try:
                pod = self._start(name, template, local)
            except PodError as exc:
                node.phase, node.message, node.finished = "Error", str(exc), time.time()
                self._ended.append(name)
                return
            retries_end = self._retries_end(template, node)
            if retries_end is not None:
                pod.deadline = min(retries_end, pod.deadline or retries_end)
            pods[name] = pod
        else:
            raise WorkflowError(f"template {template['name']!r}: only container and resource")

    @staticmethod
    def _retries_end(template: dict[str, Any], node: Node) -> float | None:
        """When a retry attempt must end: the first attempt's start plus the backoff's
        ``maxDuration`` (Argo makes it the retried pods' deadline); None for a first attempt."""
        limit = template.get("retryStrategy", {}).get("backoff", {}).get("maxDuration")
        return node.started + seconds(limit) if limit and node.retries else None

    def _poll(self, name: str, pod: _Pod, nodes: dict[str, Node], daemons: list[_Pod]) -> bool:
        """True when the attempt has ended (its node phase is then set)."""
        node = nodes[name]
        code = pod.process.poll()
        if pod.template.get("daemon") and code is None:
            if self._ready(pod.template, pod.outputs):  # a ready daemon lets the DAG go on
                daemons.append(pod)
                node.daemoned = True  # and stays Running until the DAG ends
                LOG.info("Step %s ready (daemon)", name)
                return True
            return False
        if code is None and pod.deadline is not None and time.time() > pod.deadline:
            self._stop_past_deadline(pod)
            return False
        if code is None:
            return False
        _kill_group(pod)  # the container has ended: so do the processes it left
        node.exit_code = 128 - code if code < 0 else code  # killed by signal N: 128 + N
        if pod.kill_at is not None:
            node.phase, node.message = "Failed", DEADLINE_MESSAGE
        else:
            node.phase = "Succeeded" if code == 0 else "Failed"
            node.message = "" if code == 0 else f"Error (exit code {node.exit_code})"
        node.finished = time.time()
        self._collect(node, pod)
        message = f" {node.message}" if node.message else ""
        LOG.info("Step %s %s in %.1f s%s", name, node.phase, node.duration, message)
        return True

    @staticmethod
    def _stop_past_deadline(pod: _Pod) -> None:
        """Stop a pod past its deadline as the kubelet does, without holding up the other
        pods: SIGTERM now, SIGKILL if it still runs after the grace period."""
        if pod.kill_at is None:
            _sigterm(pod)
        elif time.time() > pod.kill_at:
            _kill_group(pod)

    def _completed(
        self,
        name: str,
        template: dict[str, Any],
        nodes: dict[str, Node],
        retry_at: dict[str, float],
        scope: dict[str, str],
        tasks: dict[str, dict[str, Any]],
        pods: dict[str, _Pod],
    ) -> None:
        node = nodes[name]
        wait = self._retry_wait(template, node, scope)
        if wait is None:
            return
        node.retries += 1
        LOG.warning(
            "Step %s %s (%s); retry %d in %.1f s",
            name,
            node.phase,
            node.message,
            node.retries,
            wait,
        )
        node.phase = "Running"
        if wait <= 0:
            self._launch(name, tasks[name], scope, nodes, pods)
        else:
            retry_at[name] = time.time() + wait

    def _retry_wait(
        self, template: dict[str, Any], node: Node, scope: dict[str, str]
    ) -> float | None:
        """Seconds to wait before the next attempt, or None: no retry (Argo's rules, checked
        in the order of its controller's ``processNodeRetries``, with its messages)."""
        strategy = template.get("retryStrategy")
        if strategy is None or node.phase not in ("Failed", "Error"):
            return None
        _check_keys("retryStrategy", strategy, {"limit", "retryPolicy", "backoff", "expression"})
        backoff = strategy.get("backoff", {})
        _check_keys("backoff", backoff, {"duration", "factor", "cap", "maxDuration"})
        wait = 0.0
        if backoff:
            end = (
                node.started + seconds(backoff["maxDuration"]) if "maxDuration" in backoff else None
            )
            if end is not None and time.time() > end:
                node.message += "; Max duration limit exceeded"
                return None
            if "duration" not in backoff:
                raise WorkflowError("retryStrategy.backoff: no base duration specified")
            wait = seconds(backoff["duration"])
            factor = _integer("retryStrategy.backoff.factor", backoff.get("factor"), scope)
            if factor is not None and factor > 0:
                wait *= factor**node.retries
            if "cap" in backoff:
                wait = min(wait, seconds(backoff["cap"]))
            if end is not None and time.time() + wait > end:
                node.message += "; Backoff would exceed max duration limit"
                return None
        # Argo's default policy: OnFailure, or Always with an expression (which then decides)
        default = "Always" if "expression" in strategy else "OnFailure"
        policy = strategy.get("retryPolicy") or default
        retry = {
            "Always": True,
            "OnFailure": node.phase == "Failed",
            "OnError": node.phase == "Error",
            "OnTransientError": _transient(node.message),
        }.get(policy)
        if retry is None:
            raise WorkflowError(f"unknown retryPolicy {policy!r}")
        if not retry:
            return None
        limit = _integer("retryStrategy.limit", strategy.get("limit"), scope)
        if limit is not None and node.retries >= limit:
            node.message += "; No more retries left"
            return None
        if "expression" in strategy:
            with _refused("retryStrategy.expression"):
                retry = evaluate(substitute(strategy["expression"], scope), _last_retry(node))
            if not retry:
                node.message += "; retryStrategy.expression evaluated to false"
                return None
        return wait

    def _expire(
        self,
        why: str,
        nodes: dict[str, Node],
        pods: dict[str, _Pod],
        retry_at: dict[str, float],
    ) -> None:
        """End the DAG early (deadline passed, stopped, or a daemon died): fail what runs
        (a pod already past its own deadline keeps that reason), start nothing more; a pod
        that has just ended is recorded as it ended."""
        for name, pod in list(pods.items()):
            if pod.process.poll() is not None and self._poll(name, pod, nodes, []):
                del pods[name]
        past_deadline = {name for name, pod in pods.items() if pod.kill_at is not None}
        _terminate(pods.values())
        for name in pods:
            message = DEADLINE_MESSAGE if name in past_deadline else why
            nodes[name].phase, nodes[name].message = "Failed", message
            nodes[name].finished = time.time()
        pods.clear()
        for name in retry_at:
            nodes[name].phase, nodes[name].message = "Failed", why
        retry_at.clear()
        for node in nodes.values():
            if node.phase == "Pending":
                node.phase, node.message = "Omitted", why
        LOG.error("Workflow ended early: %s", why)

    def _ready(self, template: dict[str, Any], outputs: Path) -> bool:
        """Run the readiness probe's exec command (pod paths of outputs mapped to local)."""
        probe = template["container"].get("readinessProbe", {}).get("exec")
        if probe is None:
            return True  # Argo treats a daemon without a probe as ready once started
        command = [_local_path(part, outputs) for part in probe["command"]]
        return subprocess.run(command, check=False).returncode == 0

    def _collect(self, node: Node, pod: _Pod) -> None:
        """Output parameters (``valueFrom.path``, else its default; a missing file without
        one makes the node an Error, as in Argo's wait container), the progress file and the
        output artifacts."""
        template, outputs = pod.template, pod.outputs
        for parameter in template.get("outputs", {}).get("parameters", []):
            source = parameter["valueFrom"]
            path = Path(_local_path(source["path"], outputs))
            if path.is_file():
                node.outputs[parameter["name"]] = path.read_text().strip()
            elif "default" in source:
                node.outputs[parameter["name"]] = source["default"]
            elif node.phase == "Succeeded":  # a failed step keeps its own reason
                node.phase = "Error"
                node.message = f"open {source['path']}: no such file or directory"
        progress = outputs / "progress"
        if progress.is_file():
            node.progress = progress.read_text().strip()
        try:
            self._save_artifacts(node, pod)
        finally:
            shutil.rmtree(outputs, ignore_errors=True)

    def _save_artifacts(self, node: Node, pod: _Pod) -> None:
        """Save the output artifacts as Argo's wait container does (also after a failure;
        a missing non-optional artifact or a missing repository makes the node an Error)."""
        artifacts = pod.template.get("outputs", {}).get("artifacts", [])
        if not artifacts:
            return
        if self.artifact_repository is None:
            if node.phase == "Succeeded":  # a failed step keeps its own reason
                node.phase, node.message = "Error", NO_ARTIFACT_REPOSITORY
            return
        workflow = pod.scope["workflow.name"]
        key = Path(workflow) / pod_name(
            workflow, pod.template["name"], f"{pod.name}({node.retries})"
        )
        for artifact in artifacts:
            _check_keys(
                f"artifact {artifact['name']}", artifact, {"name", "path", "optional", "archive"}
            )
            source = self._artifact_source(substitute(artifact["path"], pod.scope), pod.outputs)
            if not source.exists():
                if artifact.get("optional"):
                    continue
                if node.phase == "Succeeded":
                    node.phase = "Error"
                    node.message = (
                        f"failed to save outputs: {artifact['path']}: no such file or directory"
                    )
                continue
            archive = artifact.get("archive", {"tar": {}})
            _check_keys(f"archive of {artifact['name']}", archive, {"none", "tar"})
            target = self.artifact_repository / key
            target.mkdir(parents=True, exist_ok=True)
            if "none" in archive:
                saved = target / source.name
                copy = shutil.copytree if source.is_dir() else shutil.copyfile
                copy(source, saved)
            else:
                saved = target / f"{artifact['name']}.tgz"
                with tarfile.open(saved, "w:gz") as tar:
                    tar.add(source, arcname=source.name)
            node.artifacts[artifact["name"]] = saved

    def _artifact_source(self, path: str, outputs: Path) -> Path:
        """The local file of an artifact's pod path: on a buffer or in the outputs dir."""
        match = re.match(r"^/buffer/([^/]+)(/.*)?$", path)
        if match is not None:
            root = self.buffer_root / match.group(1)
            local = (root / (match.group(2) or "/").lstrip("/")).resolve()
        elif path.startswith(OUTPUTS_DIR + "/"):
            root, local = outputs, Path(_local_path(path, outputs)).resolve()
        else:
            root = local = None
        if local is None or not local.is_relative_to(root.resolve()):
            raise WorkflowError(f"artifact path {path!r}: only on a buffer or under {OUTPUTS_DIR}")
        return local

    @staticmethod
    def _task_outputs(nodes: dict[str, Node]) -> dict[str, str]:
        return {
            f"tasks.{node.name}.outputs.parameters.{key}": value
            for node in nodes.values()
            for key, value in node.outputs.items()
        }

    @staticmethod
    def _arguments(task: dict[str, Any], scope: dict[str, str]) -> dict[str, str]:
        return {
            p["name"]: substitute(p.get("value", ""), scope)
            for p in task.get("arguments", {}).get("parameters", [])
        }

    @staticmethod
    def _inputs(template: dict[str, Any], arguments: dict[str, str]) -> dict[str, str]:
        inputs = {}
        for parameter in template.get("inputs", {}).get("parameters", []):
            if parameter["name"] in arguments:
                inputs[parameter["name"]] = arguments[parameter["name"]]
            elif "value" in parameter:
                inputs[parameter["name"]] = parameter["value"]
            else:
                raise WorkflowError(
                    f"template {template['name']!r}: input {parameter['name']!r} not supplied"
                )
        return inputs

    def _resource(self, template: dict[str, Any], scope: dict[str, str]) -> tuple[str, str]:
        """Act on a resource template's manifest: only PVCs (buffer directories) are local."""
        resource = template["resource"]
        _check_keys("resource", resource, {"action", "manifest", "flags", "setOwnerReference"})
        if template.get("outputs"):
            raise WorkflowError(f"template {template['name']!r}: resource outputs unsupported")
        manifest = yaml.safe_load(substitute(resource["manifest"], scope))
        if manifest.get("kind") != "PersistentVolumeClaim":
            raise WorkflowError(
                f"template {template['name']!r}: a {manifest.get('kind')} needs Kubernetes; "
                "the local engine creates only PersistentVolumeClaims"
            )
        name = manifest["metadata"]["name"]
        if not RFC1123_LABEL.match(name):
            return "Failed", f'PersistentVolumeClaim "{name}" is invalid: metadata.name'
        path = self.buffer_root / name
        action = resource["action"]
        if action == "apply":
            path.mkdir(exist_ok=True)
            return "Succeeded", f"persistentvolumeclaim/{name} applied"
        if action == "create":
            if path.exists():
                return "Failed", f'persistentvolumeclaims "{name}" already exists'
            path.mkdir()
            return "Succeeded", f"persistentvolumeclaim/{name} created"
        if action == "get":
            return ("Succeeded", "") if path.is_dir() else ("Failed", f'"{name}" not found')
        if action == "delete":
            if path.is_dir():
                shutil.rmtree(path)
            elif "--ignore-not-found" not in resource.get("flags", []):
                return "Failed", f'persistentvolumeclaims "{name}" not found'
            return "Succeeded", f"persistentvolumeclaim/{name} deleted"
        raise WorkflowError(f"resource action {action!r} unsupported")

    def _mounts(self, container: dict[str, Any], scope: dict[str, str]) -> None:
        """Check the volume mounts: /buffer/<claim> of an existing PVC, or an emptyDir."""
        for mount in container.get("volumeMounts", []):
            path = substitute(mount["mountPath"], scope)
            volume = self.volumes.get(mount["name"])
            if volume is None:
                raise WorkflowError(f"volume {mount['name']!r} is not declared in spec.volumes")
            if "emptyDir" in volume:
                continue
            claim = volume.get("persistentVolumeClaim", {}).get("claimName")
            match = BUFFER_MOUNT.match(path)
            if claim is None or match is None or substitute(claim, scope) != match.group(1):
                raise WorkflowError(f"mount {path!r}: only PVC <name> at /buffer/<name>")
            if not (self.buffer_root / match.group(1)).is_dir():
                raise PodError(f'persistentvolumeclaim "{match.group(1)}" not found')

    def _env(self, container: dict[str, Any], scope: dict[str, str]) -> dict[str, str]:
        env = {}
        for item in container.get("env", []):
            if "value" in item or "valueFrom" not in item:
                env[item["name"]] = substitute(item.get("value", ""), scope)
                continue
            ref = item["valueFrom"].get("resourceFieldRef")
            if ref is None:
                raise WorkflowError(f"env {item['name']}: only value and resourceFieldRef")
            env[item["name"]] = self._resource_field(container, ref, scope)
        return env

    @staticmethod
    def _resource_field(
        container: dict[str, Any], ref: dict[str, str], scope: dict[str, str]
    ) -> str:
        """The downward API's value: requests default to limits, limits to the node's."""
        kind, _, resource = ref["resource"].partition(".")
        resources = container.get("resources", {})
        value = resources.get(kind, {}).get(resource)
        if value is None and kind == "requests":
            value = resources.get("limits", {}).get(resource)
        try:
            if value is not None:
                amount = quantity(substitute(str(value), scope))
            elif kind == "limits":
                pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
                amount = float({"cpu": cores(), "memory": pages}[resource])
            else:
                amount = 0.0
            return str(math.ceil(amount / quantity(ref.get("divisor", "1"))))
        except ValueError as exc:  # a malformed quantity in the manifest
            raise WorkflowError(str(exc)) from None

    def _start(self, name: str, template: dict[str, Any], scope: dict[str, str]) -> _Pod:
        container = template["container"]
        self._mounts(container, scope)
        command = [
            substitute(part, scope) for part in container["command"] + container.get("args", [])
        ]
        if command[0] == "batch-imaging":
            command = [sys.executable, "-m", "dag", *command[1:]]
        outputs = Path(
            tempfile.mkdtemp(prefix=f"{template['name']}-outputs-", dir=self._scratch_dir)
        )
        env = {
            **os.environ,
            **self.env,
            **self._env(container, scope),
            BUFFER_ROOT_ENV: str(self.buffer_root),
            "BATCH_IMAGING_OUTPUTS": str(outputs),
            "ARGO_PROGRESS_FILE": str(outputs / "progress"),
            ENGINE_PID_ENV: str(os.getpid()),
        }
        limits = [
            seconds(substitute(str(template[key]), scope))
            for key in ("activeDeadlineSeconds", "timeout")
            if template.get(key)
        ]
        deadline = time.time() + min(limits) if limits else None
        try:
            # its own process group, as a container has its own PID namespace: a terminal's
            # Ctrl-C reaches the engine only, and the pod's processes end with it
            process = subprocess.Popen(command, env=env, start_new_session=True)
        except OSError as exc:
            raise PodError(f"failed to start {command[0]}: {exc.strerror}") from None
        return _Pod(
            name=name,
            process=process,
            outputs=outputs,
            template=template,
            deadline=deadline,
            scope=scope,
        )


def _phase(nodes: Iterable[Node], early: str | None = None) -> str:
    """The workflow phase from its nodes' phases; a DAG ended ``early`` (stopped, past its
    deadline) has not succeeded, whatever its nodes were."""
    phases = {node.phase for node in nodes}
    if "Error" in phases:
        return "Error"
    return "Failed" if "Failed" in phases or early else "Succeeded"


@contextlib.contextmanager
def _scratch(buffer_root: Path) -> Iterator[Path]:
    """A directory for this run's pods' outputs (under the buffer root, beside the locks and
    the embedded store), removed when the run ends; those of runs whose engine was killed
    (its process gone) are removed first."""
    root = buffer_root / ".engine"
    root.mkdir(mode=0o700, exist_ok=True)
    for stale in root.iterdir():
        engine = ENGINE_SCRATCH.fullmatch(stale.name)
        if engine and not process_alive(int(engine[1])):
            shutil.rmtree(stale, ignore_errors=True)
    directory = Path(tempfile.mkdtemp(prefix=f"engine-{os.getpid()}-", dir=root))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _terminate(pods: Iterable[_Pod]) -> None:
    """SIGTERM to every pod at once (not again to one already in its grace period), then
    SIGKILL to what is left of each after its grace period, as the kubelet does (the steps
    record their end meanwhile); drop their outputs."""
    pods = list(pods)
    for pod in pods:
        if pod.kill_at is None:
            _sigterm(pod)
    for pod in pods:
        grace = pod.kill_at - time.time() if pod.kill_at else 0.0
        with contextlib.suppress(subprocess.TimeoutExpired):
            pod.process.wait(timeout=max(0.0, grace))
        _kill_group(pod)
        pod.process.wait()
        shutil.rmtree(pod.outputs, ignore_errors=True)


def _sigterm(pod: _Pod) -> None:
    """SIGTERM to the pod's main process, which starts its grace period."""
    pod.process.terminate()
    pod.kill_at = time.time() + GRACE_S


def _kill_group(pod: _Pod) -> None:
    """SIGKILL to the pod's process group: its main process, if still running, and every
    process it started (Dask's forkserver and workers), as when a container ends."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pod.process.pid, signal.SIGKILL)


def pod_name(workflow: str, template: str, node: str) -> str:
    """Argo's (v2) pod name of a node: ``<workflow>-<template>-<fnv-1a 32 of the node name>``."""
    digest = 0x811C9DC5
    for byte in f"{workflow}.{node}".encode():
        digest = ((digest ^ byte) * 0x01000193) & 0xFFFFFFFF
    return f"{workflow}-{template}-{digest}"


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
