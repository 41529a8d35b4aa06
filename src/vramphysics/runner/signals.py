"""Signals during a run: the first stops the step in flight, a second skips the report."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

from vramphysics.engines.base import Engine
from vramphysics.errors import Interrupted

log = logging.getLogger("vramphysics.runner")


@dataclass
class _SignalState:
    signum: int | None = None
    skip_report: bool = False
    finishing: bool = False  # writing the report: a signal is noted, not raised


@contextmanager
def _signals_raise() -> Iterator[_SignalState]:
    """First SIGINT/SIGTERM raises Interrupted (the step in flight stops, engines are stopped in
    `finally`); a second one only sets `skip_report` so clean-up still completes."""
    state = _SignalState()

    def handler(signum: int, _frame: FrameType | None) -> None:
        if state.finishing:
            state.signum = state.signum or signum
            log.warning("signal %d: finishing the report first (a second or so)", signum)
            return
        if state.signum is None:
            state.signum = signum
            raise Interrupted(signum)
        state.skip_report = True
        log.warning("second signal: the report will be skipped; still cleaning up")

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _close(engine: Engine) -> None:
    """Close an engine even when a signal cuts into its stop: the first signal raises
    Interrupted once (the handler raises only the first); the second attempt completes."""
    for _attempt in range(2):
        try:
            engine.close()
            return
        except Interrupted:
            log.warning("signal during the stop of %s: stopping it again", engine.name)
    engine.close()
