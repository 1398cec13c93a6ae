"""SDP-style configuration database API: optimistic transactions with typed helpers.

Use it as the SDP does; the loop body re-runs whenever another writer got in first::

    for txn in db.txn():
        state = txn.get_state(pb_id)
        txn.update_state(pb_id, status="RUNNING")

Do not ``break`` or ``return`` inside the loop: the transaction commits when the loop
asks for the next item.  ``db.run(fn)`` wraps this for a function of the transaction.
"""

from __future__ import annotations

import json
import os
import queue
import random
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from pydantic import BaseModel

from .backend import Backend, ConfigDBError, Lease, WatchEvent, wire_key
from .entities import (
    SBI,
    Deployment,
    Owner,
    PBState,
    PBStatus,
    ProcessingBlock,
    check_deployment_id,
    check_pb_id,
    check_sbi_id,
)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
_JITTER = random.SystemRandom()


class ConfigCollision(ConfigDBError):
    """Tried to create an entry that already exists."""


class ConfigNotFound(ConfigDBError):
    """Tried to update an entry that does not exist."""


class ConfigDBConflict(ConfigDBError):
    """A transaction kept conflicting with other writers and gave up."""


def _encode(model: BaseModel) -> str:
    return json.dumps(model.model_dump(mode="json"), indent=2, sort_keys=True)


class Transaction:
    """Reads recorded with their revisions and buffered writes, committed atomically."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._reads: dict[str, int | None] = {}
        self._values: dict[str, str | None] = {}
        self._writes: dict[str, str | None] = {}
        self._leases: dict[str, Lease] = {}

    # Raw access -------------------------------------------------------------------------
    def _get(self, path: str) -> str | None:
        if path in self._writes:
            return self._writes[path]
        if path not in self._values:
            value, revision = self._backend.get(path)
            self._values[path] = value
            self._reads[path] = None if value is None else revision
        return self._values[path]

    def _get_model(self, path: str, model: type[M]) -> M | None:
        value = self._get(path)
        return None if value is None else model.model_validate_json(value)

    def _put(self, path: str, value: BaseModel, lease: Lease | None = None) -> None:
        self._writes[path] = _encode(value)
        if lease is not None:
            self._leases[path] = lease

    def _create(self, path: str, value: BaseModel, lease: Lease | None = None) -> None:
        if self._get(path) is not None:
            raise ConfigCollision(f"{path} already exists")
        self._put(path, value, lease)

    def _update(self, path: str, value: BaseModel) -> None:
        if self._get(path) is None:
            raise ConfigNotFound(f"{path} does not exist")
        self._put(path, value)

    def _delete(self, path: str) -> bool:
        existed = self._get(path) is not None
        self._writes[path] = None
        self._leases.pop(path, None)
        return existed

    def _list(self, prefix: str) -> list[str]:
        tagged = wire_key(prefix)
        keys = set(self._backend.list_keys(prefix))
        for path, value in self._writes.items():
            if wire_key(path).startswith(tagged):
                if value is None:
                    keys.discard(path)
                else:
                    keys.add(path)
        return sorted(key.removeprefix(prefix) for key in keys)

    def commit(self) -> bool:
        """Apply buffered writes if nothing read has changed since; False on conflict."""
        if not self._reads and not self._writes:
            return True
        return self._backend.commit(self._reads, self._writes, self._leases)

    # Scheduling block instances ---------------------------------------------------------
    def create_sbi(self, sbi: SBI) -> None:
        """Create ``/sb/<id>``; ConfigCollision if it exists."""
        self._create(f"/sb/{sbi.id}", sbi)

    def get_sbi(self, sbi_id: str) -> SBI | None:
        """Return the SBI, or None."""
        return self._get_model(f"/sb/{check_sbi_id(sbi_id)}", SBI)

    def update_sbi(self, sbi_id: str, **fields: Any) -> SBI:
        """Merge ``fields`` into an existing SBI and return it."""
        sbi = self.get_sbi(sbi_id)
        if sbi is None:
            raise ConfigNotFound(f"/sb/{sbi_id} does not exist")
        merged = SBI.model_validate({**sbi.model_dump(), **fields})
        self._update(f"/sb/{sbi_id}", merged)
        return merged

    def list_sbis(self) -> list[str]:
        """Return all SBI IDs."""
        return self._list("/sb/")

    # Processing blocks ------------------------------------------------------------------
    def create_pb(self, pb: ProcessingBlock) -> None:
        """Create ``/pb/<id>``; ConfigCollision if it exists."""
        self._create(f"/pb/{pb.id}", pb)

    def put_pb(self, pb: ProcessingBlock) -> None:
        """Create ``/pb/<id>`` or replace its definition (a local re-run's parameters)."""
        self._put(f"/pb/{check_pb_id(pb.id)}", pb)

    def get_pb(self, pb_id: str) -> ProcessingBlock | None:
        """Return the processing block, or None."""
        return self._get_model(f"/pb/{check_pb_id(pb_id)}", ProcessingBlock)

    def list_pbs(self, prefix: str = "") -> list[str]:
        """Return the IDs of processing blocks that start with ``prefix``."""
        return [pb_id for pb_id in self._list("/pb/") if pb_id.startswith(prefix)]

    def get_state(self, pb_id: str) -> PBState | None:
        """Return the PB state, or None (still starting)."""
        return self._get_model(f"/pb/{check_pb_id(pb_id)}/state", PBState)

    def dependency_problem(self, pb: ProcessingBlock) -> str:
        """Why ``pb`` can never start ("" if it can): a dependency that does not exist, a
        cycle of dependencies, or a dependency that FAILED or was CANCELLED."""
        for dependency in pb.dependencies:
            if self.get_pb(dependency.pb_id) is None:
                return (
                    f"dependency {dependency.pb_id} does not exist: assign it first or remove it "
                    "from the PB's dependencies"
                )
        cycle = self._cycle(pb.id, [pb.id])
        if cycle:
            return f"cyclic dependency {' -> '.join(cycle)}: no PB on it can ever start"
        for dependency in pb.dependencies:
            state = self.get_state(dependency.pb_id)
            if state is not None and state.status in (PBStatus.FAILED, PBStatus.CANCELLED):
                return f"dependency {dependency.pb_id} is {state.status.value}"
        return ""

    def _cycle(self, start: str, path: list[str]) -> list[str]:
        """A dependency path from ``path[-1]`` back to ``start``, or []."""
        try:
            pb = self.get_pb(path[-1])
        except ValueError:
            return []
        for dependency in pb.dependencies if pb else []:
            if dependency.pb_id == start:
                return [*path, start]
            if dependency.pb_id not in path:
                found = self._cycle(start, [*path, dependency.pb_id])
                if found:
                    return found
        return []

    def unfinished_dependencies(self, pb: ProcessingBlock) -> list[str]:
        """The dependencies of ``pb`` that have not FINISHED, as ``"<id> (<status>)"``."""
        pending = []
        for dependency in pb.dependencies:
            state = self.get_state(dependency.pb_id)
            if state is None or state.status != PBStatus.FINISHED:
                status = state.status.value if state is not None else "no state"
                pending.append(f"{dependency.pb_id} ({status})")
        return pending

    def create_state(self, pb_id: str, state: PBState) -> None:
        """Create the PB state; ConfigCollision if it exists."""
        self._create(f"/pb/{check_pb_id(pb_id)}/state", state)

    def update_state(self, pb_id: str, **fields: Any) -> PBState:
        """Merge ``fields`` into the existing PB state and return it."""
        state = self.get_state(pb_id)
        if state is None:
            raise ConfigNotFound(f"/pb/{pb_id}/state does not exist")
        merged = PBState.model_validate({**state.model_dump(), **fields})
        self._update(f"/pb/{pb_id}/state", merged)
        return merged

    def take_pb(self, pb_id: str, lease: Lease) -> bool:
        """Claim the PB for this process, bound to ``lease``; False if a live owner exists."""
        if self.get_pb(pb_id) is None:
            raise ConfigNotFound(f"/pb/{pb_id} does not exist")
        if self.get_owner(pb_id) is not None:
            return False
        owner = Owner(command=sys.argv, hostname=socket.gethostname(), pid=os.getpid())
        self._put(f"/pb/{pb_id}/owner", owner, lease)
        return True

    def release_pb(self, pb_id: str) -> bool:
        """Delete the PB's owner entry; return whether there was one."""
        return self._delete(f"/pb/{check_pb_id(pb_id)}/owner")

    def get_owner(self, pb_id: str) -> Owner | None:
        """Return the live owner of the PB, or None."""
        return self._get_model(f"/pb/{check_pb_id(pb_id)}/owner", Owner)

    # Deployments ------------------------------------------------------------------------
    def create_deployment(self, deployment: Deployment) -> None:
        """Create ``/deploy/<id>``; ConfigCollision if it exists."""
        self._create(f"/deploy/{deployment.id}", deployment)

    def get_deployment(self, deploy_id: str) -> Deployment | None:
        """Return the deployment, or None."""
        return self._get_model(f"/deploy/{check_deployment_id(deploy_id)}", Deployment)

    def list_deployments(self) -> list[str]:
        """Return all deployment IDs."""
        return self._list("/deploy/")

    def delete_deployment(self, deploy_id: str) -> bool:
        """Delete the deployment; return whether it existed."""
        return self._delete(f"/deploy/{check_deployment_id(deploy_id)}")


class ConfigDB:
    """The SDP configuration database on top of a :class:`Backend`."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def txn(self, max_retries: int = 30) -> Iterator[Transaction]:
        """Yield a fresh transaction until one commits; ConfigDBConflict after retries."""
        for attempt in range(max_retries + 1):
            txn = Transaction(self.backend)
            yield txn
            if txn.commit():
                return
            time.sleep(_JITTER.uniform(0, min(0.5, 0.005 * 2**attempt)))
        raise ConfigDBConflict(f"Transaction still conflicting after {max_retries} retries")

    def run(self, body: Callable[[Transaction], T], max_retries: int = 30) -> T:
        """Run ``body`` in a transaction, re-running it on conflict; return its result."""
        for txn in self.txn(max_retries):
            result = body(txn)
        return result

    def lease(self, ttl_s: int = 10) -> Lease:
        """Grant a lease kept alive in the background (SDP default TTL: 10 s)."""
        return self.backend.lease(ttl_s)

    def watch_pbs(self, timeout_s: float | None = None) -> Iterator[list[WatchEvent]]:
        """Yield the changes under ``/pb/`` in batches as they happen, from now on.

        An empty batch is yielded every ``timeout_s`` without changes, so a bridge can
        also reconcile periodically.  Closing the generator stops the watch.
        """
        events: queue.Queue[WatchEvent] = queue.Queue()
        watch = self.backend.watch("/pb/", events.put)
        try:
            while True:
                try:
                    batch = [events.get(timeout=timeout_s)]
                except queue.Empty:
                    batch = []
                while not events.empty():
                    batch.append(events.get_nowait())
                yield batch
        finally:
            watch.stop()

    def close(self) -> None:
        """Close the backend."""
        self.backend.close()

    def __enter__(self) -> ConfigDB:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
