"""Buffer manifests: every product's size, sha256, producing step (and block), the step's key.

Each buffer holds ``manifest.json``. After a step succeeds, the files it created or changed in
the run's buffers are hashed and recorded with the step's *key*: a hash of the parameters that
shape the products and of every file the earlier steps recorded (its inputs). A re-run skips a
step whose recorded key matches and whose files still verify, so a run killed part-way resumes
from the last complete step and gives the same products.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from steps import atomic

NAME = "manifest.json"
LEFTOVER = re.compile(r"\.(tmp|old)-|\.tmp$")
SCHEMA = 1


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ManifestError(ValueError):
    """A buffer's manifest that cannot be read: its path and why."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"{path}: {why}")
        self.why = why


def load(buffer: Path) -> dict[str, Any]:
    """The buffer's manifest (an empty one if it has none)."""
    path = buffer / NAME
    if not path.is_file():
        return {"schema": SCHEMA, "files": {}, "steps": {}}
    try:
        manifest = json.loads(path.read_text())
        records = [*manifest["files"].values(), *manifest["steps"].values()]
        if not all(isinstance(record, dict) for record in records):
            raise TypeError("not a manifest: its files and steps are not records")
    except (ValueError, AttributeError, KeyError, TypeError) as exc:
        why = f"unreadable ({type(exc).__name__}: {exc})"
        what = f"{why}; remove it to have the buffer's products made anew"
        raise ManifestError(path, what) from None
    return manifest


def save(buffer: Path, manifest: dict[str, Any]) -> None:
    atomic.write_json(buffer / NAME, manifest, indent=1, sort_keys=True)


def _files(buffer: Path) -> Iterable[Path]:
    """Product files of a buffer: everything but the manifest and hidden temporaries."""
    for path in sorted(buffer.rglob("*")):
        relative = path.relative_to(buffer)
        if path.is_file() and relative.name != NAME and not relative.parts[0].startswith("."):
            yield path


def snapshot(buffers: Iterable[Path]) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every product file, to tell afterwards what a step changed."""
    return {
        str(path): (stat.st_size, stat.st_mtime_ns)
        for buffer in buffers
        if buffer.is_dir()
        for path in _files(buffer)
        for stat in (path.stat(),)
    }


def recorded_files(buffers: Iterable[Path], steps: Iterable[str]) -> list[tuple[str, str]]:
    """(buffer, file) of everything recorded by ``steps`` (a step's upstream)."""
    upstream = set(steps)
    return sorted(
        (buffer.name, name)
        for buffer in buffers
        for name, entry in load(buffer)["files"].items()
        if entry["step"] in upstream
    )


def step_key(
    step: str, params: dict[str, Any], buffers: list[Path], inputs: list[tuple[str, str]]
) -> str | None:
    """Hash of a step's parameters (``runner.key_parameters``) and of its input files'
    recorded sha256 (None if one is no longer recorded)."""
    digests = {
        (buffer.name, name): entry["sha256"]
        for buffer in buffers
        for name, entry in load(buffer)["files"].items()
    }
    if any(tuple(item) not in digests for item in inputs):
        return None
    hashed = [(*item, digests[tuple(item)]) for item in inputs]
    text = json.dumps({"step": step, "params": params, "inputs": hashed}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def record(
    buffers: list[Path],
    step: str,
    params: dict[str, Any],
    inputs: list[tuple[str, str]],
    before: dict[str, tuple[int, int]],
    outputs: dict[str, str],
    pb_id: str,
) -> None:
    """Record what ``step`` of processing block ``pb_id`` created or changed since ``before``
    (it read ``inputs``, recorded by the steps before it); drop files that vanished."""
    key = step_key(step, params, buffers, inputs)
    for buffer in buffers:
        if not buffer.is_dir():
            continue
        manifest = load(buffer)
        files = {name: e for name, e in manifest["files"].items() if (buffer / name).is_file()}
        for path in _files(buffer):
            stat = path.stat()
            if before.get(str(path)) != (stat.st_size, stat.st_mtime_ns):
                files[str(path.relative_to(buffer))] = {
                    "size": stat.st_size,
                    "sha256": sha256(path),
                    "step": step,
                    "key": key,
                    "pb_id": pb_id,
                }
        steps = manifest["steps"]
        if any(entry["step"] == step for entry in files.values()):
            steps[step] = {"key": key, "inputs": inputs, "outputs": outputs}
        save(buffer, {"schema": SCHEMA, "files": files, "steps": steps})


def completed(buffers: list[Path], step: str, params: dict[str, Any]) -> dict[str, str] | None:
    """The recorded outputs of ``step`` if its parameters and inputs are unchanged since it
    completed and its files verify; else None."""
    outputs: dict[str, str] | None = None
    for buffer in buffers:
        manifest = load(buffer)
        done = manifest["steps"].get(step)
        if done is None:
            continue
        if done["key"] != step_key(step, params, buffers, done["inputs"]):
            return None
        mine = {n: e for n, e in manifest["files"].items() if e["step"] == step}
        if any(problem(buffer, name, entry) for name, entry in mine.items()):
            return None
        outputs = {**(outputs or {}), **done["outputs"]}
    return outputs


def problem(buffer: Path, name: str, entry: dict[str, Any]) -> str | None:
    """What is wrong with one recorded file, or None."""
    path = buffer / name
    if not path.is_file():
        return f"{name}: missing"
    if path.stat().st_size != entry["size"]:
        return f"{name}: size {path.stat().st_size} != recorded {entry['size']}"
    if sha256(path) != entry["sha256"]:
        return f"{name}: sha256 differs from the record (written by {entry['step']})"
    return None


def verify(buffer: Path) -> list[str]:
    """Every problem found in a buffer: missing, changed or unrecorded files."""
    if not (buffer / NAME).is_file():
        return [f"no {NAME} (not a buffer written by batch-imaging)"]
    try:
        files = load(buffer)["files"]
    except ManifestError as exc:
        return [f"{NAME}: {exc.why}"]
    problems = [p for name, entry in files.items() if (p := problem(buffer, name, entry))]
    problems += [
        f"{path.relative_to(buffer)}: not in the manifest"
        for path in _files(buffer)
        if str(path.relative_to(buffer)) not in files
    ]
    return problems


def remove_temporaries(buffers: Iterable[Path]) -> list[Path]:
    """Delete hidden leftovers of a killed writer (``.name.tmp-*``, ``.name.old-*``)."""
    removed = []
    for buffer in buffers:
        if not buffer.is_dir():
            continue
        leftovers = [p for p in buffer.rglob(".*") if LEFTOVER.search(p.name)]
        for path in sorted(leftovers, key=lambda p: len(p.parts)):
            if not path.exists():  # inside a directory removed just before
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed
