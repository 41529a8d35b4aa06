"""The runner: test setups -> availability -> calibration sweep -> benchmark -> database -> report.

Modules: `orchestrate` (the arguments and the run loop), `model_step` (one model: availability,
sweep, benchmark), `guardrail` (the check before a start, the GPUs a start is measured on),
`finish` (database and report from the journal, full-disk handling), `signals` and `state`.
"""

from vramphysics.runner.finish import (
    EXIT_NOT_WRITTEN,
    Finalized,
    finalize,
    remove_stale_proc_temps,
)
from vramphysics.runner.orchestrate import add_arguments, console_through_tqdm, run_from_args

__all__ = [
    "add_arguments",
    "console_through_tqdm",
    "EXIT_NOT_WRITTEN",
    "finalize",
    "Finalized",
    "remove_stale_proc_temps",
    "run_from_args",
]
