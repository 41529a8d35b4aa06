"""`run`: calibrate and benchmark the test setups; the arguments and the work are the runner's."""

from __future__ import annotations

import argparse

from vramphysics import runner
from vramphysics.cli.options import add_common


def add_parser(sub: argparse._SubParsersAction) -> None:
    p_run = sub.add_parser("run", help="calibrate and benchmark the test setups (as runner.py)")
    runner.add_arguments(p_run)
    add_common(p_run)
    p_run.set_defaults(func=runner.run_from_args)
