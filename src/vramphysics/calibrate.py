"""Calibration: the pure fit `bytes = base + ctx * cost`, and one measured engine start.

`fit_linear` is a pure function over (ctx, bytes) pairs. `measure_point` drives one engine start:
launch at `ctx`, wait until ready, warm up, sample the steady memory, and leave the engine running
for the caller to benchmark or stop.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from scipy import stats

from vramphysics.engines.base import Engine, MemoryComponents
from vramphysics.probes import MemoryTrace, Probe, Recorder
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


def measure_point(
    engine: Engine,
    spec: ModelSpec,
    ctx: int,
    *,
    make_probe: Callable[[Engine], Probe],
    interval_s: float,
    settle_s: float,
    warmup_tokens: int,
) -> tuple[CalibrationPoint, MemoryTrace, StartTimes]:
    """Start `engine` fresh at `ctx`, warm it up, record its steady memory. Leaves it running."""
    recorder = Recorder(make_probe(engine), interval_s)
    recorder.baseline()
    t0 = time.monotonic()
    engine.start(spec, ctx)
    recorder.start()
    try:
        engine.wait_ready()
        t_ready = time.monotonic()
        engine.warm_up(warmup_tokens)
        t_warm = time.monotonic()
        recorder.mark()
        time.sleep(settle_s)
        engine.check_alive()
    finally:
        trace = recorder.stop()
        recorder.probe.close()
    mem = engine.memory_report()
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
        ready_s=round(t_ready - t0, 3),
        engine_version=engine.version(),
        engine_components=components_dict(mem),
    )
    return point, trace, StartTimes(launch_s=t0, ready_s=t_ready - t0, warmup_s=t_warm - t_ready)
