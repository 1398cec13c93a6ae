"""SDP configuration entities: processing blocks, their state, SBIs, deployments and owners.

Field names follow ska-sdp-config 0.3 (``/pb``, ``/sb``, ``/deploy`` with ``workflow`` and
``type``), and IDs are checked with the same regular expressions the SDP uses.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

PB_ID_RULE = r"^[A-Za-z0-9\-]{1,64}$"
SBI_ID_RULE = PB_ID_RULE
DEPLOYMENT_ID_RULE = r"^[A-Za-z0-9\-]{1,96}$"


def _checked(kind: str, rule: str, value: str) -> str:
    if not re.fullmatch(rule, value):
        raise ValueError(f"{kind} id {value!r} does not match {rule}")
    return value


def check_pb_id(value: str) -> str:
    """Return ``value`` if it is a valid processing block ID, else raise ValueError."""
    return _checked("Processing block", PB_ID_RULE, value)


def check_sbi_id(value: str) -> str:
    """Return ``value`` if it is a valid scheduling block instance ID, else raise ValueError."""
    return _checked("Scheduling block instance", SBI_ID_RULE, value)


def check_deployment_id(value: str) -> str:
    """Return ``value`` if it is a valid deployment ID, else raise ValueError."""
    return _checked("Deployment", DEPLOYMENT_ID_RULE, value)


PBId = Annotated[str, AfterValidator(check_pb_id)]
SBIId = Annotated[str, AfterValidator(check_sbi_id)]
DeploymentId = Annotated[str, AfterValidator(check_deployment_id)]


class Workflow(BaseModel):
    """The workflow a processing block runs."""

    type: Literal["realtime", "batch"]
    id: str
    version: str


class Dependency(BaseModel):
    """A processing block this one waits for; ``type`` is informational, as in the SDP."""

    pb_id: PBId
    type: list[str] = Field(default_factory=list)


class ProcessingBlock(BaseModel):
    """Static processing block, stored at ``/pb/<id>``."""

    id: PBId
    sbi_id: SBIId | None = None
    workflow: Workflow
    parameters: dict[str, Any] = Field(default_factory=dict)
    dependencies: list[Dependency] = Field(default_factory=list)


class PBStatus(StrEnum):
    """Processing block status values used by the SDP."""

    STARTING = "STARTING"
    WAITING = "WAITING"
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


# a block that has ended so is not run again (FAILED ones are, to resume them)
ENDED = frozenset({PBStatus.FINISHED, PBStatus.CANCELLED})


class PBState(BaseModel):
    """Dynamic processing block state at ``/pb/<id>/state``; extra fields are kept."""

    model_config = ConfigDict(extra="allow")

    status: PBStatus
    resources_available: bool = False
    deployments: dict[str, Any] = Field(default_factory=dict)
    reason: str | None = None


class SBI(BaseModel):
    """Scheduling block instance at ``/sb/<id>``; extra fields are kept."""

    model_config = ConfigDict(extra="allow")

    id: SBIId
    max_length: float | None = None
    scan_types: list[dict[str, Any]] = Field(default_factory=list)
    pb_realtime: list[PBId] = Field(default_factory=list)
    pb_batch: list[PBId] = Field(default_factory=list)
    current_scan_type: str | None = None
    status: str | None = None
    scan_id: int | None = None


class Deployment(BaseModel):
    """Deployment request at ``/deploy/<id>``: a Helm release or a local process."""

    id: DeploymentId
    type: Literal["helm", "local"]
    args: dict[str, Any] = Field(default_factory=dict)


class Owner(BaseModel):
    """The process that claimed a processing block (``/pb/<id>/owner``)."""

    command: list[str]
    hostname: str
    pid: int


def new_pb_id(generator: str, date: datetime.date, existing_ids: Iterable[str]) -> str:
    """Return the next free ``pb-<generator>-<YYYYMMDD>-<NNNNN>`` ID for ``date``."""
    prefix = f"pb-{generator}-{date:%Y%m%d}-"
    taken = [
        int(pb_id[len(prefix) :])
        for pb_id in existing_ids
        if pb_id.startswith(prefix) and pb_id[len(prefix) :].isdigit()
    ]
    return check_pb_id(f"{prefix}{max(taken, default=-1) + 1:05d}")
