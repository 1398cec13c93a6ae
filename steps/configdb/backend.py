"""Key-value backends for the SDP configuration database: etcd, or one file on a shared disk.

Both store SDP's wire format: each path gets a depth tag (``/pb/pb-x`` -> ``2/pb/pb-x``,
``/pb/pb-x/state`` -> ``3/pb/pb-x/state``) so that listing one level is a prefix scan, and
callers pass values already encoded as JSON.  Paths given to and returned by the API are
untagged.

``EtcdBackend`` uses ``etcd3gw``: it speaks to etcd's grpc-gateway over plain HTTP/JSON, so
it needs only ``requests`` (no protobuf or grpcio pins to clash with Dask or the science
stack), it is maintained (OpenStack), and it covers what we need: ranges, txn, leases and
watch.  The gRPC clients are stale: python-etcd3 ships old generated protobuf code, and
etcd3-py (what sdp-config 0.3 used) was last released in 2019.  We stream the watch
ourselves so that it can resume from the last revision seen after etcd restarts.

``FileBackend`` is the embedded store for one machine: a JSON document replaced atomically
under ``fcntl.flock``, so steps running as separate processes can share it.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import etcd3gw
import requests
from etcd3gw import exceptions as etcd_exc
from urllib3.exceptions import ReadTimeoutError

from steps.processes import process_alive

LOG = logging.getLogger("batch_imaging")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 2379
URL_FORMS = "etcd://HOST:PORT, file://PATH or a filesystem path"
_TAGGED = re.compile(r"^\d+(/.*)$")


class ConfigDBError(Exception):
    """Base class of configuration database errors."""


class ConfigDBUnavailable(ConfigDBError):
    """The configuration database server cannot be reached."""

    def __init__(self, url: str, detail: str = "") -> None:
        self.url = url
        suffix = f" ({detail})" if detail else ""
        super().__init__(f"Configuration database unavailable at {url}{suffix}")


def wire_key(path: str) -> str:
    """Return the depth-tagged key under which ``path`` is stored (``2/pb/pb-x``)."""
    if not path.startswith("/"):
        raise ValueError(f"Configuration path {path!r} must start with '/'")
    return f"{path.count('/')}{path}"


def _untagged(key: str) -> str | None:
    match = _TAGGED.match(key)
    return match.group(1) if match else None


@dataclass(frozen=True)
class WatchEvent:
    """A change to ``key`` (an untagged path); ``value`` is None when it was deleted."""

    key: str
    value: str | None
    revision: int


class Lease:
    """A lease kept alive by a background thread (every ttl/3) until revoked.

    Keys written with a lease vanish when it expires, i.e. when its holder stops refreshing.
    ``lost`` is set when the lease expired anyway (the database was unreachable for a TTL):
    whatever it held may now belong to someone else.
    """

    def __init__(
        self,
        lease_id: int,
        ttl_s: int,
        refresh: Callable[[], bool],
        revoke: Callable[[], None],
    ) -> None:
        self.id = lease_id
        self.ttl_s = ttl_s
        self._refresh = refresh
        self._revoke = revoke
        self._stopped = threading.Event()
        self.lost = threading.Event()
        thread = threading.Thread(target=self._keep_alive, daemon=True, name=f"lease-{lease_id}")
        thread.start()

    def _keep_alive(self) -> None:
        refreshed = time.monotonic()
        while not self._stopped.wait(self.ttl_s / 3):
            try:
                alive = self._refresh()
            except ConfigDBError as exc:
                LOG.warning("Could not refresh lease %d: %s", self.id, exc)
                alive = time.monotonic() - refreshed < self.ttl_s
            else:
                refreshed = time.monotonic()
            if not alive and not self._stopped.is_set():
                LOG.warning("Lease %d expired before it could be refreshed", self.id)
                self.lost.set()
                return

    def revoke(self) -> None:
        """Stop refreshing and revoke the lease, deleting the keys bound to it."""
        if not self._stopped.is_set():
            self._stopped.set()
            self._revoke()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.revoke()


class Watch(threading.Thread):
    """Background thread that passes changes under a path prefix to a callback until stopped."""

    def __init__(self, prefix: str, callback: Callable[[WatchEvent], None]) -> None:
        super().__init__(daemon=True, name=f"watch {prefix}")
        self.prefix = prefix
        self._callback = callback
        self._halt = threading.Event()

    def stop(self) -> None:
        """Ask the thread to end; it stops delivering events at once."""
        self._halt.set()

    def _emit(self, event: WatchEvent) -> None:
        if self._halt.is_set() or not event.key.startswith(self.prefix):
            return
        try:
            self._callback(event)
        except Exception:
            LOG.exception("Watch callback failed on %s", event.key)


class Backend(Protocol):
    """Key-value store with compare-and-swap transactions, leases and watches."""

    url: str

    def get(self, path: str) -> tuple[str | None, int]:
        """Return ``(value, mod_revision)``, or ``(None, 0)`` if ``path`` is absent."""
        ...

    def list_keys(self, prefix: str) -> list[str]:
        """Return the sorted paths that start with ``prefix`` and are at its depth."""
        ...

    def commit(
        self,
        reads: Mapping[str, int | None],
        writes: Mapping[str, str | None],
        leases: Mapping[str, Lease] | None = None,
    ) -> bool:
        """Apply ``writes`` (None deletes) atomically if every read path still has its
        mod revision (None or 0: still absent); bind written paths in ``leases`` to their
        lease.  Return False on conflict."""
        ...

    def lease(self, ttl_s: int) -> Lease:
        """Grant a lease of ``ttl_s`` seconds and start keeping it alive."""
        ...

    def watch(
        self,
        prefix: str,
        callback: Callable[[WatchEvent], None],
        start_revision: int | None = None,
    ) -> Watch:
        """Call ``callback`` for every change under ``prefix`` (any depth) from
        ``start_revision`` on (default: from now); the watch outlives server restarts."""
        ...

    def close(self) -> None:
        """Stop this backend's watches and release its connections."""
        ...


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def _range_end(key: str) -> str:
    return key[:-1] + chr(ord(key[-1]) + 1)


class EtcdBackend:
    """etcd v3 through its grpc-gateway (``etcd3gw``)."""

    def __init__(
        self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, timeout_s: float = 10
    ) -> None:
        self.url = f"etcd://{host}:{port}"
        self.client = etcd3gw.Etcd3Client(host=host, port=port, timeout=timeout_s)
        self._watches: list[Watch] = []
        self.revision()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except etcd_exc.ConnectionFailedError as exc:
            raise ConfigDBUnavailable(self.url, "connection failed") from exc
        except etcd_exc.ConnectionTimeoutError as exc:
            raise ConfigDBUnavailable(self.url, "timed out") from exc
        except etcd_exc.Etcd3Exception as exc:
            raise ConfigDBError(f"{self.url}: {exc.detail_text}") from exc

    def revision(self) -> int:
        """Return the store's current revision (raises ConfigDBUnavailable if unreachable)."""
        with self._errors():
            return int(self.client.status()["header"]["revision"])

    def get(self, path: str) -> tuple[str | None, int]:
        with self._errors():
            items = self.client.get(wire_key(path), metadata=True)
        if not items:
            return None, 0
        value, meta = items[0]
        return value.decode(), int(meta["mod_revision"])

    def list_keys(self, prefix: str) -> list[str]:
        tagged = wire_key(prefix)
        with self._errors():
            items = self.client.get(
                tagged, metadata=True, range_end=_range_end(tagged), keys_only=True
            )
        return sorted(meta["key"].decode()[len(tagged) - len(prefix) :] for _, meta in items)

    def commit(
        self,
        reads: Mapping[str, int | None],
        writes: Mapping[str, str | None],
        leases: Mapping[str, Lease] | None = None,
    ) -> bool:
        leases = leases or {}
        compare = [
            {"key": _b64(wire_key(p)), "target": "MOD", "result": "EQUAL", "mod_revision": r or 0}
            for p, r in reads.items()
        ]
        success: list[dict[str, Any]] = []
        for path, value in writes.items():
            key = _b64(wire_key(path))
            if value is None:
                success.append({"request_delete_range": {"key": key}})
                continue
            put: dict[str, Any] = {"key": key, "value": _b64(value)}
            if path in leases:
                put["lease"] = leases[path].id
            success.append({"request_put": put})
        with self._errors():
            result = self.client.transaction({"compare": compare, "success": success})
        return bool(result.get("succeeded", False))

    def lease(self, ttl_s: int = 10) -> Lease:
        with self._errors():
            granted = self.client.lease(ttl_s)

        def refresh() -> bool:
            with self._errors():
                return granted.refresh() > 0

        def revoke() -> None:
            with self._errors():
                try:
                    granted.revoke()
                except etcd_exc.Etcd3Exception as exc:
                    if "lease not found" not in (exc.detail_text or ""):
                        raise  # otherwise it has already expired

        return Lease(granted.id, ttl_s, refresh, revoke)

    def watch(
        self,
        prefix: str,
        callback: Callable[[WatchEvent], None],
        start_revision: int | None = None,
    ) -> Watch:
        start = self.revision() + 1 if start_revision is None else start_revision
        watch = _EtcdWatch(self.client.get_url("/watch"), self.url, prefix, callback, start)
        self._watches.append(watch)
        watch.start()
        return watch

    def close(self) -> None:
        for watch in self._watches:
            watch.stop()
        self.client.session.close()


class _EtcdWatch(Watch):
    """Streams etcd watch responses for all keys, reconnecting from the next revision."""

    # a stream silent this long is watched again: quietly if the store is idle, while a
    # half-open connection then fails to reconnect (an outage, logged once)
    READ_TIMEOUT_S = 60

    def __init__(
        self,
        endpoint: str,
        url: str,
        prefix: str,
        callback: Callable[[WatchEvent], None],
        start_revision: int,
    ) -> None:
        super().__init__(prefix, callback)
        self._endpoint = endpoint
        self._url = url
        self._next = start_revision
        self._response: requests.Response | None = None

    def stop(self) -> None:
        super().stop()
        connection = getattr(self._response and self._response.raw, "connection", None)
        sock = getattr(connection, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def run(self) -> None:
        failures = 0  # consecutive failures to connect; the first one is logged
        with requests.Session() as session:
            while not self._halt.is_set():
                streaming = False
                request = {
                    "create_request": {
                        "key": _b64("\0"),
                        "range_end": _b64("\0"),
                        "start_revision": self._next,
                    }
                }
                try:
                    with session.post(
                        self._endpoint,
                        json=request,
                        stream=True,
                        timeout=(3, self.READ_TIMEOUT_S),
                    ) as response:
                        self._response = response
                        response.raise_for_status()
                        failures, streaming = 0, True
                        for line in response.iter_lines():
                            if self._halt.is_set() or not self._handle(json.loads(line)):
                                break
                except (requests.RequestException, ValueError) as exc:
                    if self._halt.is_set():
                        return
                    if streaming and _read_timeout(exc):  # an idle store: no outage
                        LOG.debug(
                            "Watch on %s quiet for %g s; watching again",
                            self._url,
                            self.READ_TIMEOUT_S,
                        )
                        continue
                    failures += 1
                    if failures == 1:
                        LOG.warning("Watch on %s lost (%s); reconnecting", self._url, exc)
                self._halt.wait(min(0.1 * 2**failures, 2.0))

    def _handle(self, message: dict[str, Any]) -> bool:
        """Deliver one watch response; return False if the stream must be re-created."""
        result = message.get("result")
        if result is None:  # e.g. {"error": ...} when the server shuts down
            LOG.debug("Watch on %s ended: %s", self._url, message)
            return False
        compacted = int(result.get("compact_revision", 0))
        if compacted:
            LOG.warning("Watch on %s resumes at compacted revision %d", self._url, compacted)
            self._next = compacted
            return False
        if result.get("canceled"):
            return False
        for event in result.get("events", []):
            kv = event["kv"]
            revision = int(kv["mod_revision"])
            path = _untagged(_unb64(kv["key"]))
            if path is not None:
                value = None if event.get("type") == "DELETE" else _unb64(kv.get("value", ""))
                self._emit(WatchEvent(path, value, revision))
            self._next = revision + 1
        return True


def _read_timeout(exc: Exception) -> bool:
    """Whether ``exc``, raised while reading a stream, is a read timeout (which requests
    raises as a ConnectionError wrapping urllib3's)."""
    return bool(exc.args) and isinstance(exc.args[0], ReadTimeoutError)


class FileBackend:
    """Embedded store: ``store.json`` in a directory, written atomically under a file lock.

    A leased key counts as absent once its lease is past its expiry time or, on the same
    host, once the process that granted the lease has died.  Watches poll every POLL_S; a
    key changed several times between two polls is reported once, with its latest value.
    """

    POLL_S = 0.2

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.url = f"file://{self.path}"
        self.store = self.path / "store.json"
        self._lock = self.path / "store.lock"
        self._hostname = socket.gethostname()
        self._watches: list[Watch] = []

    def _read(self) -> dict[str, Any]:
        try:
            return json.loads(self.store.read_text())
        except FileNotFoundError:
            return {"revision": 0, "keys": {}, "leases": {}}

    def _write(self, doc: dict[str, Any]) -> None:
        temp = self.store.with_name(".store.json.tmp")
        with open(temp, "w") as handle:
            json.dump(doc, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, self.store)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Hold the store's exclusive lock and yield its document; call _write to save it."""
        with open(self._lock, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield self._read()

    def _live_leases(self, doc: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        return {
            lease_id: lease
            for lease_id, lease in doc["leases"].items()
            if lease["expires"] >= now
            and (lease["hostname"] != self._hostname or process_alive(lease["pid"]))
        }

    def _live(self, doc: dict[str, Any]) -> dict[str, Any]:
        leases = self._live_leases(doc)
        return {
            key: entry
            for key, entry in doc["keys"].items()
            if entry["lease"] is None or entry["lease"] in leases
        }

    def get(self, path: str) -> tuple[str | None, int]:
        entry = self._live(self._read()).get(wire_key(path))
        return (entry["value"], entry["mod_revision"]) if entry else (None, 0)

    def list_keys(self, prefix: str) -> list[str]:
        tagged = wire_key(prefix)
        live = self._live(self._read())
        return sorted(key[len(tagged) - len(prefix) :] for key in live if key.startswith(tagged))

    def commit(
        self,
        reads: Mapping[str, int | None],
        writes: Mapping[str, str | None],
        leases: Mapping[str, Lease] | None = None,
    ) -> bool:
        leases = leases or {}
        with self._locked() as doc:
            live = self._live(doc)
            for path, revision in reads.items():
                entry = live.get(wire_key(path))
                if (entry["mod_revision"] if entry else 0) != (revision or 0):
                    return False
            if not writes:
                return True
            doc["revision"] += 1
            for path, value in writes.items():
                key = wire_key(path)
                if value is None:
                    live.pop(key, None)
                else:
                    lease = leases.get(path)
                    live[key] = {
                        "value": value,
                        "mod_revision": doc["revision"],
                        "lease": None if lease is None else str(lease.id),
                    }
            doc["keys"] = live
            doc["leases"] = self._live_leases(doc)
            self._write(doc)
        return True

    def lease(self, ttl_s: int = 10) -> Lease:
        lease_id = secrets.randbits(63)
        key = str(lease_id)
        with self._locked() as doc:
            doc["leases"][key] = {
                "expires": time.time() + ttl_s,
                "pid": os.getpid(),
                "hostname": self._hostname,
            }
            self._write(doc)

        def refresh() -> bool:
            with self._locked() as doc:
                lease = self._live_leases(doc).get(key)
                if lease is None:
                    return False
                lease["expires"] = time.time() + ttl_s
                self._write(doc)
            return True

        def revoke() -> None:
            with self._locked() as doc:
                doc["leases"].pop(key, None)
                doc["keys"] = {k: e for k, e in doc["keys"].items() if e["lease"] != key}
                doc["revision"] += 1
                self._write(doc)

        return Lease(lease_id, ttl_s, refresh, revoke)

    def _snapshot(self, prefix: str) -> tuple[dict[str, tuple[str, int]], int]:
        doc = self._read()
        current = {}
        for key, entry in self._live(doc).items():
            path = _untagged(key)
            if path is not None and path.startswith(prefix):
                current[path] = (entry["value"], entry["mod_revision"])
        return current, doc["revision"]

    def watch(
        self,
        prefix: str,
        callback: Callable[[WatchEvent], None],
        start_revision: int | None = None,
    ) -> Watch:
        watch = _FileWatch(self, prefix, callback, start_revision)
        self._watches.append(watch)
        watch.start()
        return watch

    def close(self) -> None:
        for watch in self._watches:
            watch.stop()


class _FileWatch(Watch):
    """Polls a FileBackend and reports differences between successive snapshots."""

    def __init__(
        self,
        backend: FileBackend,
        prefix: str,
        callback: Callable[[WatchEvent], None],
        start_revision: int | None,
    ) -> None:
        super().__init__(prefix, callback)
        self._backend = backend
        current, _ = backend._snapshot(prefix)
        self._seen = {
            path: revision
            for path, (_, revision) in current.items()
            if start_revision is None or revision < start_revision
        }

    def run(self) -> None:
        while not self._halt.wait(self._backend.POLL_S):
            current, store_revision = self._backend._snapshot(self.prefix)
            for path, (value, revision) in current.items():
                if self._seen.get(path) != revision:
                    self._emit(WatchEvent(path, value, revision))
            for path in self._seen.keys() - current.keys():
                self._emit(WatchEvent(path, None, store_revision))
            self._seen = {path: revision for path, (_, revision) in current.items()}


def url_from_env() -> str:
    """The database the SDP_CONFIG_* environment names (default etcd at 127.0.0.1:2379)."""
    kind = os.environ.get("SDP_CONFIG_BACKEND", "etcd3")
    if kind == "etcd3":
        host = os.environ.get("SDP_CONFIG_HOST", DEFAULT_HOST)
        return f"etcd://{host}:{os.environ.get('SDP_CONFIG_PORT', DEFAULT_PORT)}"
    if kind == "file" and os.environ.get("SDP_CONFIG_PATH"):
        return f"file://{os.environ['SDP_CONFIG_PATH']}"
    raise ValueError(
        f"SDP_CONFIG_BACKEND={kind!r} is not supported: use 'etcd3' (SDP_CONFIG_HOST/PORT) "
        "or 'file' with SDP_CONFIG_PATH"
    )


def open_backend(url: str | None = None) -> Backend:
    """Open ``etcd://HOST:PORT``, ``file://PATH`` or a path; None reads the SDP_CONFIG_* env."""
    url = url or url_from_env()
    if url.startswith("etcd://"):
        parts = urlsplit(url)
        return EtcdBackend(parts.hostname or DEFAULT_HOST, parts.port or DEFAULT_PORT)
    if url.startswith("file://"):
        return FileBackend(url.removeprefix("file://"))
    if "://" in url:
        raise ValueError(f"Unsupported configuration database URL {url!r}: use {URL_FORMS}")
    return FileBackend(url)


def connect(url: str | None = None, retries: int = 10, backoff_s: float = 0.5) -> Backend:
    """Open the backend, waiting with exponential backoff while the server is unavailable."""
    url = url or url_from_env()
    delay = backoff_s
    for _ in range(retries):
        try:
            return open_backend(url)
        except ConfigDBUnavailable:
            LOG.info("Waiting for configuration database at %s (retry in %.1f s)", url, delay)
            time.sleep(delay)
            delay = min(2 * delay, 30.0)
    return open_backend(url)
