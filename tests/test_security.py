"""Security: a static check, no shell anywhere, locked-down pods, no credentials in manifests."""

import ast
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).parents[1]
SOURCES = sorted([*ROOT.glob("steps/**/*.py"), *ROOT.glob("dag/**/*.py")])


def test_bandit_finds_nothing():
    result = subprocess.run(
        [sys.executable, "-m", "bandit", "-q", "-c", "pyproject.toml", "-r", "steps", "dag"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_shell_is_ever_used():
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "shell":
                raise AssertionError(f"{path}: shell= keyword")
            if isinstance(node, ast.Attribute) and node.attr in {"system", "popen"}:
                raise AssertionError(f"{path}:{node.lineno}: os.{node.attr}")


def manifests() -> list[dict]:
    return [
        doc
        for path in sorted((ROOT / "manifests").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def test_every_pod_is_locked_down():
    template = next(d for d in manifests() if d["kind"] == "WorkflowTemplate")
    pod = template["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True
    for step in template["spec"]["templates"]:
        container = step.get("container")
        if container is None:
            continue
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, step["name"]
        assert context["capabilities"]["drop"] == ["ALL"], step["name"]
        assert context.get("privileged") in (None, False), step["name"]
        # parameters reach the program as separate argv items, never through a shell
        assert container["command"] == ["batch-imaging"], step["name"]
        for arg in container["args"]:
            assert "{{" not in arg or arg.count("{{") == 1, arg


def test_no_credentials_in_manifests():
    text = "\n".join(p.read_text() for p in (ROOT / "manifests").glob("*.yaml")).lower()
    for word in ("password:", "token:", "secret:", "bearer "):
        assert word not in text, word
