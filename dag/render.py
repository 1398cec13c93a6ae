"""Render the Hera definition to the checked-in YAML in ``manifests/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from dag.workflow import NAME, workflow_template
from steps.params import Params

MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "batch_imaging.json"


def template_manifest(image: str | None = None) -> dict[str, Any]:
    """The WorkflowTemplate as a dict (what the local engine runs and Argo stores)."""
    return workflow_template(image).to_dict()


def example_manifest(params: Params) -> dict[str, Any]:
    """A Workflow that runs the template with the given parameters (``argo submit`` it)."""
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": f"{NAME}-"},
        "spec": {
            "workflowTemplateRef": {"name": NAME},
            "arguments": {
                "parameters": [
                    {"name": name, "value": value} for name, value in params.as_strings().items()
                ]
            },
        },
    }


def manifests(image: str | None = None) -> dict[str, str]:
    """File name -> YAML text of every rendered manifest."""
    example = Params.model_validate(json.loads(EXAMPLE.read_text()))
    documents = {
        f"{NAME}-template.yaml": template_manifest(image),
        f"{NAME}-example.yaml": example_manifest(example),
    }
    return {name: dump(doc) for name, doc in documents.items()}


def dump(document: dict[str, Any]) -> str:
    return yaml.safe_dump(document, sort_keys=False, width=100)


def write(directory: Path = MANIFESTS, image: str | None = None) -> list[Path]:
    """Write the manifests; return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in manifests(image).items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


def stale(directory: Path = MANIFESTS, image: str | None = None) -> list[str]:
    """Names of the manifests whose checked-in text differs from what the code renders."""
    return [
        name
        for name, text in manifests(image).items()
        if not (directory / name).is_file() or (directory / name).read_text() != text
    ]
