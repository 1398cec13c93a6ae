"""Run one step as its container does: parse parameters, run, write Argo output parameters.

Each step's start, end, phase and outputs are recorded in the processing block's state
(``steps``), so that operators, the report and the metrics see one timeline for the run,
whichever engine ran it.
"""

from __future__ import annotations

import ctypes
import datetime
import importlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from steps import manifest, resources
from steps.buffers import Buffers, resolve
from steps.configdb import ConfigDB, PBState, PBStatus, connect
from steps.log import LOG
from steps.params import NAMED_FILES, OPERATIONAL, Params, parse_strings
from steps.processes import ENGINE_PID_ENV, process_alive

OUTPUTS_ENV = "BATCH_IMAGING_OUTPUTS"
PR_SET_PDEATHSIG = 1  # prctl(2)
STOP_GRACE_S = 30  # s a stopped step has to record its end and clean up (the kubelet's grace)
# the DAG's steps in order, one module of this package each, with the output parameters
# each step's ``run`` returns (declared here, so that the workflow definition needs none of
# the step modules); the last is the exit handler
OUTPUTS: dict[str, tuple[str, ...]] = {
    "claim": (),  # readiness is signalled by the "claimed" file
    "buffer-reserve": ("buffer_vis", "buffer_img"),
    "simulate": ("model", "components"),
    "corrupt": ("corrupted", "gains"),
    "calibrate": ("calibrated", "phase_rms_rad"),
    "image": ("restored", "restored_peak_jy", "dynamic_range"),
    "report": ("report",),
    "release": ("status",),
}
EXIT_STEP = "release"
DAEMON_STEP = "claim"  # an Argo daemon: holds the lease-bound claim, Running until the DAG ends
STEPS = tuple(name for name in OUTPUTS if name != EXIT_STEP)
# the steps whose products are recorded in the buffer manifests and reused when unchanged,
# in the order they run (each reads its predecessors' products); the report is recorded but
# always made anew (the claim daemon runs beside the others: never recorded)
PIPELINE = ("simulate", "corrupt", "calibrate", "image")
RECORDED = {*PIPELINE, "report"}
DASK_STEPS = ("simulate", "corrupt", "calibrate")  # the steps that run a Dask EE


def write_outputs(outputs: dict[str, str]) -> None:
    """Write output parameters where the template's ``valueFrom.path`` reads them
    (``$BATCH_IMAGING_OUTPUTS``, set by the template; without it there is no reader)."""
    if OUTPUTS_ENV not in os.environ:
        return
    directory = Path(os.environ[OUTPUTS_ENV])
    directory.mkdir(parents=True, exist_ok=True)
    for name, value in outputs.items():
        (directory / name).write_text(value)


def record(params: Params, step: str, entry: dict) -> None:
    """Merge one step's timeline entry into the PB state."""
    with ConfigDB(connect(params.config_db or None)) as db:

        def merge(txn) -> None:
            state = txn.get_state(params.pb_id)
            if state is None and txn.get_pb(params.pb_id) is None:
                raise LookupError(
                    f"processing block {params.pb_id} does not exist in the configuration DB "
                    "(`batch-imaging sdp assign` creates it; `config_db` names the DB)"
                )
            if state is None:  # a block no controller has taken up (``argo submit``)
                txn.create_state(
                    params.pb_id, PBState(status=PBStatus.STARTING, steps={step: entry})
                )
                return
            steps = dict(getattr(state, "steps", None) or {})
            steps[step] = entry
            txn.update_state(params.pb_id, steps=steps)

        db.run(merge)


# what only ICAL and imaging read: simulate and corrupt are keyed without them, so changing
# them reuses the simulated and corrupted data (every other parameter keys every step)
ICAL_PARAMETERS = frozenset(
    {
        "epsilon", "niter", "nmajor", "gain", "threshold", "fractional_threshold",
        "solver_niter", "solver_tol", "algorithm", "scales", "nmoment", "psf_support",
        "window_shape", "weighting", "robust", "calibration_context", "global_solution",
        "band_windows",
        *(f"{t}_{name}" for t in "tgb" for name in ("first_selfcal", "phase_only", "interval_s")),
    }
)  # fmt: skip
# bumped when a step's products change for the same parameters and inputs, so that products
# an earlier version made are made anew (their successors follow, their inputs changed):
# simulate 2, uvw in the J2000 frame; simulate 3, sky_model.csv has the apparent fluxes at the
# MFS reference frequency; calibrate 2, the solved gains flag stations without data
PRODUCTS_VERSION = {"simulate": 3, "calibrate": 2}
# what each step does not read (so does not key it): the corruption only corrupt reads; the
# MS exports are simulate's and calibrate's
NOT_READ = {
    "simulate": ICAL_PARAMETERS | {"phase_error"},
    "corrupt": ICAL_PARAMETERS | {"export_ms"},
    "image": frozenset({"export_ms"}),
}


def key_parameters(params: Params, step: str, root: Path | None = None) -> dict[str, Any]:
    """What a step's products depend on besides its inputs: the parameters it reads (not the
    operational ones), the content (sha256) of the files they name (a sky catalogue, a
    layout; ``buffer:`` ones under the buffer root ``root``, else this pod's), and the
    version of its products (``PRODUCTS_VERSION``)."""
    values: dict[str, Any] = params.model_dump(exclude={*OPERATIONAL, *NOT_READ.get(step, ())})
    if step in PRODUCTS_VERSION:
        values["products_version"] = PRODUCTS_VERSION[step]
    for field, named in NAMED_FILES.items():
        reference = values[field]
        if reference not in named:
            path = resolve(reference, root)
            values[f"{field}_sha256"] = manifest.sha256(path) if path.is_file() else None
    return values


class Stopped(SystemExit):
    """SIGTERM reached the step (the engine stops the workflow, the kubelet the pod, or a
    deadline passed): the step is recorded Failed and the process exits 143, as killed."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)

    def __str__(self) -> str:
        return "Stopped (SIGTERM)"


def _stop(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the step at once
    signal.alarm(STOP_GRACE_S)  # as does SIGALRM, if cleaning up hangs
    raise Stopped


def take_signals() -> None:
    """Let Ctrl-C and SIGTERM reach this step: unblock them, since a blocked signal stays
    blocked across exec (an ignored one stays ignored, as its launcher asked), and make
    SIGTERM raise ``Stopped``; and have the kernel send SIGTERM when the process that
    started it dies (Linux's parent-death signal), as the local engine does when it stops a
    workflow: an engine that is killed leaves no step writing into the buffers.  An engine
    that died before the signal was set (``$BATCH_IMAGING_ENGINE_PID``, no longer alive)
    ends the step at once."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _stop)
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    engine = os.environ.get(ENGINE_PID_ENV)
    if engine and os.getppid() != int(engine) and not process_alive(int(engine)):
        LOG.warning("The workflow engine (pid %s) that started this step is gone", engine)
        raise Stopped


def run_step(name: str, raw: dict[str, str]) -> int:
    """Run step ``name`` with string parameters; return its exit code."""
    take_signals()
    params = parse_strings(raw)
    buffers = Buffers.of(params)
    dirs = [buffers.vis, buffers.img]
    manifest.remove_temporaries(dirs)  # first: a killed writer's leftovers are free disk
    if name in PIPELINE:
        resources.check(params, buffers.vis if buffers.vis.is_dir() else buffers.vis.parent)
    started = time.time()
    entry = {"started": _iso(started), "phase": "Running"}
    record(params, name, entry)
    try:
        outputs, reused = _products(name, params, buffers, dirs)
        write_outputs(outputs)
    except (Exception, KeyboardInterrupt, Stopped) as exc:
        message = "Interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
        failed = {"finished": _iso(time.time()), "phase": "Failed", "message": message}
        record(params, name, {**entry, **failed})
        if isinstance(exc, Stopped):  # exits 143 with no traceback: say why here
            LOG.warning("Step %s: %s", name, exc)
        raise
    finished = time.time()
    record(
        params,
        name,
        {
            **entry,
            "finished": _iso(finished),
            "phase": "Succeeded",
            "reused": reused,
            "duration_s": round(finished - started, 3),
            "outputs": outputs,
        },
    )
    return 0


def _products(
    name: str, params: Params, buffers: Buffers, dirs: list[Path]
) -> tuple[dict[str, str], bool]:
    """The step's output parameters, and whether its products were reused (complete and
    unchanged since a run with the same key) instead of made and recorded anew."""
    key = key_parameters(params, name)
    reused = manifest.completed(dirs, name, key) if name in PIPELINE else None
    if reused is not None:
        LOG.info("Step %s: products complete and inputs unchanged; reusing them", name)
        return reused, True
    upstream = PIPELINE[: PIPELINE.index(name)] if name in PIPELINE else PIPELINE
    before, inputs = manifest.snapshot(dirs), manifest.recorded_files(dirs, upstream)
    module_name = f"steps.{name.replace('-', '_')}"
    if name in DASK_STEPS:  # imported here: the light steps need no Dask
        from steps import dask_ee

        dask_ee.prestart(params.n_workers, [module_name])
    module = importlib.import_module(module_name)
    outputs = {k: str(v) for k, v in (module.run(params, buffers) or {}).items()}
    if sorted(outputs) != sorted(OUTPUTS[name]):
        raise RuntimeError(
            f"step {name} returned the outputs {sorted(outputs)}, "
            f"but declares {list(OUTPUTS[name])}"
        )
    if name in RECORDED:
        manifest.record(dirs, name, key, inputs, before, outputs, params.pb_id)
    return outputs, False


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="milliseconds")
