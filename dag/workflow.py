"""The batch-imaging DAG, defined once with Hera.

claim -> buffer-reserve -> simulate -> corrupt -> calibrate -> image, with release as the exit
handler. Every task is a container template running ``batch-imaging step <name>`` with the
workflow parameters passed as separate arguments (never through a shell).
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import version

from hera.workflows import DAG, Container, Parameter, WorkflowTemplate
from hera.workflows import models as m

from steps.params import Params

NAME = "batch-imaging"
STEPS = ("claim", "buffer-reserve", "simulate", "corrupt", "calibrate", "image")
EXIT_STEP = "release"
CLAIM_STEP = "claim"
BUFFERS = {"buffer-vis": "buffer_vis", "buffer-img": "buffer_img"}
HEAVY = {"simulate", "corrupt", "calibrate", "image"}
OUTPUTS_DIR = "/tmp/outputs"
IMAGE_ENV = "BATCH_IMAGING_IMAGE"


def default_image() -> str:
    """The container image reference: ``$BATCH_IMAGING_IMAGE`` or batch-imaging:<version>."""
    return os.environ.get(IMAGE_ENV, f"{NAME}:{version('batch-imaging')}")


def step_outputs(step: str) -> tuple[str, ...]:
    """Names of the output parameters a step writes (declared by its module)."""
    return importlib.import_module(f"steps.{step.replace('-', '_')}").OUTPUTS


def _parameter_args() -> list[str]:
    args: list[str] = []
    for name in Params.model_fields:
        args += ["-p", f"{name}={{{{workflow.parameters.{name}}}}}"]
    return args


def _template(step: str, image: str) -> Container:
    env = [
        m.EnvVar(name="BATCH_IMAGING_OUTPUTS", value=OUTPUTS_DIR),
        m.EnvVar(name="WORKFLOW_NAME", value="{{workflow.name}}"),
    ]
    if step == EXIT_STEP:
        env.append(m.EnvVar(name="WORKFLOW_STATUS", value="{{workflow.status}}"))
    mounts = [
        m.VolumeMount(name=volume, mount_path=f"/buffer/{{{{workflow.parameters.{parameter}}}}}")
        for volume, parameter in BUFFERS.items()
        if step in HEAVY
    ]
    daemon = step == CLAIM_STEP  # holds the lease-bound claim while the DAG runs
    return Container(
        name=step,
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
        env=env,
        volume_mounts=mounts or None,
        outputs=[
            Parameter(name=name, value_from=m.ValueFrom(path=f"{OUTPUTS_DIR}/{name}", default=""))
            for name in step_outputs(step)
        ]
        or None,
    )


def arguments() -> list[Parameter]:
    """The workflow parameters: every field of the parameter model, with its default."""
    defaults = Params().as_strings()
    return [
        Parameter(name=name, value=defaults[name], description=field.description)
        for name, field in Params.model_fields.items()
    ]


def workflow_template(image: str | None = None) -> WorkflowTemplate:
    """The WorkflowTemplate ``batch-imaging``."""
    image = image or default_image()
    with WorkflowTemplate(
        name=NAME,
        entrypoint="main",
        on_exit=EXIT_STEP,
        arguments=arguments(),
        volumes=[
            m.Volume(
                name=volume,
                persistent_volume_claim=m.PersistentVolumeClaimVolumeSource(
                    claim_name=f"{{{{workflow.parameters.{parameter}}}}}"
                ),
            )
            for volume, parameter in BUFFERS.items()
        ],
    ) as template:
        containers = {step: _template(step, image) for step in (*STEPS, EXIT_STEP)}
        with DAG(name="main"):
            tasks = [containers[step](name=step) for step in STEPS]
            for before, after in zip(tasks, tasks[1:], strict=False):
                before >> after
    return template
