"""The rendered manifests: golden files, Argo v4 schema (unknown keys rejected), Hera and
Kubernetes models, and the Argo features the issue asks for."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hera.workflows import models as hm
from kubernetes import client as k8s

from dag import render
from dag.cli import main
from dag.local import LocalEngine, WorkflowError, substitute
from dag.workflow import HEAVY, NAME, PB_LABEL, REQUIRED, SBI_LABEL, STEPS
from steps.buffers import PREVIEWS
from steps.params import Params
from steps.runner import OUTPUTS

SCHEMA = Path(__file__).resolve().parents[2] / "shared/data/argo/argo-workflows-v4.1.2.schema.json"
MANIFESTS = Path(__file__).resolve().parents[1] / "manifests"
ARGO_KINDS = {"Workflow", "WorkflowTemplate"}


@functools.cache
def strict_schema() -> dict[str, Any]:
    """A copy of Argo's schema where every object definition rejects unknown keys."""
    schema = copy.deepcopy(json.loads(SCHEMA.read_text()))
    for definition in schema["definitions"].values():
        if definition.get("type") == "object" and "properties" in definition:
            definition.setdefault("additionalProperties", False)
    return schema


def argo_validate(document: dict[str, Any], definition: str | None = None) -> None:
    schema = strict_schema()
    if definition is not None:
        schema = {**schema, "$ref": f"#/definitions/{definition}"}
        schema.pop("oneOf")
    jsonschema.Draft202012Validator(schema).validate(document)


def strict_k8s(data: Any, klass: str) -> Any:
    """Build a kubernetes client model, refusing keys the model does not know."""
    if klass.startswith("list["):
        return [strict_k8s(item, klass[5:-1]) for item in data]
    if klass.startswith("dict("):
        value_type = klass[5:-1].split(", ", 1)[1]
        return {key: strict_k8s(value, value_type) for key, value in data.items()}
    model = getattr(k8s, klass, None)
    if model is None:  # a primitive type or object
        return data
    known = {json_key: attr for attr, json_key in model.attribute_map.items()}
    unknown = set(data) - set(known)
    assert not unknown, f"{klass}: unknown keys {sorted(unknown)}"
    kwargs = {
        known[key]: strict_k8s(value, model.openapi_types[known[key]])
        for key, value in data.items()
    }
    return model(**kwargs)


@functools.cache
def _rendered() -> str:
    return json.dumps(render.documents())


def rendered() -> dict[str, dict[str, Any]]:
    """The rendered documents (a fresh copy of one rendering)."""
    return json.loads(_rendered())


def template() -> dict[str, Any]:
    return rendered()[f"{NAME}-template.yaml"]


def templates() -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in template()["spec"]["templates"]}


def test_golden_files_match_what_the_code_renders() -> None:
    """Checked-in manifests == rendered ones (regenerate with `batch-imaging render`)."""
    assert render.stale(MANIFESTS) == [], "run `batch-imaging render` and commit manifests/"
    on_disk = {path.name for path in MANIFESTS.glob("*.yaml")}
    assert on_disk == set(render.manifests())


def test_a_failed_check_advises_the_render_that_writes_what_it_checked(tmp_path, capsys):
    """`render --check --image X --output DIR` fails with `batch-imaging render --image X
    --output DIR`, which makes the same check pass."""
    argv = ["--image", "registry.example/batch-imaging:1", "--output", str(tmp_path / "m s")]
    assert main(["render", "--check", *argv]) == 1
    advice = f"run `batch-imaging render {argv[0]} {argv[1]} {argv[2]} '{argv[3]}'`"
    assert advice in capsys.readouterr().out
    assert main(["render", *argv]) == 0
    assert main(["render", "--check", *argv]) == 0


@pytest.mark.parametrize("name", [f"{NAME}-template.yaml", f"{NAME}-example.yaml"])
def test_argo_documents_validate_strictly_and_round_trip_through_hera(name: str) -> None:
    document = yaml.safe_load((MANIFESTS / name).read_text())
    assert document["kind"] in ARGO_KINDS
    argo_validate(document)
    model = getattr(hm, document["kind"])
    again = model.model_validate(document).model_dump(by_alias=True, exclude_none=True)
    assert again == document


def test_strict_schema_rejects_a_misspelt_key() -> None:
    document = copy.deepcopy(template())
    document["spec"]["templates"][0]["retryStrategey"] = {"limit": "1"}
    with pytest.raises(jsonschema.ValidationError, match="retryStrategey"):
        argo_validate(document)


def test_rbac_validates_against_the_kubernetes_models() -> None:
    documents = rendered()
    strict_k8s(documents["serviceaccount.yaml"], "V1ServiceAccount")
    role = strict_k8s(documents["role.yaml"], "V1Role")
    binding = strict_k8s(documents["rolebinding.yaml"], "V1RoleBinding")
    assert binding.role_ref.name == role.metadata.name
    assert binding.subjects[0].name == template()["spec"]["serviceAccountName"]
    grants = {(r.api_groups[0], r.resources[0]): set(r.verbs) for r in role.rules}
    assert grants == {
        ("argoproj.io", "workflowtaskresults"): {"create", "patch"},
        ("", "persistentvolumeclaims"): {"get", "create", "patch"},
        ("kubernetes.dask.org", "daskclusters"): {"create", "get", "delete"},
    }


def test_kustomization_lists_what_kubectl_apply_installs() -> None:
    kustomization = rendered()["kustomization.yaml"]
    assert kustomization["kind"] == "Kustomization"
    assert set(kustomization["resources"]) == {
        "serviceaccount.yaml",
        "role.yaml",
        "rolebinding.yaml",
        f"{NAME}-template.yaml",
    }
    assert all((MANIFESTS / name).is_file() for name in kustomization["resources"])


def _defaults() -> dict[str, str]:
    scope = {f"workflow.parameters.{k}": v for k, v in Params().as_strings().items()}
    return {**scope, "inputs.parameters.name": Params().buffer_vis}


def test_buffer_pvc_is_a_valid_rwx_claim_that_outlives_the_run() -> None:
    resource = templates()["buffer-pvc"]["resource"]
    assert resource["action"] == "apply"  # idempotent
    assert "setOwnerReference" not in resource  # not garbage-collected with the Workflow
    pvc = strict_k8s(
        yaml.safe_load(substitute(resource["manifest"], _defaults())), "V1PersistentVolumeClaim"
    )
    assert pvc.spec.access_modes == ["ReadWriteMany"]
    assert pvc.spec.resources.requests == {"storage": "1Gi"}
    assert pvc.spec.storage_class_name == "standard"
    assert pvc.metadata.name == Params().buffer_vis


def test_dask_cluster_is_owned_by_the_run_and_deleted_by_the_exit_handler() -> None:
    create = templates()["dask-cluster"]["resource"]
    assert create["action"] == "create" and create["setOwnerReference"] is True
    assert create["successCondition"] == "status.phase == Running"  # the operator's phase
    cluster = yaml.safe_load(substitute(create["manifest"], _defaults()))
    assert cluster["apiVersion"] == "kubernetes.dask.org/v1"
    assert cluster["spec"]["worker"]["replicas"] == 2  # an integer after substitution
    for component in ("worker", "scheduler"):
        pod = strict_k8s(cluster["spec"][component]["spec"], "V1PodSpec")
        assert pod.security_context.run_as_non_root
    strict_k8s(cluster["spec"]["scheduler"]["service"], "V1ServiceSpec")
    worker = cluster["spec"]["worker"]["spec"]["containers"][0]
    env = {e["name"]: e for e in worker["env"]}
    assert env["CPU_REQUEST"]["valueFrom"]["resourceFieldRef"]["resource"] == "requests.cpu"
    assert env["OMP_NUM_THREADS"]["value"] == "1"  # Dask threads x native threads <= CPUs
    arguments = worker["args"]
    assert arguments[arguments.index("--nthreads") + 1] == "$(CPU_REQUEST)"
    delete = templates()["dask-cluster-delete"]["resource"]
    assert delete["action"] == "delete" and "--ignore-not-found" in delete["flags"]
    exit_tasks = {t["name"]: t for t in templates()["exit"]["dag"]["tasks"]}
    assert set(exit_tasks) == {"release", "dask-cluster-delete"}
    main = {t["name"]: t for t in templates()["main"]["dag"]["tasks"]}
    assert main["dask-cluster"]["when"] == "{{workflow.parameters.dask_cluster}} == true"
    assert exit_tasks["dask-cluster-delete"]["when"] == main["dask-cluster"]["when"]


def test_workflow_template_has_the_argo_features(tmp_path: Path) -> None:
    document = template()
    metadata, spec = document["metadata"], document["spec"]
    assert metadata["annotations"]["workflows.argoproj.io/title"].startswith("**")
    assert "pb_id" in metadata["annotations"]["workflows.argoproj.io/description"]
    labels_from = spec["workflowMetadata"]["labelsFrom"]
    assert labels_from[PB_LABEL]["expression"] == "workflow.parameters.pb_id"
    assert labels_from[SBI_LABEL]["expression"] == "workflow.parameters.sbi_id"
    assert spec["onExit"] == "exit"
    assert spec["activeDeadlineSeconds"] > 0
    assert spec["podGC"]["strategy"] == "OnPodSuccess"
    assert spec["ttlStrategy"]["secondsAfterFailure"] > spec["ttlStrategy"]["secondsAfterSuccess"]
    assert spec["synchronization"] == {
        "mutexes": [
            {"name": "batch-imaging-{{workflow.parameters.pb_id}}"},
            {"name": "buffer-{{workflow.parameters.buffer_vis}}"},
            {"name": "buffer-{{workflow.parameters.buffer_img}}"},
        ]
    }
    assert spec["securityContext"]["runAsNonRoot"] is True
    # the buffers' ownership is changed only when their root's is wrong, not on every mount
    assert spec["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
    arguments = {p["name"]: p for p in spec["arguments"]["parameters"]}
    assert list(arguments) == list(Params.model_fields)
    assert all(p["description"] for p in arguments.values())
    defaults = Params().as_strings()
    assert {n: p["value"] for n, p in arguments.items() if n not in REQUIRED} == {
        n: v for n, v in defaults.items() if n not in REQUIRED
    }
    # what names the claim, the PVCs and the mutexes, and the database the pods reach, has
    # no shared default: a submission must give it (Argo refuses one without), as the local
    # engine does
    assert {"pb_id", "buffer_vis", "buffer_img", "config_db"} == set(REQUIRED)
    assert not [n for n in REQUIRED if "value" in arguments[n]]
    given = {n: v for n, v in defaults.items() if n != "buffer_img"}
    with pytest.raises(WorkflowError, match=r"spec.arguments.buffer_img.value is required"):
        LocalEngine(document, tmp_path).run(given)


def test_every_step_container_is_hardened_and_sized() -> None:
    for step in (*STEPS, "release"):
        tpl = templates()[step]
        container = tpl["container"]
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
        assert "shell" not in container["command"][0] and container["command"] == [NAME]
        assert {"requests", "limits"} <= set(container["resources"])
        if step in HEAVY:
            assert container["resources"]["requests"]["cpu"] == (
                "{{workflow.parameters.cpu_request}}"
            )
            assert tpl["activeDeadlineSeconds"] == "{{workflow.parameters.step_deadline_s}}"
            env = {e["name"]: e for e in container["env"]}
            assert env["PYTHON_CPU_COUNT"]["valueFrom"]["resourceFieldRef"]["resource"] == (
                "requests.cpu"
            )
        outputs = [p["name"] for p in tpl.get("outputs", {}).get("parameters", [])]
        assert outputs == list(OUTPUTS[step])


def test_retries_and_the_buffer_wait() -> None:
    """Step pods are retried as their expression decides (tests/test_local_engine.py runs
    it), with no maxDuration; the exit handler on any failure; the claim daemon never, nor
    the buffer wait, whose timeout fails it if the buffers never bind (Argo fails a Pending
    node past its timeout, but a retried template's node is its Retry node, never Pending)."""
    for name, tpl in templates().items():
        if "container" not in tpl:
            continue
        strategy = tpl.get("retryStrategy")
        if name in ("claim", "buffer-reserve"):
            assert strategy is None, name
            continue
        assert strategy["retryPolicy"] == "Always" and strategy["limit"] == "3"
        assert "maxDuration" not in strategy["backoff"]
        assert ("expression" in strategy) == (name != "release")
    assert templates()["buffer-reserve"]["timeout"] == "15m"


def test_outputs_the_ui_shows() -> None:
    names = {
        p["name"] for t in templates().values() for p in t.get("outputs", {}).get("parameters", [])
    }
    assert {"restored_peak_jy", "dynamic_range", "phase_rms_rad", "restored"} <= names


def test_report_artifacts_run_instead_of_the_report_when_asked() -> None:
    report, with_artifacts = templates()["report"], templates()["report-artifacts"]
    assert with_artifacts["container"] == report["container"]
    assert with_artifacts["outputs"]["parameters"] == report["outputs"]["parameters"]
    assert "artifacts" not in report["outputs"]
    artifacts = {a["name"]: a for a in with_artifacts["outputs"]["artifacts"]}
    assert set(artifacts) == {"report", *(name.replace("_", "-") for name in PREVIEWS)}
    image_buffer = "/buffer/{{workflow.parameters.buffer_img}}/"
    for name, artifact in artifacts.items():
        assert artifact["archive"] == {"none": {}}  # the UI shows unarchived HTML and PNG
        assert artifact["path"].startswith(image_buffer)
        assert artifact.get("optional", False) == (name != "report")
    tasks = {t["name"]: t for t in templates()["main"]["dag"]["tasks"]}
    assert tasks["report"]["depends"] == tasks["report-artifacts"]["depends"] == "image"
    assert tasks["report"]["when"] == "{{workflow.parameters.artifacts}} != true"
    assert tasks["report-artifacts"]["when"] == "{{workflow.parameters.artifacts}} == true"


def test_example_runs_the_template_with_a_title_and_labels() -> None:
    example = rendered()[f"{NAME}-example.yaml"]
    assert example["spec"]["workflowTemplateRef"] == {"name": NAME}
    assert render.EXAMPLE_PB in example["metadata"]["annotations"]["workflows.argoproj.io/title"]
    assert example["metadata"]["labels"][PB_LABEL] == render.EXAMPLE_PB
    values = {p["name"]: p["value"] for p in example["spec"]["arguments"]["parameters"]}
    assert values["pb_id"] == render.EXAMPLE_PB and values["nfreqwin"] == "8"


def test_image_is_one_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_IMAGING_IMAGE", "registry.example/batch-imaging:9.9")
    images = {
        t["container"]["image"]
        for t in render.template_manifest()["spec"]["templates"]
        if "container" in t
    }
    assert images == {"registry.example/batch-imaging:9.9"}
    images = {
        t["container"]["image"]
        for t in render.template_manifest("other:1")["spec"]["templates"]
        if "container" in t
    }
    assert images == {"other:1"}
