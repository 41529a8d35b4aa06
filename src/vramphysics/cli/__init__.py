"""`python -m vramphysics`: `run`, `bench`, `estimate`, `plan`, `merge`, `inspect-log`, `make-demo-model`.

Every error the package raises on purpose (a VramPhysicsError) is printed in one line and gives a
non-zero exit; a traceback is shown only with --debug.

One module per command (`run`, `bench`, `estimate`, `plan`, `merge`, `inspect_log`,
`make_demo_model`), each with `add_parser(sub)` and its handler: parse -> typed call -> render.
`options` holds the options more than one command takes.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from vramphysics.errors import Interrupted, VramPhysicsError
from vramphysics.redact import install_log_redaction

log = logging.getLogger("vramphysics")

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3


def build_parser() -> argparse.ArgumentParser:
    from vramphysics.cli import bench, estimate, inspect_log, make_demo_model, merge, plan, run

    parser = argparse.ArgumentParser(prog="vramphysics", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    # in the order `--help` lists them
    for command in (run, bench, make_demo_model, estimate, plan, merge, inspect_log):
        command.add_parser(sub)
    return parser


def _configure_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    install_log_redaction()  # every record is masked where it is made, whatever the handler
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
    except KeyboardInterrupt:
        print("vramphysics: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, exit 3
        if debug:
            raise
        log.debug("internal error", exc_info=True)
        print(
            f"vramphysics: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_main(args.func, args)
