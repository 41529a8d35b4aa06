"""Calibration: the pure fit `bytes = base + ctx * cost`, and one measured engine start.

`fit_linear` is a pure function over (ctx, bytes) pairs. `measure_point` drives one engine start:
launch at `ctx`, wait until ready, warm up, sample the steady memory, and leave the engine running
for the caller to benchmark or stop. When several probes are recorded through the start (NVML and
the process tree), the engine's own report of where its buffers live picks the one kept.
"""

from __future__ import annotations

import logging
import math
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from scipy import stats

from vramphysics.engines.base import Completion, Engine, MemoryComponents
from vramphysics.errors import EngineError
from vramphysics.probes import MemoryTrace, Probe, ProbeChoice
from vramphysics.recorder import READ_ERRORS, Recorder, pick_trace
from vramphysics.records import CalibrationPoint
from vramphysics.setups import ModelSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fit:
    """Least squares over the measured points, with standard errors and residuals."""

    base_bytes: float
    cost_per_token_bytes: float
    base_stderr_bytes: float
    cost_stderr_bytes: float
    r2: float | None
    n_points: int
    points: tuple[tuple[int, float], ...]
    residuals_bytes: tuple[float, ...]

    def predict(self, ctx: int) -> float:
        return self.base_bytes + ctx * self.cost_per_token_bytes


class NotEnoughPoints(ValueError):
    """Fewer distinct contexts than the fit needs."""


def fit_linear(points: Sequence[tuple[int, float]], *, min_points: int = 3) -> Fit:
    """Fit `bytes = base + ctx * cost` with `scipy.stats.linregress`."""
    ctxs = sorted({c for c, _ in points})
    if len(points) < min_points or len(ctxs) < min(min_points, 2):
        raise NotEnoughPoints(
            f"{len(points)} good point(s) at {len(ctxs)} context(s); need at least {min_points}"
        )
    pts = tuple(sorted((int(c), float(b)) for c, b in points))
    x = [c for c, _ in pts]
    y = [b for _, b in pts]
    res = stats.linregress(x, y)
    residuals = tuple(b - (res.intercept + res.slope * c) for c, b in pts)
    r2 = float(res.rvalue) ** 2 if not math.isnan(res.rvalue) else 0.0
    return Fit(
        base_bytes=float(res.intercept),
        cost_per_token_bytes=float(res.slope),
        base_stderr_bytes=float(res.intercept_stderr),
        cost_stderr_bytes=float(res.stderr),
        r2=r2,
        n_points=len(pts),
        points=pts,
        residuals_bytes=residuals,
    )


@dataclass(frozen=True)
class StartTimes:
    launch_s: float
    ready_s: float
    warmup_s: float
    cold: Completion | None = None  # the warm-up: the first request after ready


def components_dict(mem: MemoryComponents | None) -> dict[str, Any]:
    if mem is None:
        return {}
    out: dict[str, Any] = {
        "source": mem.source,
        "weights_bytes": mem.weights_bytes,
        "kv_pool_bytes": mem.kv_pool_bytes,
        "kv_tokens": mem.kv_tokens,
        "compute_bytes": mem.compute_bytes,
        "cuda_graph_bytes": mem.cuda_graph_bytes,
        "total_bytes": mem.total_bytes,
        "calibration": mem.calibration,
        "device_resident": mem.device_resident,
    }
    out.update(mem.extra)
    return out


# what runs on the started engine after its point is measured (the benchmark): the point, the
# recorder the point's trace came from (still sampling) and the start's times
During = Callable[[CalibrationPoint, Recorder, "StartTimes"], None]


def measure_point(
    engine: Engine,
    spec: ModelSpec,
    ctx: int,
    *,
    make_probe: Callable[[Engine], Probe | ProbeChoice],
    interval_s: float,
    settle_s: float,
    warmup_tokens: int,
    during: During | None = None,
) -> tuple[CalibrationPoint, MemoryTrace, StartTimes]:
    """Start `engine` fresh at `ctx`, warm it up, record its steady memory. Leaves it running.

    `make_probe` gives one probe, or a `ProbeChoice` of probes recorded together; then the
    engine's `memory_report().device_resident` decides which one the point keeps, and the point
    says why (`probe_reason`). `during` then runs with the recorders still sampling (the steady
    value held, the series going on): the benchmark's memory is sampled through its requests.
    """
    made = make_probe(engine)
    choice = made if isinstance(made, ProbeChoice) else ProbeChoice((made,), made.name)
    recorders = [Recorder(p, interval_s) for p in choice.probes]
    try:
        times = _start_and_settle(engine, spec, ctx, recorders, settle_s, warmup_tokens)
        traces = [r.snapshot() for r in recorders]
        point, trace = _point(engine, spec, ctx, choice, traces, times)
        if during is not None:
            for r in recorders:
                r.hold_steady()
            during(point, recorders[traces.index(trace)], times)
    finally:
        for r in recorders:
            r.stop()
            r.probe.close()
    return point, trace, times


def _point(
    engine: Engine,
    spec: ModelSpec,
    ctx: int,
    choice: ProbeChoice,
    traces: list[MemoryTrace],
    times: StartTimes,
) -> tuple[CalibrationPoint, MemoryTrace]:
    """The calibration point of a start, from the trace that measured the engine."""
    mem = engine.memory_report()
    trace, reason = pick_trace(
        traces,
        choice.reason,
        device_resident=None if mem is None else mem.device_resident,
        source=mem.source if mem is not None else engine.name,
    )
    if len(traces) > 1:
        log.info("%s ctx=%d: measured with %s", spec.raw, ctx, reason)
    point = CalibrationPoint(
        model=spec.raw,
        engine=engine.name,
        ctx=ctx,
        probe=trace.probe,
        device=trace.device,
        measured_bytes=trace.attributed_bytes,
        peak_bytes=trace.attributed_peak_bytes,
        baseline_bytes=trace.baseline_bytes,
        n_samples=len(trace.samples),
        ready_s=round(times.ready_s, 3),
        engine_version=engine.version(),
        engine_components=components_dict(mem),
        metric=trace.steady_metric,
        peak_metric=trace.series_metric,
        probe_reason=reason + (f"; {trace.note}" if trace.note else ""),
        host=socket.gethostname(),
    )
    return point, trace


def _start_and_settle(
    engine: Engine,
    spec: ModelSpec,
    ctx: int,
    recorders: list[Recorder],
    settle_s: float,
    warmup_tokens: int,
) -> StartTimes:
    """Baseline, start, ready, warm-up, mark and settle, with every recorder running; the
    caller stops the recorders whatever happens."""
    _baselines(recorders, spec)
    t0 = time.monotonic()
    engine.start(spec, ctx)
    for r in recorders:
        r.start()
    engine.wait_ready()
    t_ready = time.monotonic()
    cold = engine.warm_up(warmup_tokens)
    t_warm = time.monotonic()
    for r in recorders:
        r.mark()
    time.sleep(settle_s)
    engine.check_alive()
    return StartTimes(launch_s=t0, ready_s=t_ready - t0, warmup_s=t_warm - t_ready, cold=cold)


def _baselines(recorders: list[Recorder], spec: ModelSpec) -> None:
    """Every recorder's baseline, read before the engine starts. A failed read fails this start
    (EngineError `probe_failed`, the engine not started), not the run."""
    for r in recorders:
        try:
            r.baseline()
        except READ_ERRORS as exc:
            raise EngineError(
                "probe_failed",
                f"baseline read of the {r.probe.name} probe on {r.probe.device} failed before "
                f"the start, so the start was not measured: {exc}",
                model_id=spec.raw,
            ) from exc


def context_part_error(fit: Fit, ctx: int, measured_bytes: float) -> float:
    """The relative error of a prediction on the part that depends on the context:
    (predicted - base) against (measured - base). An error on the total hides a wrong slope
    behind a large base; this one does not."""
    grown = measured_bytes - fit.base_bytes
    if grown <= 0:
        raise ValueError(
            f"measured {measured_bytes:.0f} B at ctx {ctx} is not above the fitted base "
            f"{fit.base_bytes:.0f} B: no context-dependent part to compare"
        )
    return (fit.predict(ctx) - measured_bytes) / grown
