"""The ``batch-imaging`` command."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from steps import log
from steps.log import LOG
from steps.params import ParamsError, pairs

USAGE, RUNTIME = 2, 1
INTERRUPTED = 128 + signal.SIGINT  # as a shell reports a process ended by Ctrl-C


def cmd_run(args: argparse.Namespace) -> int:
    from dag.runner import run_local

    overrides = pairs(args.param)
    artifacts = Path(args.artifact_repository) if args.artifact_repository else None
    phase = run_local(
        Path(args.params), Path(args.buffer_root), overrides, args.config_db, artifacts
    )
    return 0 if phase == "Succeeded" else RUNTIME


def cmd_render(args: argparse.Namespace) -> int:
    from dag import render

    directory = Path(args.output) if args.output else render.MANIFESTS
    if args.check:
        stale = render.stale(directory, args.image)
        if stale:
            print(f"stale manifests (run `{render_command(args)}`): {', '.join(stale)}")
            return RUNTIME
        print(f"manifests in {directory} are up to date")
        return 0
    for path in render.write(directory, args.image):
        print(f"wrote {path}")
    return 0


def render_command(args: argparse.Namespace) -> str:
    """The ``batch-imaging render`` that writes what ``render --check`` checked: its options."""
    given = {"--image": args.image, "--output": args.output}
    options = [f"{flag} {shlex.quote(value)}" for flag, value in given.items() if value]
    return " ".join(["batch-imaging render", *options])


def cmd_step(args: argparse.Namespace) -> NoReturn:
    """Run one step, the whole of a pod's process: the process ends with the step."""
    from steps.processes import end
    from steps.runner import run_step

    end(run_step(args.name, pairs(args.param)))


def cmd_params(args: argparse.Namespace) -> int:
    from steps import params

    if args.action == "schema":
        print(json.dumps(params.schema(), indent=2))
        return 0
    parsed = params.load(args.file)
    print(json.dumps(parsed.model_dump(), indent=2))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from steps import manifest

    buffer = Path(args.buffer)
    if not buffer.is_dir():
        buffer = Path(args.buffer_root) / args.buffer
    if not buffer.is_dir():
        raise ParamsError(f"{args.buffer}: no such buffer (a directory, or a name under "
                          f"--buffer-root {args.buffer_root})")  # fmt: skip
    problems = manifest.verify(buffer)
    for problem in problems:
        print(f"{buffer}: {problem}", file=sys.stderr)
    if problems:
        return RUNTIME
    count = len(manifest.load(buffer)["files"])
    print(f"{buffer}: OK, {count} files match {manifest.NAME}")
    return 0


def parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line; for ``command`` "step" (every container's entry point) only that
    subcommand, so that a step starts without importing Hera, the bridge or the Argo client."""
    from steps.runner import EXIT_STEP, STEPS

    top = argparse.ArgumentParser(
        prog="batch-imaging", description="SKA SDP batch imaging workflow (Argo DAG, local engine)"
    )
    top.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    sub = top.add_subparsers(dest="command", required=True)
    step = sub.add_parser("step", help="run one step (the container entry point)")
    step.add_argument("name", choices=[*STEPS, EXIT_STEP])
    step.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE")
    step.set_defaults(func=cmd_step)
    if command == "step":
        return top
    from dag import bridge, outputs, sdp

    run = sub.add_parser("run", help="run the whole DAG on this machine")
    run.add_argument("params", help="JSON file of processing-block parameters")
    run.add_argument("--buffer-root", default="buffers", help="where buffers live (./buffers)")
    run.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE")
    run.add_argument("--config-db", default=None, help="etcd://HOST:PORT or a path (embedded)")
    run.add_argument(
        "--artifact-repository",
        default=None,
        metavar="DIR",
        help="where output artifacts are saved (-p artifacts=true), as Argo's repository",
    )
    run.set_defaults(func=cmd_run)

    render = sub.add_parser("render", help="write the Argo manifests from the Hera definition")
    render.add_argument("--output", default=None, help="directory (default: manifests/)")
    render.add_argument("--image", default=None, help="container image reference")
    render.add_argument("--check", action="store_true", help="only check they are up to date")
    render.set_defaults(func=cmd_render)
    __import__("dag.argo", fromlist=["add_commands"]).add_commands(sub)  # submit, status, logs
    params = sub.add_parser("params", help="the parameter model")
    params.add_argument("action", choices=["schema", "validate"])
    params.add_argument("file", nargs="?", help="parameter file to validate")
    params.set_defaults(func=cmd_params)
    outputs.add_commands(sub)
    sdp.add_commands(sub)
    bridge.add_commands(sub)
    verify = sub.add_parser("verify", help="check a buffer's files against its manifest")
    verify.add_argument("buffer", help="buffer directory, or a buffer name under --buffer-root")
    verify.add_argument("--buffer-root", default="buffers")
    verify.set_defaults(func=cmd_verify)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser(next((a for a in argv if not a.startswith("-")), None)).parse_args(argv)
    log.setup(args.debug)
    if getattr(args, "action", None) == "validate" and not args.file:
        parser().error("params validate needs a FILE")
    try:
        return args.func(args)
    except ParamsError as exc:
        if args.debug:
            raise
        print(f"batch-imaging: error: {exc}", file=sys.stderr)
        return USAGE
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as `cat` does
        if args.debug:
            raise
        devnull = os.open(os.devnull, os.O_WRONLY)  # so that flushing stdout at exit is quiet
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:  # Ctrl-C reaches every process of the run: no traceback
        if args.debug:
            raise
        LOG.warning("Interrupted")
        return INTERRUPTED
    except Exception as exc:
        if args.debug:
            raise
        LOG.error("%s", exc)
        return RUNTIME


if __name__ == "__main__":
    sys.exit(main())
