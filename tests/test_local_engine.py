"""The local engine honours Argo semantics, on tiny hand-written manifests whose containers
run ``python -c`` (fast); plus the rendered WorkflowTemplate is accepted as it is."""

from __future__ import annotations

import copy
import fcntl
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dag import local
from dag.local import LocalEngine, WorkflowError, pod_name, quantity, seconds
from dag.render import template_manifest

WRITE = "import os, sys; open(os.environ['BATCH_IMAGING_OUTPUTS'] + '/' + sys.argv[1], 'w')"


def container(code: str, *args: str, **extra: Any) -> dict[str, Any]:
    return {"image": "python", "command": [sys.executable, "-c", code], "args": list(args), **extra}


def sh(script: str, *args: str, **extra: Any) -> dict[str, Any]:
    return {"image": "busybox", "command": ["sh", "-c", script], "args": list(args), **extra}


def output(name: str, default: str | None = None) -> dict[str, Any]:
    source: dict[str, Any] = {"path": f"/tmp/outputs/{name}"}
    if default is not None:
        source["default"] = default
    return {"name": name, "valueFrom": source}


def workflow(
    templates: list[dict[str, Any]], tasks: list[dict[str, Any]], **spec: Any
) -> dict[str, Any]:
    dag = {"name": "main", "dag": {"tasks": tasks}}
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": "t-"},
        "spec": {"entrypoint": "main", "templates": [dag, *templates], **spec},
    }


def task(name: str, template: str, depends: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "template": template,
        **({"depends": depends} if depends else {}),
        **extra,
    }


ECHO = {  # writes its input to the output parameter "out" and reports progress
    "name": "echo",
    "inputs": {"parameters": [{"name": "text"}]},
    "outputs": {"parameters": [output("out", "")]},
    "container": container(
        WRITE + ".write(sys.argv[2]); open(os.environ['ARGO_PROGRESS_FILE'], 'w').write('1/1')",
        "out",
        "{{inputs.parameters.text}}",
    ),
}
FAIL = {"name": "fail", "container": container("raise SystemExit(3)")}
STUBBORN = {  # ignores SIGTERM, so only SIGKILL at the end of its grace period stops it
    "name": "stubborn",
    "activeDeadlineSeconds": 1,
    "container": container(
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)"
    ),
}


def test_substitution_dependencies_outputs_and_progress(tmp_path: Path) -> None:
    manifest = workflow(
        [ECHO],
        [
            task(
                "a",
                "echo",
                arguments={
                    "parameters": [
                        {"name": "text", "value": "{{workflow.parameters.x}}-{{workflow.name}}"}
                    ]
                },
            ),
            task(
                "b",
                "echo",
                "a",
                arguments={
                    "parameters": [
                        {"name": "text", "value": "got {{tasks.a.outputs.parameters.out}}"}
                    ]
                },
            ),
        ],
        arguments={"parameters": [{"name": "x", "value": "default"}]},
    )
    run = LocalEngine(manifest, tmp_path).run({"x": "given"}, name="wf")
    assert run.phase == "Succeeded"
    assert run.nodes["a"].outputs == {"out": "given-wf"}
    assert run.nodes["b"].outputs == {"out": "got given-wf"}
    assert run.nodes["b"].started >= run.nodes["a"].finished
    assert run.nodes["a"].progress == "1/1"


def test_unknown_parameters_and_expressions_are_errors(tmp_path: Path) -> None:
    manifest = workflow(
        [ECHO],
        [
            task(
                "a",
                "echo",
                arguments={
                    "parameters": [{"name": "text", "value": "{{workflow.parameters.nope}}"}]
                },
            )
        ],
    )
    with pytest.raises(WorkflowError, match="unknown workflow parameter"):
        LocalEngine(manifest, tmp_path).run({"nope": "1"})
    with pytest.raises(WorkflowError, match="unresolved expression"):
        LocalEngine(manifest, tmp_path).run({})


def test_failure_omits_dependents_and_the_exit_handler_sees_failed(tmp_path: Path) -> None:
    status = tmp_path / "status"
    handler = {
        "name": "handler",
        "container": container(
            "import sys; open(sys.argv[1], 'w').write(sys.argv[2])",
            str(status),
            "{{workflow.status}}",
        ),
    }
    manifest = workflow(
        [ECHO, FAIL, handler],
        [
            task("bad", "fail"),
            task(
                "after", "echo", "bad", arguments={"parameters": [{"name": "text", "value": "x"}]}
            ),
        ],
        onExit="handler",
    )
    run = LocalEngine(manifest, tmp_path).run({})
    assert run.phase == "Failed"
    assert run.nodes["bad"].phase == "Failed"
    assert run.nodes["bad"].message == "Error (exit code 3)"
    assert run.nodes["after"].phase == "Omitted"
    assert run.nodes["handler (onExit)"].phase == "Succeeded"
    assert status.read_text() == "Failed"


def counting_failure(counter: Path, retry: dict[str, Any], code: int = 1) -> dict[str, Any]:
    """A template whose every attempt appends ``x`` to ``counter`` and exits ``code``."""
    script = f"import sys; open(sys.argv[1], 'a').write('x'); raise SystemExit({code})"
    return {"name": "failing", "retryStrategy": retry, "container": container(script, str(counter))}


def test_retries_with_backoff_until_success(tmp_path: Path) -> None:
    counter = tmp_path / "attempts"
    flaky = {
        "name": "flaky",
        "retryStrategy": {
            "limit": "3",
            "retryPolicy": "OnFailure",
            "backoff": {"duration": "0.2", "factor": "2", "cap": "1s"},
        },
        "container": container(
            "import sys, pathlib; p = pathlib.Path(sys.argv[1]); "
            "n = int(p.read_text() if p.exists() else 0) + 1; p.write_text(str(n)); "
            "raise SystemExit(0 if n == 3 else 1)",
            str(counter),
        ),
    }
    started = time.monotonic()
    run = LocalEngine(workflow([flaky], [task("f", "flaky")]), tmp_path).run({})
    assert run.phase == "Succeeded"
    assert counter.read_text() == "3" and run.nodes["f"].retries == 2
    assert time.monotonic() - started >= 0.2 + 0.4  # duration x factor^retry


@pytest.mark.parametrize(
    ("policy", "limit", "attempts"),
    [("OnError", "3", 1), ("Always", "2", 3), ("OnTransientError", "3", 1)],
)
def test_retry_policy_and_limit(tmp_path: Path, policy: str, limit: str, attempts: int) -> None:
    counter = tmp_path / "attempts"
    failing = counting_failure(counter, {"limit": limit, "retryPolicy": policy})
    run = LocalEngine(workflow([failing], [task("f", "failing")]), tmp_path).run({})
    assert run.phase == "Failed"
    assert len(counter.read_text()) == attempts
    # the limit spent, as Argo says; a failure the policy does not retry keeps its message
    exhausted = run.nodes["f"].message.endswith("; No more retries left")
    assert exhausted == (policy == "Always")


@pytest.mark.parametrize(
    ("strategy", "error"),
    [
        ({"limit": "2.5"}, r"retryStrategy\.limit: '2\.5' is not an integer"),
        ({"limit": "nan"}, r"retryStrategy\.limit: 'nan' is not an integer"),
        ({"backoff": {"duration": "1s", "factor": "two"}}, r"backoff\.factor: 'two' is not"),
        ({"backoff": {"factor": "2"}}, r"backoff: no base duration"),
        # expressions outside the engine's subset of expr-lang (Argo has these), or naming
        # what the engine does not give (Argo's `retries`): refused before anything runs
        ({"expression": "asInt(lastRetry.exitCode) > 1"}, r"retryStrategy\.expression: .*'> 1'"),
        ({"expression": "lastRetry.exitCode == 1"}, r"retryStrategy\.expression: .*'1'"),
        ({"expression": "retries == '2'"}, r"retryStrategy\.expression: unknown name\(s\) retries"),
    ],
)
def test_a_retry_strategy_the_engine_cannot_follow_is_refused(
    tmp_path: Path, strategy: dict[str, Any], error: str
) -> None:
    """Limits and backoffs Argo refuses, and retry expressions the engine cannot evaluate."""
    counter = tmp_path / "attempts"
    failing = counting_failure(counter, {"retryPolicy": "Always", **strategy})
    with pytest.raises(WorkflowError, match=error):
        LocalEngine(workflow([failing], [task("f", "failing")]), tmp_path).run({})
    assert not counter.exists() or "expression" not in strategy  # refused before it ran


def shipped_retry(template: str) -> dict[str, Any]:
    """The rendered workflow's retryStrategy of a template, without its backoff (minutes)."""
    templates = {t["name"]: t for t in template_manifest()["spec"]["templates"]}
    return {k: v for k, v in templates[template]["retryStrategy"].items() if k != "backoff"}


@pytest.mark.parametrize(
    ("script", "attempts", "message"),
    [
        ("exit 1", 1, "Error (exit code 1); retryStrategy.expression evaluated to false"),
        ("exit 2", 1, "Error (exit code 2); retryStrategy.expression evaluated to false"),
        ("exit 139", 1, "Error (exit code 139); retryStrategy.expression evaluated to false"),
        ("exit 143", 4, "Error (exit code 143); No more retries left"),
        ("kill -TERM $$", 4, "Error (exit code 143); No more retries left"),  # 128 + 15
        ("kill -KILL $$", 4, "Error (exit code 137); No more retries left"),  # 128 + 9
        (
            "exec sleep 30",
            1,
            f"{local.DEADLINE_MESSAGE}; retryStrategy.expression evaluated to false",
        ),
    ],
)
def test_step_pods_are_retried_when_the_cluster_ended_them(
    tmp_path: Path, script: str, attempts: int, message: str
) -> None:
    """The shipped step retry: a step failing on its own (exit 1 or 2, or crashing: 139) or
    past its deadline is not retried; one stopped by SIGTERM (eviction, drain, node
    shutdown) or killed after its grace period is."""
    counter = tmp_path / "attempts"
    step = {
        "name": "step",
        "activeDeadlineSeconds": 1,
        "retryStrategy": shipped_retry("calibrate"),
        "container": sh(f'echo x >> "$0"; {script}', str(counter)),
    }
    node = LocalEngine(workflow([step], [task("s", "step")]), tmp_path).run({}).nodes["s"]
    assert (node.phase, node.message) == ("Failed", message)
    assert len(counter.read_text().split()) == attempts


def test_the_exit_handler_is_retried_when_it_fails(tmp_path: Path) -> None:
    counter = tmp_path / "attempts"
    release = {
        "name": "release",
        "retryStrategy": shipped_retry("release"),
        "container": sh('echo x >> "$0"; exit 1', str(counter)),
    }
    manifest = workflow([ECHO, release], [], onExit="release")
    node = LocalEngine(manifest, tmp_path).run({}).nodes["release (onExit)"]
    assert node.retries == 3 and len(counter.read_text().split()) == 4


def test_no_retry_whose_backoff_would_pass_the_max_duration(tmp_path: Path) -> None:
    """As Argo, a retry that could start only after ``maxDuration`` is not made."""
    counter = tmp_path / "attempts"
    backoff = {"duration": "10s", "maxDuration": "3s"}
    failing = counting_failure(counter, {"limit": "5", "retryPolicy": "Always", "backoff": backoff})
    run = LocalEngine(workflow([failing], [task("f", "failing")]), tmp_path).run({})
    assert counter.read_text() == "x"
    assert run.nodes["f"].message.endswith("; Backoff would exceed max duration limit")


def test_transient_error_pattern_makes_a_failure_retryable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRANSIENT_ERROR_PATTERN", r"exit code 75")
    counter = tmp_path / "attempts"
    failing = counting_failure(counter, {"limit": "1", "retryPolicy": "OnTransientError"}, 75)
    LocalEngine(workflow([failing], [task("f", "failing")]), tmp_path).run({})
    assert counter.read_text() == "xx"


def test_pods_that_cannot_start_and_resources_are_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a pod whose claim does not exist is an Error, retried by OnError as any Error
    orphan = {
        "name": "orphan",
        "retryStrategy": {"limit": "2", "retryPolicy": "OnError"},
        "container": container("pass", volumeMounts=[{"name": "buf", "mountPath": "/buffer/gone"}]),
    }
    volumes = [{"name": "buf", "persistentVolumeClaim": {"claimName": "gone"}}]
    run = LocalEngine(workflow([orphan], [task("o", "orphan")], volumes=volumes), tmp_path).run({})
    assert run.nodes["o"].phase == "Error" and run.nodes["o"].retries == 2
    # a resource failure Argo deems transient is retried by OnTransientError
    monkeypatch.setenv("TRANSIENT_ERROR_PATTERN", r"already exists")
    (tmp_path / "taken").mkdir()
    create = {
        **pvc_template("create"),
        "retryStrategy": {"limit": "3", "retryPolicy": "OnTransientError"},
    }
    arguments = {"parameters": [{"name": "name", "value": "taken"}]}
    run = LocalEngine(
        workflow([create], [task("pvc", "pvc-create", arguments=arguments)]), tmp_path
    ).run({})
    assert run.nodes["pvc"].phase == "Failed" and run.nodes["pvc"].retries == 3


def test_daemon_becomes_ready_then_is_stopped(tmp_path: Path) -> None:
    daemon = {
        "name": "daemon",
        "daemon": True,
        "container": container(
            WRITE + ".write('yes'); import time; time.sleep(60)",
            "ready",
            readinessProbe={"exec": {"command": ["test", "-s", "/tmp/outputs/ready"]}},
        ),
    }
    manifest = workflow(
        [daemon, ECHO],
        [
            task("d", "daemon"),
            task("e", "echo", "d", arguments={"parameters": [{"name": "text", "value": "x"}]}),
        ],
    )
    started = time.monotonic()
    run = LocalEngine(manifest, tmp_path).run({})
    assert run.phase == "Succeeded"
    assert run.nodes["d"].phase == "Succeeded" and run.nodes["e"].phase == "Succeeded"
    assert time.monotonic() - started < 30  # the daemon was terminated, not waited for


def test_a_ready_daemon_is_daemoned_not_succeeded_until_the_dag_ends(tmp_path: Path) -> None:
    """As in Argo: ``d.Succeeded`` does not hold for a ready daemon (Running, daemoned), and its
    dependant is omitted; ``d.Daemoned`` and a bare ``d`` do.  The DAG's end stops it, and
    its node then Succeeded."""
    daemon = {
        "name": "daemon",
        "daemon": True,
        "container": sh(
            'echo yes > "$BATCH_IMAGING_OUTPUTS/ready"; exec sleep 60',
            readinessProbe={"exec": {"command": ["test", "-s", "/tmp/outputs/ready"]}},
        ),
    }
    echo = {"parameters": [{"name": "text", "value": "x"}]}
    manifest = workflow(
        [daemon, ECHO],
        [
            task("d", "daemon"),
            task("strict", "echo", "d.Succeeded", arguments=echo),
            task("daemoned", "echo", "d.Daemoned && !d.Failed", arguments=echo),
            task("bare", "echo", "d", arguments=echo),
        ],
    )
    run = LocalEngine(manifest, tmp_path).run({})
    assert run.nodes["strict"].phase == "Omitted"
    assert run.nodes["strict"].message == local.OMITTED
    assert run.nodes["daemoned"].phase == run.nodes["bare"].phase == "Succeeded"
    d = run.nodes["d"]
    assert (d.phase, d.daemoned, run.phase) == ("Succeeded", False, "Succeeded")
    assert d.finished >= run.nodes["bare"].finished  # Running until the DAG ended


@pytest.mark.parametrize(
    ("depends", "error"),
    [
        ("a.Succeeded || ", r"task b: depends: .*unexpected end"),
        ("a.AnySucceeded", r"task b: depends: 'a.AnySucceeded' is not"),
        ("c", r"task b: depends: 'c' is not"),
    ],
)
def test_a_depends_the_engine_cannot_evaluate_is_refused(
    tmp_path: Path, depends: str, error: str
) -> None:
    manifest = workflow([FAIL], [task("a", "fail"), task("b", "fail", depends)])
    with pytest.raises(WorkflowError, match=error):
        LocalEngine(manifest, tmp_path).run({})


def test_when_skips_and_depends_treats_skipped_as_done(tmp_path: Path) -> None:
    echo = {"parameters": [{"name": "text", "value": "x"}]}
    manifest = workflow(
        [ECHO],
        [
            task("maybe", "echo", when="{{workflow.parameters.on}} == true", arguments=echo),
            task("bare", "echo", "maybe", arguments=echo),
            task("strict", "echo", "maybe.Succeeded", arguments=echo),
        ],
        arguments={"parameters": [{"name": "on", "value": "false"}]},
    )
    run = LocalEngine(manifest, tmp_path).run({})
    assert [run.nodes[n].phase for n in ("maybe", "bare", "strict")] == [
        "Skipped",
        "Succeeded",
        "Omitted",
    ]
    assert run.phase == "Succeeded"
    assert LocalEngine(manifest, tmp_path).run({"on": "true"}).nodes["strict"].phase == "Succeeded"


def test_dependencies_read_as_depends_and_when_compares_numbers(tmp_path: Path) -> None:
    """``dependencies: [a]`` is ``depends: "a"`` (a Skipped task is done), and ``when``
    compares numbers as numbers, booleans as booleans, quoted text as text, as govaluate."""
    echo = {"parameters": [{"name": "text", "value": "x"}]}
    manifest = workflow(
        [ECHO],
        [
            task("maybe", "echo", when="{{workflow.parameters.x}} == 2", arguments=echo),
            {"name": "listed", "template": "echo", "dependencies": ["maybe"], "arguments": echo},
            task("number", "echo", when="{{workflow.parameters.x}} == 1", arguments=echo),
            task("text", "echo", when="'{{workflow.parameters.x}}' == '1'", arguments=echo),
            task("boolean", "echo", when="true == 'true'", arguments=echo),  # kinds differ
            task("exponent", "echo", when="1e0 == 1", arguments=echo),  # not a number there
        ],
        arguments={"parameters": [{"name": "x", "value": "1.0"}]},
    )
    run = LocalEngine(manifest, tmp_path).run({})
    phases = [run.nodes[n].phase for n in ("maybe", "listed", "number", "text", "boolean")]
    assert phases == ["Skipped", "Succeeded", "Succeeded", "Skipped", "Skipped"]
    assert run.nodes["exponent"].phase == "Skipped"


@pytest.mark.parametrize("fail_fast", [None, False])
def test_fail_fast_starts_nothing_once_a_task_failed_and_none_runs(
    tmp_path: Path, fail_fast: bool | None
) -> None:
    """As Argo's controller (``failFast`` true by default): ``a`` fails at once; ``c`` starts
    when ``b`` ends, since ``d`` still runs; ``e`` would start when ``d`` ends, with nothing
    running, and does not.  With ``failFast: false`` every task runs."""

    def sleeping(name: str, seconds: float) -> dict[str, Any]:
        return {"name": name, "container": container(f"import time; time.sleep({seconds})")}

    manifest = workflow(
        [FAIL, sleeping("short", 1), sleeping("long", 4)],
        [
            task("a", "fail"),
            task("b", "short"),
            task("c", "short", "b"),
            task("d", "long"),
            task("e", "short", "d"),
        ],
    )
    if fail_fast is not None:
        manifest["spec"]["templates"][0]["dag"]["failFast"] = fail_fast
    run = LocalEngine(manifest, tmp_path).run({})
    assert run.phase == "Failed"
    phases = [run.nodes[n].phase for n in "abcde"]
    if fail_fast is None:
        assert phases == ["Failed", "Succeeded", "Succeeded", "Succeeded", "Omitted"]
        assert run.nodes["e"].message == local.FAIL_FAST
    else:
        assert phases == ["Failed", "Succeeded", "Succeeded", "Succeeded", "Succeeded"]


def test_a_missing_output_parameter_without_default_is_an_error(tmp_path: Path) -> None:
    silent = {
        "name": "silent",
        "outputs": {"parameters": [output("out")]},
        "container": container("pass"),
    }
    run = LocalEngine(workflow([silent], [task("s", "silent")]), tmp_path).run({})
    node = run.nodes["s"]
    assert (node.phase, node.message) == (
        "Error",
        "open /tmp/outputs/out: no such file or directory",
    )
    assert run.phase == "Error"


def test_dag_fields_it_cannot_honour_are_refused(tmp_path: Path) -> None:
    on = {"continueOn": {"failed": True}}
    with pytest.raises(WorkflowError, match=r"task a: unsupported field.*continueOn"):
        LocalEngine(workflow([FAIL], [task("a", "fail", **on)]), tmp_path)
    mixed = [
        task("a", "fail"),
        task("b", "fail", "a"),
        {**task("c", "fail"), "dependencies": ["a"]},
    ]
    with pytest.raises(WorkflowError, match="both 'depends' and 'dependencies'"):
        LocalEngine(workflow([FAIL], mixed), tmp_path)
    patched = {**FAIL, "podSpecPatch": '{"activeDeadlineSeconds": 2}'}  # changes what runs
    with pytest.raises(WorkflowError, match=r"template fail: unsupported field.*podSpecPatch"):
        LocalEngine(workflow([patched], [task("a", "fail")]), tmp_path)


PVC = """apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: '{{inputs.parameters.name}}'
spec:
  accessModes: [ReadWriteMany]
  resources: {requests: {storage: 1Gi}}
"""


def pvc_template(action: str) -> dict[str, Any]:
    return {
        "name": f"pvc-{action}",
        "inputs": {"parameters": [{"name": "name"}]},
        "resource": {"action": action, "manifest": PVC},
    }


def test_pvc_resource_is_a_buffer_directory_and_is_mounted(tmp_path: Path) -> None:
    use = {
        "name": "use",
        "container": container(
            "import os, sys; root = os.environ['BATCH_IMAGING_BUFFER_ROOT']; "
            "open(os.path.join(root, sys.argv[1], 'f'), 'w').write('1')",
            "buf-a",
            volumeMounts=[{"name": "buf", "mountPath": "/buffer/{{workflow.parameters.buf}}"}],
        ),
    }
    manifest = workflow(
        [pvc_template("apply"), use],
        [
            task(
                "pvc",
                "pvc-apply",
                arguments={
                    "parameters": [{"name": "name", "value": "{{workflow.parameters.buf}}"}]
                },
            ),
            task("use", "use", "pvc"),
        ],
        arguments={"parameters": [{"name": "buf", "value": "buf-a"}]},
        volumes=[
            {"name": "buf", "persistentVolumeClaim": {"claimName": "{{workflow.parameters.buf}}"}}
        ],
    )
    for _ in range(2):  # apply is idempotent and the PVC outlives the run
        run = LocalEngine(manifest, tmp_path).run({})
        assert run.phase == "Succeeded"
    assert (tmp_path / "buf-a" / "f").read_text() == "1"
    # create fails on an existing claim
    create = workflow(
        [pvc_template("create")],
        [task("pvc", "pvc-create", arguments={"parameters": [{"name": "name", "value": "buf-a"}]})],
    )
    run = LocalEngine(create, tmp_path).run({})
    assert run.nodes["pvc"].phase == "Failed" and "already exists" in run.nodes["pvc"].message
    # a pod mounting a missing claim never starts: an Error
    manifest["spec"]["templates"] = [
        t for t in manifest["spec"]["templates"] if t["name"] != "pvc-apply"
    ]
    manifest["spec"]["templates"][0]["dag"]["tasks"] = [task("use", "use")]
    run = LocalEngine(manifest, tmp_path).run({"buf": "buf-b"})
    assert run.phase == "Error" and "not found" in run.nodes["use"].message


MAKE_FILES = {  # writes a file on the buffer "buf-a" and one in its outputs directory
    "name": "make",
    "container": container(
        "import os; root = os.environ['BATCH_IMAGING_BUFFER_ROOT']; "
        "open(os.path.join(root, 'buf-a', 'page.html'), 'w').write('<p>hi</p>'); "
        "open(os.environ['BATCH_IMAGING_OUTPUTS'] + '/log.txt', 'w').write('done')",
        volumeMounts=[{"name": "buf", "mountPath": "/buffer/buf-a"}],
    ),
    "outputs": {
        "artifacts": [
            {"name": "page", "path": "/buffer/buf-a/page.html", "archive": {"none": {}}},
            {"name": "log", "path": "/tmp/outputs/log.txt"},  # archived: log.tgz
            {"name": "absent", "path": "/buffer/buf-a/absent.png", "optional": True},
        ]
    },
}
BUF_VOLUME = [{"name": "buf", "persistentVolumeClaim": {"claimName": "buf-a"}}]


def test_output_artifacts_are_saved_under_argos_default_key(tmp_path: Path) -> None:
    (tmp_path / "buf-a").mkdir()
    manifest = workflow([MAKE_FILES], [task("make", "make")], volumes=BUF_VOLUME)
    repository = tmp_path / "repo"
    run = LocalEngine(manifest, tmp_path, artifact_repository=repository).run({}, name="wf-1")
    assert run.phase == "Succeeded"
    saved = run.nodes["make"].artifacts
    assert set(saved) == {"page", "log"}  # the optional missing one is skipped
    pod = pod_name("wf-1", "make", "make(0)")
    assert saved["page"] == repository / "wf-1" / pod / "page.html"
    assert saved["page"].read_text() == "<p>hi</p>"
    assert saved["log"] == repository / "wf-1" / pod / "log.tgz"
    with tarfile.open(saved["log"]) as tar:
        assert tar.extractfile("log.txt").read() == b"done"


def test_artifact_paths_cannot_leave_their_volume(tmp_path: Path) -> None:
    (tmp_path / "buf-a").mkdir()
    escaping = copy.deepcopy(MAKE_FILES)
    escaping["outputs"]["artifacts"] = [{"name": "x", "path": "/buffer/buf-a/../../secret"}]
    manifest = workflow([escaping], [task("make", "make")], volumes=BUF_VOLUME)
    with pytest.raises(WorkflowError, match="only on a buffer"):
        LocalEngine(manifest, tmp_path, artifact_repository=tmp_path / "repo").run({})


def test_pod_name_is_argos_fnv_hash() -> None:
    # FNV-1a 32 of "wf.a": computed by hand from the algorithm's constants
    digest = 0x811C9DC5
    for byte in b"wf.a":
        digest = ((digest ^ byte) * 16777619) % 2**32
    assert pod_name("wf", "echo", "a") == f"wf-echo-{digest}"
    assert pod_name("wf", "echo", "a") != pod_name("wf", "echo", "b")


def test_artifacts_without_a_repository_or_a_file_are_errors(tmp_path: Path) -> None:
    (tmp_path / "buf-a").mkdir()
    manifest = workflow([MAKE_FILES], [task("make", "make")], volumes=BUF_VOLUME)
    run = LocalEngine(manifest, tmp_path).run({})
    assert run.phase == "Error"
    assert "You need to configure artifact storage" in run.nodes["make"].message
    MAKE_FILES["outputs"]["artifacts"][2]["optional"] = False
    try:
        run = LocalEngine(manifest, tmp_path, artifact_repository=tmp_path / "r").run({})
    finally:
        MAKE_FILES["outputs"]["artifacts"][2]["optional"] = True
    assert run.phase == "Error" and "absent.png" in run.nodes["make"].message


def test_other_resources_need_kubernetes(tmp_path: Path) -> None:
    cluster = {
        "name": "dc",
        "resource": {
            "action": "create",
            "manifest": "apiVersion: kubernetes.dask.org/v1\nkind: DaskCluster\n"
            "metadata: {name: x}\n",
        },
    }
    with pytest.raises(WorkflowError, match="needs Kubernetes"):
        LocalEngine(workflow([cluster], [task("dc", "dc")]), tmp_path).run({})


def test_template_and_workflow_deadlines(tmp_path: Path) -> None:
    """A step past a deadline is stopped as the kubelet stops a pod: SIGTERM first (the step
    records its end), SIGKILL only after the grace period."""
    stopped = tmp_path / "stopped"
    slow = {
        "name": "slow",
        "activeDeadlineSeconds": "{{workflow.parameters.limit}}",
        "container": container(
            "import pathlib, signal, sys, time\n"
            "def stop(*_):\n"
            f"    pathlib.Path({str(stopped)!r}).write_text('SIGTERM')\n"
            "    sys.exit(143)\n"
            "signal.signal(signal.SIGTERM, stop)\n"
            "time.sleep(30)"
        ),
    }
    manifest = workflow(
        [slow], [task("s", "slow")], arguments={"parameters": [{"name": "limit", "value": "1"}]}
    )
    run = LocalEngine(manifest, tmp_path).run({})
    assert run.nodes["s"].phase == "Failed" and "deadline" in run.nodes["s"].message
    assert run.nodes["s"].duration < 10
    assert stopped.read_text() == "SIGTERM"
    stopped.unlink()
    manifest = workflow(
        [slow, ECHO],
        [
            task("s", "slow"),
            task("e", "echo", "s", arguments={"parameters": [{"name": "text", "value": "x"}]}),
        ],
        arguments={"parameters": [{"name": "limit", "value": "60"}]},
        activeDeadlineSeconds=1,
    )
    run = LocalEngine(manifest, tmp_path).run({})
    assert run.phase == "Failed"
    assert run.nodes["s"].message == "Step exceeded its deadline"
    assert run.nodes["e"].phase == "Omitted"
    assert stopped.read_text() == "SIGTERM"


def test_a_template_timeout_ends_the_pod_that_runs_past_it(tmp_path: Path) -> None:
    """``timeout`` counts from the node's start, however long ``activeDeadlineSeconds`` is;
    Argo makes what is left of it the pod's deadline, hence the pod's deadline message."""
    waiting = {
        "name": "waiting",
        "timeout": "1s",
        "activeDeadlineSeconds": 60,
        "container": sh("exec sleep 30"),
    }
    node = LocalEngine(workflow([waiting], [task("w", "waiting")]), tmp_path).run({}).nodes["w"]
    assert (node.phase, node.message) == ("Failed", local.DEADLINE_MESSAGE)
    assert node.duration < 10
    dag_timeout = workflow([], [])
    dag_timeout["spec"]["templates"][0]["timeout"] = "1m"
    with pytest.raises(WorkflowError, match="a DAG has no timeout"):
        LocalEngine(dag_timeout, tmp_path)
    unitless = workflow([{**waiting, "timeout": "900"}], [task("w", "waiting")])
    with pytest.raises(WorkflowError, match=r"templates\.waiting\.timeout: no unit"):
        LocalEngine(unitless, tmp_path)  # Argo's validation refuses it (Go's ParseDuration)


def test_a_pod_in_its_grace_period_holds_up_no_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step that ignores SIGTERM after its deadline is killed when the grace period ends,
    while the steps beside it go on and finish meanwhile."""
    monkeypatch.setattr(local, "GRACE_S", 3.0)
    beside = {"name": "beside", "container": container("import time; time.sleep(2)")}
    manifest = workflow([STUBBORN, beside], [task("s", "stubborn"), task("b", "beside")])
    run = LocalEngine(manifest, tmp_path).run({})
    s, b = run.nodes["s"], run.nodes["b"]
    assert (s.phase, s.message) == ("Failed", local.DEADLINE_MESSAGE)
    assert 1 + 3 <= s.duration < 10  # SIGKILL once the grace period was over
    assert b.phase == "Succeeded" and b.finished < s.finished - 1


def test_a_workflow_deadline_keeps_a_pods_grace_period_and_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workflow's deadline, passing while a pod is in the grace period of its own,
    neither signals it again nor restarts that period, and the pod keeps its reason."""
    monkeypatch.setattr(local, "GRACE_S", 3.0)
    manifest = workflow([STUBBORN], [task("s", "stubborn")], activeDeadlineSeconds=2)
    run = LocalEngine(manifest, tmp_path).run({})
    s = run.nodes["s"]
    assert run.phase == "Failed" and s.message == local.DEADLINE_MESSAGE
    assert 1 + 3 <= s.duration < 2 + 3 - 0.3  # killed when its own grace period ended


def test_a_pods_processes_end_with_it(tmp_path: Path) -> None:
    """A pod is a process group, as a container is a PID namespace: what a step started
    (Dask's forkserver and workers, here a sleep) does not outlive it."""
    started = tmp_path / "child"
    spawner = {
        "name": "spawner",
        "container": container(
            "import subprocess, sys\n"
            "child = subprocess.Popen(['sleep', '300'])\n"
            f"open({str(started)!r}, 'w').write(str(child.pid))"
        ),
    }
    run = LocalEngine(workflow([spawner], [task("s", "spawner")]), tmp_path).run({})
    assert run.phase == "Succeeded"
    status = Path(f"/proc/{int(started.read_text())}/status")
    assert not status.exists() or "zombie" in status.read_text()


def test_a_stop_records_a_pod_that_had_ended_as_it_ended(tmp_path: Path) -> None:
    """A pod that ended as the run was stopped keeps its phase and outputs, and the stopped
    run has not succeeded even if every node it started did."""
    engine = LocalEngine(workflow([ECHO], []), tmp_path)
    engine._scratch_dir = tmp_path
    pod = engine._start("e", ECHO, {"inputs.parameters.text": "done", "workflow.name": "w"})
    pod.process.wait()
    nodes = {"e": local.Node(name="e", phase="Running"), "later": local.Node(name="later")}
    engine._expire(local.STOPPED, nodes, {"e": pod}, {})
    assert (nodes["e"].phase, nodes["e"].outputs) == ("Succeeded", {"out": "done"})
    assert (nodes["later"].phase, nodes["later"].message) == ("Omitted", local.STOPPED)
    assert local._phase(nodes.values(), local.STOPPED) == "Failed"
    assert local._phase(nodes.values()) == "Succeeded"


def test_a_retry_attempt_ends_at_the_backoffs_max_duration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As Argo, a retry's pod has the first attempt's start plus ``maxDuration`` as its
    deadline: the second attempt here would sleep 60 s, and is stopped 3 s after the first
    attempt started; no attempt follows."""
    monkeypatch.setattr(local, "GRACE_S", 1.0)
    tried = tmp_path / "tried"
    flaky = {
        "name": "flaky",
        "retryStrategy": {
            "limit": "5",
            "retryPolicy": "Always",
            "backoff": {"duration": "1s", "maxDuration": "3s"},
        },
        "container": container(
            "import pathlib, sys, time\n"
            f"tried = pathlib.Path({str(tried)!r})\n"
            "if not tried.exists():\n    tried.touch()\n    sys.exit(1)\n"
            "time.sleep(60)"
        ),
    }
    run = LocalEngine(workflow([flaky], [task("f", "flaky")]), tmp_path).run({})
    f = run.nodes["f"]
    assert f.phase == "Failed" and f.message.startswith(local.DEADLINE_MESSAGE)
    assert f.retries == 1 and 3 <= f.duration < 8


def test_mutex_makes_a_second_run_wait(tmp_path: Path) -> None:
    manifest = workflow(
        [ECHO],
        [task("a", "echo", arguments={"parameters": [{"name": "text", "value": "x"}]})],
        synchronization={"mutexes": [{"name": "pb-{{workflow.parameters.pb}}"}]},
        arguments={"parameters": [{"name": "pb", "value": "1"}]},
    )
    (tmp_path / ".locks").mkdir()
    with (tmp_path / ".locks" / "local.pb-1.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another run of the same PB holds it
        result: list[str] = []
        waiter = threading.Thread(
            target=lambda: result.append(LocalEngine(manifest, tmp_path).run({}).phase)
        )
        waiter.start()
        time.sleep(0.5)
        assert not result  # still waiting
        other = LocalEngine(manifest, tmp_path).run({"pb": "2"})  # another PB runs at once
        assert other.phase == "Succeeded"
        fcntl.flock(held, fcntl.LOCK_UN)
    waiter.join(timeout=30)
    assert result == ["Succeeded"]


def test_runs_needing_the_same_mutexes_in_other_orders_do_not_deadlock(tmp_path: Path) -> None:
    """Mutexes are taken all at once or not at all: a run holding one while it waits for
    another could wait forever for a run doing the same the other way round."""

    def needing(*names: str) -> dict[str, Any]:
        return workflow(
            [ECHO],
            [task("a", "echo", arguments={"parameters": [{"name": "text", "value": "x"}]})],
            synchronization={"mutexes": [{"name": name} for name in names]},
        )

    (tmp_path / ".locks").mkdir()
    results: list[str] = []

    def run_needing(*names: str) -> None:
        results.append(LocalEngine(needing(*names), tmp_path).run({}).phase)

    with (tmp_path / ".locks" / "local.y.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a third run holds y while both start
        runs = [
            threading.Thread(target=run_needing, args=names, daemon=True)
            for names in (("y", "x"), ("x", "y"))
        ]
        for run in runs:
            run.start()
            time.sleep(0.5)
        with (tmp_path / ".locks" / "local.x.lock").open("w") as free:
            fcntl.flock(free, fcntl.LOCK_EX | fcntl.LOCK_NB)  # waiting, neither holds x
        fcntl.flock(held, fcntl.LOCK_UN)
    for run in runs:
        run.join(timeout=30)
    assert results == ["Succeeded", "Succeeded"]


def test_a_stop_while_waiting_for_a_mutex_ends_the_run(tmp_path: Path) -> None:
    manifest = workflow(
        [ECHO],
        [task("a", "echo", arguments={"parameters": [{"name": "text", "value": "x"}]})],
        synchronization={"mutexes": [{"name": "pb-1"}]},
    )
    (tmp_path / ".locks").mkdir()
    before = signal.getsignal(signal.SIGTERM)
    with (tmp_path / ".locks" / "local.pb-1.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        stop = threading.Timer(0.5, os.kill, [os.getpid(), signal.SIGTERM])
        stop.start()
        try:
            with pytest.raises(WorkflowError, match="stopped while waiting for mutex pb-1"):
                LocalEngine(manifest, tmp_path).run({})
        finally:
            stop.cancel()
    assert signal.getsignal(signal.SIGTERM) == before  # the engine's handler is gone


def test_resource_field_ref_env_from_the_container_resources(tmp_path: Path) -> None:
    cpus = {
        "name": "cpus",
        "outputs": {"parameters": [output("n")]},
        "container": container(
            WRITE + ".write(os.environ['CPUS'])",
            "n",
            resources={"requests": {"cpu": "{{workflow.parameters.cpu}}"}},
            env=[
                {
                    "name": "CPUS",
                    "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1"}},
                }
            ],
        ),
    }
    manifest = workflow(
        [cpus], [task("c", "cpus")], arguments={"parameters": [{"name": "cpu", "value": "1500m"}]}
    )
    assert LocalEngine(manifest, tmp_path).run({}).nodes["c"].outputs == {"n": "2"}


def test_unsupported_fields_are_refused(tmp_path: Path) -> None:
    with pytest.raises(WorkflowError, match="memoize"):
        LocalEngine(workflow([{**ECHO, "memoize": {"key": "k"}}], []), tmp_path)


def test_the_rendered_template_is_accepted(tmp_path: Path) -> None:
    engine = LocalEngine(template_manifest(), tmp_path)
    assert engine.templates["main"]["dag"]["tasks"][0]["name"] == "claim"


def test_durations_and_quantities() -> None:
    assert seconds("1h30m") == 5400 and seconds("30") == 30 and seconds("250ms") == 0.25
    assert quantity("500m") == 0.5 and quantity("4Gi") == 4 * 2**30 and quantity("1e3") == 1000
    with pytest.raises(WorkflowError):
        seconds("soon")


SLEEP = {"name": "sleep", "container": container("import time; time.sleep(60)")}
RECORD = {  # the exit handler: records the workflow status it was given
    "name": "record",
    "outputs": {"parameters": [output("status")]},
    "container": container(WRITE + ".write(sys.argv[2])", "status", "{{workflow.status}}"),
}


def test_a_failing_exit_handler_fails_the_workflow(tmp_path):
    manifest = workflow(
        [ECHO, FAIL],
        [task("a", "echo", arguments={"parameters": [{"name": "text", "value": "x"}]})],
        onExit="fail",
    )
    run = LocalEngine(manifest, tmp_path).run({})
    assert run.nodes["a"].phase == "Succeeded"
    assert run.phase == "Failed"


def test_sigterm_stops_the_run_and_the_exit_handler_still_runs(tmp_path):
    import os
    import signal

    manifest = workflow(
        [SLEEP, ECHO, RECORD],
        [
            task("sleep", "sleep"),
            task(
                "after", "echo", "sleep", arguments={"parameters": [{"name": "text", "value": "x"}]}
            ),
        ],
        onExit="record",
    )
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    started = time.monotonic()
    run = LocalEngine(manifest, tmp_path).run({})
    assert time.monotonic() - started < 30
    assert run.phase == "Failed"
    assert run.nodes["sleep"].phase == "Failed" and run.nodes["sleep"].message == local.STOPPED
    assert run.nodes["after"].phase == "Omitted"
    assert run.nodes["record (onExit)"].outputs["status"] == "Failed"


def test_a_second_stop_does_not_stop_the_exit_handler(tmp_path):
    """As on Argo, where a stop does not stop exit handler nodes: a second SIGTERM (or
    Ctrl-C) while the exit handler runs is ignored, and the handler records the end."""
    began = tmp_path / "exit-handler-began"
    slow_record = {
        "name": "slow-record",
        "outputs": {"parameters": [output("status")]},
        "container": container(
            f"import pathlib, time; pathlib.Path({str(began)!r}).touch(); time.sleep(2)\n"
            + WRITE
            + ".write(sys.argv[2])",
            "status",
            "{{workflow.status}}",
        ),
    }
    manifest = workflow([SLEEP, slow_record], [task("sleep", "sleep")], onExit="slow-record")

    def stop_twice() -> None:
        time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)
        while not began.exists():
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_twice, daemon=True).start()
    run = LocalEngine(manifest, tmp_path).run({})
    assert run.nodes["sleep"].message == local.STOPPED
    node = run.nodes["slow-record (onExit)"]
    assert (node.phase, node.outputs) == ("Succeeded", {"status": "Failed"})
    assert run.phase == "Failed"


def test_a_daemon_that_dies_fails_the_dag(tmp_path):
    daemon = {
        "name": "daemon",
        "daemon": True,
        "container": container("import time; time.sleep(1.5); raise SystemExit(4)"),
    }
    manifest = workflow(
        [daemon, SLEEP], [task("daemon", "daemon"), task("work", "sleep", "daemon")]
    )
    run = LocalEngine(manifest, tmp_path).run({})
    assert run.phase == "Failed"
    assert run.nodes["daemon"].message == "daemon exited (code 4)"
    assert run.nodes["work"].phase == "Failed"


def test_pod_outputs_are_removed_with_the_run_and_after_a_killed_engine(tmp_path: Path) -> None:
    root = tmp_path / ".engine"  # beside the locks, under the buffer root
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a killed engine's process: gone
    stale = root / f"engine-{gone.pid}-x" / "a-outputs-y"
    running = root / f"engine-{os.getpid()}-x" / "a-outputs-y"  # an engine still running
    for directory in (stale, running):
        directory.mkdir(parents=True)
        (directory / "out").write_text("left")
    manifest = workflow(
        [ECHO], [task("a", "echo", arguments={"parameters": [{"name": "text", "value": "x"}]})]
    )
    assert LocalEngine(manifest, tmp_path).run({}).phase == "Succeeded"
    assert not stale.parent.exists()
    assert sorted(root.iterdir()) == [running.parent]
