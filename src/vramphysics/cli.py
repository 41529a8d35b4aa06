"""`python -m vramphysics`: subcommands `run`, `estimate`, `plan`, `inspect-log`, `make-demo-model`.

Every error the package raises on purpose (a VramPhysicsError) is printed in one line and gives a
non-zero exit; a traceback is shown only with --debug.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from vramphysics.errors import Interrupted, VramPhysicsError

log = logging.getLogger("vramphysics")

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")


def _cmd_make_demo_model(args: argparse.Namespace) -> int:
    from vramphysics.demo_models import write_tiny_gguf

    if args.gguf:
        path = write_tiny_gguf(Path(args.gguf))
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    if args.hf:
        from vramphysics.demo_models import write_tiny_hf

        folder = write_tiny_hf(Path(args.hf))
        print(f"wrote {folder}")
    if not args.gguf and not args.hf:
        raise VramPhysicsError("make-demo-model: give --gguf FILE and/or --hf DIR")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from vramphysics import runner

    parser = argparse.ArgumentParser(prog="vramphysics", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p_run = sub.add_parser("run", help="calibrate and benchmark the test setups (as runner.py)")
    runner.add_arguments(p_run)
    _add_common(p_run)
    p_run.set_defaults(func=runner.run_from_args)

    p_demo = sub.add_parser("make-demo-model", help="generate tiny random models for the demo")
    p_demo.add_argument("--gguf", metavar="FILE", help="write a tiny llama GGUF here")
    p_demo.add_argument("--hf", metavar="DIR", help="write a tiny HF model folder here")
    _add_common(p_demo)
    p_demo.set_defaults(func=_cmd_make_demo_model)

    _add_analysis_commands(sub)
    return parser


def _add_analysis_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`estimate`, `plan` and `inspect-log`: read files, print figures, start nothing."""


def _configure_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "httpcore", "gguf", "filelock", "urllib3", "docker"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)


def run_main(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a handler and turn our errors into one line and an exit code."""
    debug = bool(getattr(args, "debug", False))
    _configure_logging(debug)
    try:
        return func(args)
    except Interrupted as exc:
        print(f"vramphysics: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except VramPhysicsError as exc:
        if debug:
            raise
        print(f"vramphysics: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_main(args.func, args)
