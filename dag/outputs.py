"""``batch-imaging outputs`` (what a run produced, where) and ``batch-imaging export-ms``.

Products live in two buffers per processing block: locally ``<buffer root>/<buffer>/...``, on
Kubernetes the PersistentVolumeClaim named after the buffer, mounted at ``/buffer/<buffer>``
in the workflow's pods.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from dag.runner import config_db_url, existing_db, given_or_embedded, is_batch_imaging
from steps import manifest
from steps.buffers import Buffers
from steps.configdb import ConfigDB, Transaction, check_pb_id, open_backend, url_from_env
from steps.log import LOG
from steps.manifest import NAME as MANIFEST
from steps.params import Params, ParamsError, parse
from steps.runner import RECORDED, key_parameters

POD_ROOT = "/buffer"


def catalogue(buffers: Buffers) -> tuple[tuple[str, Path, str], ...]:
    """(buffer, path, what it is) of each product, in the order the steps write them."""
    from steps.msexport import ms_path

    return (
        ("vis", buffers.model, "simulated (uncorrupted) visibilities, Zarr (MSv4 names)"),
        (
            "vis",
            ms_path(buffers.model),
            "simulated visibilities as a Measurement Set v2 (export_ms)",
        ),
        ("vis", buffers.sky, "simulated sky: positions, apparent flux per window and at MFS"),
        ("vis", buffers.true_gains, "station gains applied by corrupt (the truth)"),
        ("vis", buffers.corrupted, "corrupted visibilities, Zarr"),
        ("vis", buffers.solved_gains, "station gains solved by calibrate"),
        ("vis", buffers.calibrated, "calibrated visibilities, Zarr"),
        (
            "vis",
            ms_path(buffers.calibrated),
            "MS v2: DATA corrupted, CORRECTED_DATA calibrated (export_ms)",
        ),
        ("img", buffers.ical_model, "ICAL model (per window, Taylor terms), PSFs, residuals"),
        ("img", buffers.image("deconvolved"), "CLEAN model cube (Jy/pixel)"),
        ("img", buffers.image("residual"), "residual cube (Jy/beam)"),
        ("img", buffers.image("restored"), "restored cube (Jy/beam)"),
        ("img", buffers.image("mfs_model"), "MFS CLEAN model, Taylor term 0 (Jy/pixel)"),
        ("img", buffers.image("mfs_residual"), "MFS residual (Jy/beam)"),
        ("img", buffers.image("mfs_restored"), "MFS restored image (Jy/beam)"),
        (
            "img",
            buffers.image("mfs_alpha"),
            "apparent spectral index (sky times station beam) where the signal allows, else NaN",
        ),
        ("img", buffers.psf, "PSF of the centre window"),
        ("img", buffers.metrics, "figures of merit and the source table"),
        ("img", buffers.convergence, "ICAL phase and residual rms per major cycle"),
        ("img", buffers.previews, "preview PNGs (restored, residual, alpha, PSF, uv, gains, ICAL)"),
        ("img", buffers.report, "self-contained run report (open in a browser)"),
        *(
            (b, folder / MANIFEST, "the buffer's files: size, sha256, producing step")
            for b, folder in (("vis", buffers.vis), ("img", buffers.img))
        ),
    )


@dataclass(frozen=True)
class Product:
    """One product of a run."""

    pvc: str
    relative: str
    description: str
    local: Path
    size: int | None  # bytes; None if absent locally
    stale: str = ""  # why it is not what the block's parameters make (``stale_files``)

    @property
    def pod_path(self) -> str:
        return f"{POD_ROOT}/{self.pvc}/{self.relative}"


def size_of(path: Path) -> int | None:
    """Bytes in a file or directory tree; None if it does not exist."""
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return None


def human(size: int | None) -> str:
    if size is None:
        return "-"
    if size < 1024:
        return f"{size} B"
    value, units = size / 1024, ["KiB", "MiB", "GiB"]
    while value >= 1024 and len(units) > 1:
        value, units = value / 1024, units[1:]
    return f"{value:.1f} {units[0]}"


def stale_files(params: Params, folders: list[Path], root: Path) -> dict[Path, str]:
    """The products (top-level files and directories of the buffers under ``root``) holding a
    file recorded with another key than the one ``params`` give its step, each with why:
    made by another block's run, by an earlier run of this block with other parameters, or
    left by an earlier run of the step that no longer makes it (an MS after ``export_ms`` was
    turned off).  From the manifests' records: no product is hashed again, only a sky or
    layout file the parameters name."""
    records = {folder: manifest.load(folder) for folder in folders}
    stale: dict[Path, set[str]] = {}
    for step in RECORDED:
        done = {f: r["steps"][step] for f, r in records.items() if step in r["steps"]}
        if not done:
            continue
        key = key_parameters(params, step, root)
        for folder, entry in done.items():
            expected = manifest.step_key(step, key, folders, entry["inputs"])
            for name, file in records[folder]["files"].items():
                if file["step"] == step and file["key"] != expected:
                    why = _why_stale(
                        params.pb_id, step, file.get("pb_id"), entry["key"] == expected
                    )
                    stale.setdefault(folder / Path(name).parts[0], set()).add(why)
    return {path: "; ".join(sorted(whys)) for path, whys in stale.items()}


def _why_stale(pb_id: str, step: str, maker: str | None, step_current: bool) -> str:
    """Why a file that step ``step`` recorded (for block ``maker``, if the manifest says) is
    not what block ``pb_id``'s parameters make; ``step_current``: the step's latest run had
    those parameters."""
    if step_current:
        by = f" ({maker}'s)" if maker else ""
        return f"left by an earlier run of step {step}{by}: with these parameters it makes none"
    if maker is None:
        return f"made by an earlier run with other parameters or inputs than {pb_id}'s"
    if maker != pb_id:
        return f"made by the run of {maker}, with other parameters or inputs"
    return (
        f"made by an earlier run of {pb_id} with other parameters or inputs; its run with the "
        "present ones has not remade them (it failed, is running or has not started)"
    )


def products(params: Params, buffer_root: Path) -> list[Product]:
    """Every catalogued product of a run, present or not, with its local and PVC location;
    those another run made (other parameters) say why they are stale."""
    buffers = Buffers.of(params, buffer_root)
    names = {"vis": params.buffer_vis, "img": params.buffer_img}
    folders = {"vis": buffers.vis, "img": buffers.img}
    stale = stale_files(params, list(folders.values()), Path(buffer_root))

    def product(buffer: str, path: Path, text: str) -> Product:
        relative = str(path.relative_to(folders[buffer]))
        return Product(names[buffer], relative, text, path, size_of(path), stale.get(path, ""))

    rows = [product(b, path, text) for b, path, text in catalogue(buffers)]
    known = {p.local for p in rows}
    for b, folder in folders.items():  # anything else a step (or a newer version) wrote
        if folder.is_dir():
            rows += [
                product(b, path, "")
                for path in sorted(folder.iterdir())
                if path not in known and not path.name.startswith(".")
            ]
    return rows


def run_params(buffer_root: Path, pb_id: str | None, config_db: str | None) -> Params:
    """The parameters of a run from the configuration DB (without an id, of the block
    ``latest_block`` finds, as the log says): ``config_db``, else the local runs' store under
    ``buffer_root``, else the SDP_CONFIG_* environment's; with none of them, a block gets the
    default parameters (and buffer names), as a warning says."""
    if pb_id is not None:
        try:
            check_pb_id(pb_id)
        except ValueError as exc:
            raise ParamsError(f"PB_ID: {exc}") from None
    local = buffer_root / ".sdp-config"
    config_db = given_or_embedded(config_db_url(config_db) if config_db else None, buffer_root)
    if config_db is None and os.environ.get("SDP_CONFIG_HOST"):
        config_db = url_from_env()
    elif config_db is None:
        if pb_id is None:
            raise ParamsError(f"no runs under {buffer_root} (no {local}); give a PB_ID")
        LOG.warning(
            "No configuration DB (%s, --config-db or SDP_CONFIG_HOST): where the products of "
            "%s would be with the default parameters",
            local, pb_id,
        )  # fmt: skip
        return parse({"pb_id": pb_id})
    with ConfigDB(open_backend(existing_db(config_db))) as db:
        if pb_id is None:
            pb_id, submitted = db.run(latest_block)
            if pb_id is None:
                raise ParamsError(
                    f"the configuration DB {config_db} holds no batch_imaging processing block"
                )
            LOG.info(
                "No PB_ID given: the latest batch_imaging block is %s (%s)",
                pb_id,
                f"run submitted {submitted}" if submitted else "by id: none has a run recorded",
            )
        pb = db.run(lambda txn: txn.get_pb(pb_id))
    if pb is None:
        raise ParamsError(
            f"processing block {pb_id} is not in the configuration DB {config_db}: "
            "give the one that holds it (--config-db)"
        )
    return parse({**pb.parameters, "pb_id": pb_id})


def latest_block(txn: Transaction) -> tuple[str | None, str]:
    """The batch_imaging block whose run was submitted last, and when (by id, and "", if
    none has a run recorded); None if there is no such block."""
    submitted = {}
    for pb_id in txn.list_pbs():
        try:
            pb = txn.get_pb(pb_id)
        except ValueError:  # not an entity: not a block of ours either
            continue
        if pb is not None and is_batch_imaging(pb):
            run = getattr(txn.get_state(pb_id), "run", None) or {}
            submitted[pb_id] = run.get("submitted") or run.get("requested") or ""
    if not submitted:
        return None, ""
    latest = max(submitted, key=lambda pb_id: (submitted[pb_id], pb_id))
    return latest, submitted[latest]


def cmd_outputs(args: argparse.Namespace) -> int:
    params = run_params(Path(args.buffer_root), args.pb_id, args.config_db)
    rows = products(params, Path(args.buffer_root))
    width = max(len(p.relative) for p in rows)
    print(f"Products of processing block {params.pb_id}")
    for pvc in dict.fromkeys(p.pvc for p in rows):
        mine = [p for p in rows if p.pvc == pvc]
        print(f"\nBuffer {pvc}")
        print(f"  local:      {mine[0].local.parent.resolve()}/")
        print(f"  Kubernetes: PVC {pvc}, mounted at {POD_ROOT}/{pvc}/ in the workflow's pods")
        for p in mine:
            mark = "STALE " if p.stale else ""
            print(f"    {p.relative:<{width}}  {human(p.size):>10}  {mark}{p.description}")
    reasons = dict.fromkeys(p.stale for p in rows if p.stale)
    if reasons:
        print(f"\nSTALE: not what {params.pb_id}'s parameters make")
        for why in reasons:
            print(f"  {', '.join(p.relative for p in rows if p.stale == why)}: {why}")
    print(
        "\n'-': not written (yet) or not present here.  From Kubernetes, copy out of any pod "
        f"that mounts the claim:\n  kubectl cp <pod>:{POD_ROOT}/{params.buffer_img}/report.html "
        "./report.html\n(or, with `-p artifacts=true` and an artifact repository, from the "
        "report-artifacts step's artifacts in the Argo UI)"
    )
    return 0


def cmd_export_ms(args: argparse.Namespace) -> int:
    from steps.msexport import write_ms
    from steps.store import StoreError

    corrected = Path(args.corrected) if args.corrected else None
    try:
        out = write_ms(Path(args.out), Path(args.store), corrected)
    except StoreError as exc:  # the stores given are not what export-ms reads
        raise ParamsError(str(exc)) from None
    print(f"wrote {out}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``outputs`` and ``export-ms`` to the ``batch-imaging`` command."""
    outputs = subparsers.add_parser("outputs", help="list the products of a run and where they are")
    outputs.add_argument(
        "pb_id",
        nargs="?",
        metavar="PB_ID",
        help="processing block (default: the batch_imaging block whose run was submitted last)",
    )
    outputs.add_argument("--buffer-root", default="buffers", help="where buffers live (./buffers)")
    outputs.add_argument("--config-db", default=None, help="etcd://HOST:PORT or a path")
    outputs.set_defaults(func=cmd_outputs)

    export = subparsers.add_parser("export-ms", help="write a visibility store as an MS v2")
    export.add_argument("store", help="Zarr visibility store (written as DATA)")
    export.add_argument("out", help="Measurement Set to write (replaced if it exists)")
    export.add_argument(
        "--corrected", default=None, help="store of the same layout written as CORRECTED_DATA"
    )
    export.set_defaults(func=cmd_export_ms)
