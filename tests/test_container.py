"""Dockerfile and .dockerignore checks (no docker engine here, and no hadolint package in the
registries we use): multi-stage, pinned slim base, non-root user, no ``latest``, no build
tools or caches in the final stage, OCI labels, ``batch-imaging`` entry point."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "containers" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, rest))
    return result


def base_image() -> str:
    args = dict(
        rest.split("=", 1) for keyword, rest in instructions() if keyword == "ARG" and "=" in rest
    )
    return args["PYTHON_IMAGE"]


def test_multi_stage_from_a_pinned_slim_python() -> None:
    assert len(stages()) >= 2
    image = base_image()
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", image)
    assert all(rest.split()[0] == "${PYTHON_IMAGE}" for k, rest in instructions() if k == "FROM")
    assert "latest" not in DOCKERFILE.read_text()


def test_final_stage_is_lean_and_non_root() -> None:
    final = stages()[-1]
    keywords = [k for k, _ in final]
    users = [rest for k, rest in final if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")
    runs = " ".join(rest for k, rest in final if k == "RUN")
    for tool in ("pip install", "apt-get", "gcc", "build-essential", "git"):
        assert tool not in runs, f"{tool} in the final stage"
    copies = [rest for k, rest in final if k == "COPY"]
    assert copies == ["--from=build /opt/batch-imaging /opt/batch-imaging"]  # the venv only
    build = " ".join(rest for k, rest in stages()[0] if k in ("RUN", "ENV"))
    assert "PIP_NO_CACHE_DIR=1" in build  # no pip cache to copy


def test_entrypoint_labels_and_read_only_root_settings() -> None:
    final = dict(stages()[-1])
    assert json.loads(final["ENTRYPOINT"]) == ["batch-imaging"]
    labels = dict(
        item.split("=", 1) for _, rest in stages()[-1] if _ == "LABEL" for item in shlex.split(rest)
    )
    for key in ("title", "description", "version", "licenses", "source"):
        assert f"org.opencontainers.image.{key}" in labels
    env = " ".join(rest for k, rest in stages()[-1] if k == "ENV")
    for variable in ("HOME=/tmp", "NUMBA_CACHE_DIR=/tmp", "BATCH_IMAGING_BUFFER_ROOT=/buffer"):
        assert variable in env


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    for entry in (".venv", "buffers", ".pytest_cache", ".ruff_cache", "**/__pycache__", "tests"):
        assert entry in ignored
    copied = {
        source
        for keyword, rest in stages()[0]
        if keyword == "COPY" and "--from" not in rest
        for source in rest.split()[:-1]
    }
    for path in copied:
        assert f"!{path}" in ignored or f"!{path}/" in ignored, f"{path} is not in the context"


def test_image_user_matches_the_pod_security_context() -> None:
    from dag.workflow import UID

    user = next(rest for k, rest in stages()[-1] if k == "USER")
    assert user == f"{UID}:{UID}"
