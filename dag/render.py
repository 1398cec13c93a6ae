"""Render the Hera definition and its Kubernetes companions to ``manifests/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from dag.workflow import (
    DESCRIPTION,
    NAME,
    PB_LABEL,
    SBI_LABEL,
    SERVICE_ACCOUNT,
    TITLE,
    workflow_template,
)
from steps.params import Params

MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "batch_imaging.json"
EXAMPLE_PB = "pb-mvp01-20200523-00001"
EXAMPLE_SBI = "sbi-mvp01-20200523-00000"
EXAMPLE_CONFIG_DB = "etcd://sdp-etcd.sdp:2379"  # as manifests/README.md installs it
LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "ska-sdp"}
# What the workflow's pods do with the Kubernetes API, and nothing more.
RULES = [
    {  # the Argo executor reports outputs and progress as WorkflowTaskResults
        "apiGroups": ["argoproj.io"],
        "resources": ["workflowtaskresults"],
        "verbs": ["create", "patch"],
    },
    {  # buffer-pvc: `kubectl apply` of the buffer PVCs (get, then create or patch)
        "apiGroups": [""],
        "resources": ["persistentvolumeclaims"],
        "verbs": ["get", "create", "patch"],
    },
    {  # dask-cluster / dask-cluster-delete, only with dask_cluster=true
        "apiGroups": ["kubernetes.dask.org"],
        "resources": ["daskclusters"],
        "verbs": ["create", "get", "delete"],  # get: Argo polls its successCondition
    },
]


def template_manifest(image: str | None = None) -> dict[str, Any]:
    """The WorkflowTemplate as a dict (what the local engine runs and Argo stores)."""
    return workflow_template(image).to_dict()


def title_annotations(params: Params) -> dict[str, str]:
    """Argo UI title and description (Markdown) of one run."""
    sbi = f" of SBI `{params.sbi_id}`" if params.sbi_id else ""
    return {
        TITLE: f"**Batch imaging** `{params.pb_id}`",
        DESCRIPTION: f"Processing block `{params.pb_id}`{sbi}: {params.nfreqwin} windows, "
        f"{params.npixel}² pixels; products in PVCs `{params.buffer_vis}`, `{params.buffer_img}`",
    }


def run_labels(params: Params) -> dict[str, str]:
    """Labels of one run (Argo also sets them from the template's labelsFrom)."""
    return {PB_LABEL: params.pb_id, SBI_LABEL: params.sbi_id}


def example_manifest(params: Params) -> dict[str, Any]:
    """A Workflow that runs the template with the given parameters (``argo submit`` it)."""
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {
            "generateName": f"{NAME}-",
            "annotations": title_annotations(params),
            "labels": run_labels(params),
        },
        "spec": {
            "workflowTemplateRef": {"name": NAME},
            "arguments": {
                "parameters": [
                    {"name": name, "value": value} for name, value in params.as_strings().items()
                ]
            },
        },
    }


def rbac_manifests() -> dict[str, dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding of the workflow's pods."""
    metadata = {"name": SERVICE_ACCOUNT, "labels": LABELS}
    return {
        "serviceaccount.yaml": {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata},
        "role.yaml": {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": metadata,
            "rules": RULES,
        },
        "rolebinding.yaml": {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": metadata,
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": SERVICE_ACCOUNT,
            },
            "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT}],
        },
    }


def kustomization(resources: list[str]) -> dict[str, Any]:
    """``kubectl apply -k manifests/``: RBAC and the WorkflowTemplate (not the example run)."""
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": resources,
    }


def documents(image: str | None = None) -> dict[str, dict[str, Any]]:
    """File name -> document of every rendered manifest."""
    raw = json.loads(EXAMPLE.read_text())
    example = Params.model_validate(
        {**raw, "pb_id": EXAMPLE_PB, "sbi_id": EXAMPLE_SBI, "config_db": EXAMPLE_CONFIG_DB}
    )
    installed = {**rbac_manifests(), f"{NAME}-template.yaml": template_manifest(image)}
    return {
        **installed,
        "kustomization.yaml": kustomization(list(installed)),
        f"{NAME}-example.yaml": example_manifest(example),
    }


def manifests(image: str | None = None) -> dict[str, str]:
    """File name -> YAML text of every rendered manifest."""
    return {name: dump(doc) for name, doc in documents(image).items()}


def dump(document: dict[str, Any]) -> str:
    return yaml.safe_dump(document, sort_keys=False, width=100, allow_unicode=True)


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
