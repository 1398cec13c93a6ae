"""Operator commands mirroring the SDP subarray's: ``sdp assign``, ``sdp release``, ``sdp status``.

``assign`` is AssignResources: it creates the scheduling block instance (SBI) and its
processing blocks from the SBI JSON (the seed's ``config_sbi``, e.g.
``examples/sbi-mvp01-20200523-00000.json``).  ``release`` is ReleaseResources: the SBI's
real-time PBs become FINISHED (so batch PBs depending on them can start) and the SBI too.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dag.runner import config_db_url, existing_db, gone_run, is_batch_imaging, pb_params
from steps.configdb import (
    SBI,
    ConfigCollision,
    ConfigDB,
    ConfigNotFound,
    PBState,
    PBStatus,
    ProcessingBlock,
    Transaction,
    connect,
)
from steps.params import ParamsError, decode_strings, describe_errors, pairs

ACTIVE, FINISHED = "ACTIVE", "FINISHED"


def read_sbi(path: Path, overrides: dict[str, Any]) -> tuple[SBI, list[ProcessingBlock]]:
    """The SBI and its PBs from an SBI JSON file; ``overrides`` go into each batch PB's
    parameters.  Raises ParamsError naming what is wrong."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ParamsError(f"cannot read SBI file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ParamsError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: an SBI must be a JSON object")
    blocks = data.pop("processing_blocks", [])
    try:
        pbs = [ProcessingBlock.model_validate({**pb, "sbi_id": data.get("id")}) for pb in blocks]
        sbi = SBI.model_validate(
            {
                **data,
                "pb_realtime": [pb.id for pb in pbs if pb.workflow.type == "realtime"],
                "pb_batch": [pb.id for pb in pbs if pb.workflow.type == "batch"],
                "status": ACTIVE,
            }
        )
    except (ValidationError, TypeError) as exc:
        detail = describe_errors(exc) if isinstance(exc, ValidationError) else str(exc)
        raise ParamsError(f"{path}: invalid SBI: {detail}") from None
    ids = [pb.id for pb in pbs]
    duplicates = sorted({pb_id for pb_id in ids if ids.count(pb_id) > 1})
    if duplicates:
        raise ParamsError(f"{path}: duplicate processing block id(s): {', '.join(duplicates)}")
    if overrides:
        pbs = [
            pb.model_copy(update={"parameters": {**pb.parameters, **overrides}})
            if pb.workflow.type == "batch"
            else pb
            for pb in pbs
        ]
    return sbi, pbs


def check_parameters(pbs: list[ProcessingBlock], url: str) -> None:
    """Refuse (ParamsError naming the block) the parameters of a batch_imaging PB that
    ``run`` and the bridge would refuse."""
    for pb in pbs:
        if is_batch_imaging(pb):
            try:
                pb_params(pb, url)
            except ParamsError as exc:
                raise ParamsError(f"processing block {pb.id}: {exc}") from None


def assign(db: ConfigDB, sbi: SBI, pbs: list[ProcessingBlock]) -> None:
    """Create the SBI and its PBs in one transaction (ConfigCollision if any exists)."""

    def create(txn: Transaction) -> None:
        txn.create_sbi(sbi)
        for pb in pbs:
            txn.create_pb(pb)

    db.run(create)


def release(db: ConfigDB, sbi_id: str) -> list[str]:
    """End the SBI's real-time processing; return the real-time PBs made FINISHED."""

    def end(txn: Transaction) -> list[str]:
        sbi = txn.get_sbi(sbi_id)
        if sbi is None:
            raise ConfigNotFound(f"scheduling block instance {sbi_id} does not exist")
        finished = []
        for pb_id in sbi.pb_realtime:
            state = txn.get_state(pb_id)
            if state is None:
                txn.create_state(pb_id, PBState(status=PBStatus.FINISHED))
            elif state.status not in (PBStatus.FINISHED, PBStatus.FAILED, PBStatus.CANCELLED):
                txn.update_state(pb_id, status=PBStatus.FINISHED)
            else:
                continue
            finished.append(pb_id)
        txn.update_sbi(sbi_id, status=FINISHED)
        return finished

    return db.run(end)


def status_rows(db: ConfigDB, url: str) -> tuple[list[list[str]], list[list[str]], list[str]]:
    """Rows of the SBI and PB tables, and the reasons of failed PBs (and of those whose run
    is gone, with the command that runs them again from the database at ``url``)."""

    def read(txn: Transaction) -> tuple[list[list[str]], list[list[str]], list[str]]:
        sbis, pbs, reasons = [], [], []
        for sbi_id in txn.list_sbis():
            sbi = txn.get_sbi(sbi_id)
            if sbi is not None:
                sbis.append(
                    [sbi.id, sbi.status or "-", _join(sbi.pb_realtime), _join(sbi.pb_batch)]
                )
        for pb_id in txn.list_pbs():
            try:
                pb = txn.get_pb(pb_id)
            except ValueError:
                pb = None
            state = txn.get_state(pb_id)
            owner = txn.get_owner(pb_id)
            workflow = pb.workflow if pb else None
            buffers = [
                name
                for name, entry in (state.deployments if state else {}).items()
                if isinstance(entry, dict) and entry.get("type") == "buffer"
            ]
            pbs.append(
                [
                    pb_id,
                    (pb.sbi_id or "-") if pb else "?",
                    f"{workflow.type}:{workflow.id}:{workflow.version}" if workflow else "invalid",
                    state.status.value if state else "-",
                    f"{owner.hostname}:{owner.pid}" if owner else "-",
                    getattr(state, "workflow_run", None) or "-",
                    _join(buffers),
                ]
            )
            if state is not None and state.reason:
                reasons.append(f"{pb_id}: {state.reason}")
            if state is not None and (gone := gone_run(state)):
                root = (getattr(state, "run", None) or {}).get("buffer_root")
                where = f" --buffer-root {shlex.quote(root)}" if root else ""
                reasons.append(
                    f"{pb_id}: {state.status.value}, but {gone}: `batch-imaging run-pb {pb_id} "
                    f"--config-db {shlex.quote(url)}{where}` runs it again"
                )
        return sbis, pbs, reasons

    return db.run(read)


def table(header: list[str], rows: list[list[str]]) -> str:
    """A plain text table with aligned columns."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def _join(items: list[str]) -> str:
    return ",".join(items) or "-"


def _open(args: argparse.Namespace, create: bool = False) -> ConfigDB:
    """The configuration database, tried three times in 1.5 s (a server's blip is no error);
    an embedded store that does not exist is created only if ``create``."""
    url = config_db_url(args.config_db)
    return ConfigDB(connect(url if create else existing_db(url), retries=2))


def cmd_assign(args: argparse.Namespace) -> int:
    sbi, pbs = read_sbi(Path(args.sbi), decode_strings(pairs(args.param)))
    check_parameters(pbs, config_db_url(args.config_db))
    with _open(args, create=True) as db:
        try:
            assign(db, sbi, pbs)
        except ConfigCollision as exc:
            raise ParamsError(f"cannot assign {sbi.id}: {exc}") from None
    print(f"Assigned {sbi.id}: processing blocks {_join([pb.id for pb in pbs])}")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    with _open(args) as db:
        try:
            finished = release(db, args.sbi_id)
        except (ConfigNotFound, ValueError) as exc:  # an unknown or malformed id: bad input
            raise ParamsError(str(exc)) from None
    print(f"Released {args.sbi_id}: real-time processing blocks FINISHED: {_join(finished)}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with _open(args) as db:
        sbis, pbs, reasons = status_rows(db, config_db_url(args.config_db))
    print(table(["SBI", "STATUS", "REAL-TIME PBS", "BATCH PBS"], sbis))
    print()
    print(table(["PB", "SBI", "WORKFLOW", "STATUS", "OWNER", "WORKFLOW RUN", "BUFFERS"], pbs))
    if reasons:
        print()
        print("\n".join(reasons))
    return 0


def add_commands(subparsers: Any) -> None:
    """Add ``sdp assign|release|status`` to the ``batch-imaging`` command."""
    sdp = subparsers.add_parser("sdp", help="operator commands: assign, release, status")
    actions = sdp.add_subparsers(dest="action", required=True)
    config_help = "etcd://HOST:PORT or a path (default: SDP_CONFIG_HOST/SDP_CONFIG_PORT)"

    assign_ = actions.add_parser("assign", help="AssignResources: create an SBI and its PBs")
    assign_.add_argument("sbi", help="SBI JSON file (the seed's config_sbi)")
    assign_.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a parameter of every batch PB",
    )
    assign_.set_defaults(func=cmd_assign)

    release_ = actions.add_parser("release", help="ReleaseResources: end real-time processing")
    release_.add_argument("sbi_id", help="scheduling block instance ID")
    release_.set_defaults(func=cmd_release)

    status = actions.add_parser("status", help="table of SBIs and PBs")
    status.set_defaults(func=cmd_status)
    for parser in (assign_, release_, status):
        parser.add_argument("--config-db", default=None, help=config_help)
