"""The batch-imaging DAG, defined once with Hera.

claim -> buffer PVCs -> buffer-reserve -> simulate -> corrupt -> calibrate -> image -> report
(its artifacts when asked for), with an
optional DaskCluster beside them, and the ``exit`` DAG (release, DaskCluster removal) as the
exit handler. Every step is a container template running ``batch-imaging step <name>`` with
the workflow parameters passed as separate arguments (never through a shell).
"""

from __future__ import annotations

import itertools
import os
from importlib.metadata import version
from pathlib import Path

import yaml
from hera.workflows import DAG, Artifact, Container, Parameter, Resource, WorkflowTemplate
from hera.workflows import models as m

from steps.buffers import PREVIEWS, Buffers
from steps.params import Params
from steps.runner import DAEMON_STEP, EXIT_STEP, OUTPUTS, STEPS

NAME = "batch-imaging"
SERVICE_ACCOUNT = NAME
BUFFERS = {"buffer-vis": "buffer_vis", "buffer-img": "buffer_img"}
HEAVY = {"simulate", "corrupt", "calibrate", "image", "report"}
# the report step as a second template whose previews and report.html are output artifacts
# (run instead of ``report`` when the ``artifacts`` parameter is true: Argo fails a step
# with output artifacts if no artifact repository is configured)
ARTIFACTS_STEP = "report"
ARTIFACTS_TEMPLATE = f"{ARTIFACTS_STEP}-artifacts"
ARTIFACTS_ON = "{{workflow.parameters.artifacts}} == true"
ARTIFACTS_OFF = "{{workflow.parameters.artifacts}} != true"
RESERVE_STEP = "buffer-reserve"  # the first pod to mount the buffers: waits for them to bind
MOUNTS_BUFFERS = HEAVY | {RESERVE_STEP}
OUTPUTS_DIR = "/tmp/outputs"  # nosec B108 - on the pod's /tmp emptyDir
IMAGE_ENV = "BATCH_IMAGING_IMAGE"
UID = 10001  # the image's non-root user

PB_LABEL = "sdp.skao.int/pb-id"
SBI_LABEL = "sdp.skao.int/sbi-id"
TITLE = "workflows.argoproj.io/title"
DESCRIPTION = "workflows.argoproj.io/description"
WORKFLOW_DEADLINE_S = 7 * 86400  # a safety net; each heavy step has step_deadline_s
DASK_CLUSTER = "proc-{{workflow.parameters.pb_id}}-dask"
LIGHT = m.ResourceRequirements(
    requests={"cpu": "100m", "memory": "256Mi"}, limits={"cpu": "1", "memory": "1Gi"}
)
HEAVY_RESOURCES = m.ResourceRequirements(
    requests={
        "cpu": "{{workflow.parameters.cpu_request}}",
        "memory": "{{workflow.parameters.memory_request}}",
    },
    limits={
        "cpu": "{{workflow.parameters.cpu_limit}}",
        "memory": "{{workflow.parameters.memory_limit}}",
    },
)
# Step pods that the cluster ended are retried: Argo's Errors (pod deleted, node lost) and
# the Failures of evicted, preempted or drained pods, whose step was stopped by SIGTERM (exit
# code 143), killed after its grace period (137) or left no exit code (-1); not a pod past
# its deadline or its memory limit (OOMKilled), nor a step that failed on its own (exit code
# 1: runtime, 2: bad input, or a crash such as 139), as it would again.
# No maxDuration: activeDeadlineSeconds bounds each attempt, and Argo would count it from the
# first attempt's start and impose it as the retries' deadline.
POD_BACKOFF = m.Backoff(duration="30s", factor="2", cap="5m")
POD_RETRY = m.RetryStrategy(
    limit="3",
    retry_policy="Always",
    expression='lastRetry.status == "Error" || (lastRetry.exitCode in ["-1", "137", "143"] '
    '&& !(lastRetry.message matches "deadline|OOMKilled"))',
    backoff=POD_BACKOFF,
)
# The exit handler is idempotent: retried on any failure (a configuration DB down for longer
# than its own reconnection window), so that a run never leaves its block RUNNING.
RELEASE_RETRY = m.RetryStrategy(limit="3", retry_policy="Always", backoff=POD_BACKOFF)
# A PVC that never binds (e.g. its class has no RWX) leaves the pods mounting it Pending,
# where no activeDeadlineSeconds counts: the first of them, buffer-reserve, fails after this
# template timeout, which counts Pending (Argo fails a Pending node past it, though not under a
# retryStrategy, whose Retry node is never Pending), rather than hold the PB and its mutexes
# until the workflow's deadline.
BUFFER_WAIT = "15m"
# Kubernetes API calls of resource templates are retried on Argo's transient errors.
API_RETRY = m.RetryStrategy(
    limit="5",
    retry_policy="OnTransientError",
    backoff=m.Backoff(duration="5s", factor="2", cap="1m", max_duration="10m"),
)
CONTAINER_SECURITY = m.SecurityContext(
    allow_privilege_escalation=False,
    read_only_root_filesystem=True,
    run_as_non_root=True,
    capabilities=m.Capabilities(drop=["ALL"]),
)
POD_SECURITY = m.PodSecurityContext(
    run_as_non_root=True,
    run_as_user=UID,
    run_as_group=UID,
    fs_group=UID,
    # else Kubernetes changes the ownership and mode of every file of a volume at each mount
    fs_group_change_policy="OnRootMismatch",
    seccomp_profile=m.SeccompProfile(type="RuntimeDefault"),
)


def default_image() -> str:
    """The container image reference: ``$BATCH_IMAGING_IMAGE`` or batch-imaging:<version>."""
    return os.environ.get(IMAGE_ENV, f"{NAME}:{version('batch-imaging')}")


def _parameter_args() -> list[str]:
    args: list[str] = []
    for name in Params.model_fields:
        args += ["-p", f"{name}={{{{workflow.parameters.{name}}}}}"]
    return args


def _pod_buffer(parameter: str) -> str:
    """Where a buffer (named by a workflow parameter) is mounted in the pods."""
    return f"/buffer/{{{{workflow.parameters.{parameter}}}}}"


def _buffer_mounts() -> list[m.VolumeMount]:
    return [
        m.VolumeMount(name=volume, mount_path=_pod_buffer(parameter))
        for volume, parameter in BUFFERS.items()
    ]


def _buffer_volumes() -> list[m.Volume]:
    return [
        m.Volume(
            name=volume,
            persistent_volume_claim=m.PersistentVolumeClaimVolumeSource(
                claim_name=f"{{{{workflow.parameters.{parameter}}}}}"
            ),
        )
        for volume, parameter in BUFFERS.items()
    ]


def _tmp_mount() -> m.VolumeMount:
    return m.VolumeMount(name="tmp", mount_path="/tmp")  # nosec B108 - an emptyDir


def _env(step: str) -> list[m.EnvVar]:
    env = [
        m.EnvVar(name="BATCH_IMAGING_OUTPUTS", value=OUTPUTS_DIR),
        m.EnvVar(name="WORKFLOW_NAME", value="{{workflow.name}}"),
        m.EnvVar(name="WORKFLOW_UID", value="{{workflow.uid}}"),  # one run of that name
    ]
    if step == EXIT_STEP:
        env.append(m.EnvVar(name="WORKFLOW_STATUS", value="{{workflow.status}}"))
    if step in HEAVY:
        env += [
            m.EnvVar(name="DASK_SCHEDULER_ADDRESS", value="{{workflow.parameters.dask_scheduler}}"),
            # the CPU request (rounded up to whole cores), read by ``processes.cores`` so
            # that the LocalCluster's workers x threads fit the pod's share of the node
            m.EnvVar(
                name="PYTHON_CPU_COUNT",
                value_from=m.EnvVarSource(
                    resource_field_ref=m.ResourceFieldSelector(resource="requests.cpu", divisor="1")
                ),
            ),
        ]
    return env


def report_artifacts() -> list[Artifact]:
    """The report step's products as output artifacts, uncompressed so that the Argo UI
    shows them: report.html and each preview (optional: a preview whose input is missing is
    not written)."""
    buffers = Buffers(
        vis=Path(_pod_buffer(BUFFERS["buffer-vis"])), img=Path(_pod_buffer(BUFFERS["buffer-img"]))
    )
    none = m.ArchiveStrategy(none=m.NoneStrategy())
    return [
        Artifact(name="report", path=str(buffers.report), archive=none),
        *(
            Artifact(
                name=name.replace("_", "-"),
                path=str(buffers.preview(name)),
                archive=none,
                optional=True,
            )
            for name in PREVIEWS
        ),
    ]


def _retry_strategy(step: str) -> m.RetryStrategy | None:
    """The claim daemon is not retried, nor is the buffer wait (its timeout needs no retry
    strategy); the exit handler is retried on any failure, the other steps as POD_RETRY."""
    if step in (DAEMON_STEP, RESERVE_STEP):
        return None
    return RELEASE_RETRY if step == EXIT_STEP else POD_RETRY


def _container(step: str, image: str, name: str | None = None) -> Container:
    daemon = step == DAEMON_STEP  # holds the lease-bound claim while the DAG runs
    outputs: list[Parameter | Artifact] = [
        Parameter(name=output, value_from=m.ValueFrom(path=f"{OUTPUTS_DIR}/{output}", default=""))
        for output in OUTPUTS[step]
    ]
    if name == ARTIFACTS_TEMPLATE:
        outputs += report_artifacts()
    return Container(
        name=name or step,
        daemon=daemon or None,
        readiness_probe=m.Probe(
            exec=m.ExecAction(command=["test", "-s", f"{OUTPUTS_DIR}/claimed"]),
            period_seconds=2,
        )
        if daemon
        else None,
        image=image,
        command=[NAME],
        args=["step", step, *_parameter_args()],
        env=_env(step),
        resources=HEAVY_RESOURCES if step in HEAVY else LIGHT,
        security_context=CONTAINER_SECURITY,
        volume_mounts=[_tmp_mount(), *(_buffer_mounts() if step in MOUNTS_BUFFERS else [])],
        active_deadline_seconds="{{workflow.parameters.step_deadline_s}}"
        if step in HEAVY
        else None,
        timeout=BUFFER_WAIT if step == RESERVE_STEP else None,
        retry_strategy=_retry_strategy(step),
        outputs=outputs or None,
    )


def _labels() -> dict[str, str]:
    return {
        "app.kubernetes.io/name": NAME,
        "app.kubernetes.io/part-of": "ska-sdp",
        PB_LABEL: "{{workflow.parameters.pb_id}}",
    }


def buffer_pvc_manifest() -> dict:
    """The buffer PVC a ``buffer-pvc`` task applies (name from its input parameter)."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "{{inputs.parameters.name}}", "labels": _labels()},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "storageClassName": "{{workflow.parameters.buffer_storage_class}}",
            "resources": {"requests": {"storage": "{{workflow.parameters.buffer_size}}"}},
        },
    }


def _worker_env() -> list[m.EnvVar]:
    """A DaskCluster worker runs one Dask thread per requested CPU (``--nthreads
    $(CPU_REQUEST)``), so the native thread pools are single-threaded: threads x native
    threads stay within the request, the rule of ``steps.dask_ee``."""
    from steps.dask_ee import THREAD_ENV

    cpus = m.EnvVarSource(
        resource_field_ref=m.ResourceFieldSelector(resource="requests.cpu", divisor="1")
    )
    return [
        m.EnvVar(name="CPU_REQUEST", value_from=cpus),
        *(m.EnvVar(name=name, value="1") for name in THREAD_ENV),
    ]


def _dask_pod(image: str, component: str, args: list[str], ports: dict[str, int]) -> dict:
    worker = component == "worker"
    mounts = [_tmp_mount(), *(_buffer_mounts() if worker else [])]
    volumes = [m.Volume(name="tmp", empty_dir=m.EmptyDirVolumeSource())]
    if worker:
        volumes += _buffer_volumes()
    container = m.Container(
        name=component,
        image=image,
        command=["dask", component],
        args=args,
        env=_worker_env() if worker else None,
        ports=[m.ContainerPort(name=n, container_port=p, protocol="TCP") for n, p in ports.items()],
        resources=HEAVY_RESOURCES if worker else LIGHT,
        security_context=CONTAINER_SECURITY,
        volume_mounts=mounts,
    )
    return {
        "containers": [_dump(container)],
        "securityContext": _dump(POD_SECURITY),
        "volumes": [_dump(volume) for volume in volumes],
    }


def _dump(model: m.BaseModel) -> dict:
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")


def dask_cluster_manifest(image: str) -> dict:
    """The DaskCluster (kubernetes.dask.org/v1) of the heavy steps, when dask_cluster is set."""
    scheduler_ports = {"tcp-comm": 8786, "http-dashboard": 8787}
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskCluster",
        "metadata": {"name": DASK_CLUSTER, "labels": _labels()},
        "spec": {
            "worker": {
                "replicas": "{{workflow.parameters.n_workers}}",
                "spec": _dask_pod(
                    image,
                    "worker",
                    [
                        *("--name", "$(DASK_WORKER_NAME)", "--dashboard-address", ":8788"),
                        *("--nworkers", "1", "--nthreads", "$(CPU_REQUEST)"),
                    ],
                    {"http-dashboard": 8788},
                ),
            },
            "scheduler": {
                "spec": _dask_pod(image, "scheduler", [], scheduler_ports),
                "service": {
                    "type": "ClusterIP",
                    "selector": {
                        "dask.org/cluster-name": DASK_CLUSTER,
                        "dask.org/component": "scheduler",
                    },
                    "ports": [
                        {"name": n, "protocol": "TCP", "port": p, "targetPort": n}
                        for n, p in scheduler_ports.items()
                    ],
                },
            },
        },
    }


def _manifest(document: dict) -> str:
    # n_workers must become a YAML integer after substitution: unquote that one value
    text = yaml.safe_dump(document, sort_keys=False, width=100)
    return text.replace("'{{workflow.parameters.n_workers}}'", "{{workflow.parameters.n_workers}}")


def dask_scheduler_address(pb_id: str) -> str:
    """The scheduler of the DaskCluster a run with ``dask_cluster`` creates."""
    return f"tcp://{DASK_CLUSTER.replace('{{workflow.parameters.pb_id}}', pb_id)}-scheduler:8786"


# what names the run's claim, PVCs and mutexes, and the database the pods reach: given at
# every submission (Argo refuses a workflow without them), never a shared placeholder default
# (an empty config_db would be the pod's own 127.0.0.1:2379)
REQUIRED = {
    "pb_id": "Processing block id (required)",
    "config_db": "Configuration DB the pods reach, etcd://HOST:PORT (required)",
    "buffer_vis": "Visibility buffer PVC (required; batch-imaging gives buff-<pb_id>-vis)",
    "buffer_img": "Image buffer PVC (required; batch-imaging gives buff-<pb_id>-img)",
}


def arguments() -> list[Parameter]:
    """The workflow parameters: every field of the parameter model, with its default, except
    the ``REQUIRED`` ones, which have none."""
    defaults = Params().as_strings()
    return [
        Parameter(name=name, description=REQUIRED[name])
        if name in REQUIRED
        else Parameter(name=name, value=defaults[name], description=field.description)
        for name, field in Params.model_fields.items()
    ]


def workflow_template(image: str | None = None) -> WorkflowTemplate:
    """The WorkflowTemplate ``batch-imaging``."""
    image = image or default_image()
    dask_enabled = "{{workflow.parameters.dask_cluster}} == true"
    with WorkflowTemplate(
        name=NAME,
        annotations={
            TITLE: "**SKA SDP batch imaging**",
            DESCRIPTION: "Simulate, corrupt, calibrate and image one processing block "
            "(`-p pb_id=...`); products in the PVCs `buffer_vis` and `buffer_img`.",
        },
        labels={"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "ska-sdp"},
        entrypoint="main",
        on_exit="exit",
        arguments=arguments(),
        service_account_name=SERVICE_ACCOUNT,
        active_deadline_seconds=WORKFLOW_DEADLINE_S,
        pod_gc=m.PodGC(strategy="OnPodSuccess", delete_delay_duration="10m"),
        ttl_strategy=m.TTLStrategy(seconds_after_success=86400, seconds_after_failure=7 * 86400),
        synchronization=m.Synchronization(
            # one run per PB, and one writer per buffer (two PBs may name the same buffer)
            mutexes=[
                m.Mutex(name="batch-imaging-{{workflow.parameters.pb_id}}"),
                m.Mutex(name="buffer-{{workflow.parameters.buffer_vis}}"),
                m.Mutex(name="buffer-{{workflow.parameters.buffer_img}}"),
            ]
        ),
        workflow_metadata=m.WorkflowMetadata(
            labels_from={
                PB_LABEL: m.LabelValueFrom(expression="workflow.parameters.pb_id"),
                SBI_LABEL: m.LabelValueFrom(expression="workflow.parameters.sbi_id"),
            },
        ),
        security_context=POD_SECURITY,
        volumes=[*_buffer_volumes(), m.Volume(name="tmp", empty_dir=m.EmptyDirVolumeSource())],
    ) as template:
        containers = {step: _container(step, image) for step in (*STEPS, EXIT_STEP)}
        with_artifacts = _container(ARTIFACTS_STEP, image, ARTIFACTS_TEMPLATE)
        buffer_pvc = Resource(
            name="buffer-pvc",
            inputs=[Parameter(name="name")],
            action="apply",
            manifest=_manifest(buffer_pvc_manifest()),
            retry_strategy=API_RETRY,
        )
        dask_cluster = Resource(
            name="dask-cluster",
            action="create",
            set_owner_reference=True,
            # the operator sets Running once the scheduler and the worker group exist; the
            # steps then wait for the workers themselves (steps.dask_ee.wait_for_workers)
            success_condition="status.phase == Running",
            manifest=_manifest(dask_cluster_manifest(image)),
            retry_strategy=API_RETRY,
        )
        dask_cluster_delete = Resource(
            name="dask-cluster-delete",
            action="delete",
            flags=["--ignore-not-found"],
            manifest=_manifest(
                {
                    "apiVersion": "kubernetes.dask.org/v1",
                    "kind": "DaskCluster",
                    "metadata": {"name": DASK_CLUSTER},
                }
            ),
            retry_strategy=API_RETRY,
        )
        with DAG(name="main"):
            claim = containers["claim"](name="claim")
            pvcs = [
                buffer_pvc(
                    name=volume, arguments={"name": f"{{{{workflow.parameters.{parameter}}}}}"}
                )
                for volume, parameter in BUFFERS.items()
            ]
            dask = dask_cluster(name="dask-cluster", when=dask_enabled)
            reserve = containers[RESERVE_STEP](name=RESERVE_STEP)
            heavy = {
                step: containers[step](
                    name=step, when=ARTIFACTS_OFF if step == ARTIFACTS_STEP else None
                )
                for step in STEPS
                if step in HEAVY
            }
            claim >> [*pvcs, dask]
            pvcs >> reserve
            [reserve, dask] >> heavy["simulate"]
            for before, after in itertools.pairwise(heavy.values()):
                before >> after
            # the report with artifacts runs instead of the report, after the same step
            before_report = list(heavy)[list(heavy).index(ARTIFACTS_STEP) - 1]
            heavy[before_report] >> with_artifacts(name=ARTIFACTS_TEMPLATE, when=ARTIFACTS_ON)
        with DAG(name="exit"):
            containers[EXIT_STEP](name=EXIT_STEP)
            dask_cluster_delete(name="dask-cluster-delete", when=dask_enabled)
    return template
