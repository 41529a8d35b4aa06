"""What each model's charts show, as plain numbers (pure: no I/O).

Memory vs context: the measured points, the fitted line `base + ctx x cost` and the theory line
`weights + ctx x KV bytes per token`. Benchmarks: TTFT against prompt tokens and decode
throughput against the context. The Excel charts and the HTML figures both draw these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vramphysics.outcome import ModelRow, Outcome
from vramphysics.records import BenchResult, CalibrationPoint

LINE_STEPS = 8  # a straight line needs two points; a few more let a reader hover any context


@dataclass(frozen=True)
class ModelSeries:
    model: str
    engine: str
    device: str | None
    engine_kv: bool  # the fit is the engine's own KV figures (vLLM), not a regression
    points: tuple[tuple[int, float], ...]  # (ctx, measured bytes)
    line_ctx: tuple[int, ...]  # the contexts the two lines are drawn at
    fit_bytes: tuple[float, ...] | None
    theory_bytes: tuple[float, ...] | None
    ttft: tuple[tuple[int, float], ...]  # (prompt tokens, TTFT ms)
    decode: tuple[tuple[int, float], ...]  # (ctx, decode tokens/s)

    @property
    def has_memory_chart(self) -> bool:
        return bool(self.points)

    @property
    def has_bench_charts(self) -> bool:
        return bool(self.ttft or self.decode)


def is_engine_kv(points: Sequence[CalibrationPoint]) -> bool:
    """Points calibrated from the engine's own KV figures (as outcome.fits_for decides)."""
    return bool(points) and all(
        p.engine_components.get("calibration") == "engine-kv"
        and p.engine_components.get("kv_pool_bytes")
        and p.engine_components.get("kv_tokens")
        for p in points
    )


def line_contexts(
    points: Sequence[tuple[int, float]], extra: Sequence[int] = ()
) -> tuple[int, ...]:
    """0 up to a little past the largest context measured, in LINE_STEPS equal steps."""
    top = max([c for c, _ in points] + list(extra) + [1])
    end = int(top * 1.1)
    return tuple(round(end * i / LINE_STEPS) for i in range(LINE_STEPS + 1))


def _theory_line(row: ModelRow, ctxs: Sequence[int]) -> tuple[float, ...] | None:
    theory = row.theory or {}
    weights, kv = theory.get("weights_bytes"), theory.get("kv_bytes_per_token")
    if not weights or not kv:
        return None
    return tuple(float(weights) + c * float(kv) for c in ctxs)


def model_series(
    row: ModelRow, points: Sequence[CalibrationPoint], benches: Sequence[BenchResult]
) -> ModelSeries:
    pts = tuple((p.ctx, float(p.measured_bytes)) for p in points)
    mine = [b for b in benches if b.model == row.model]
    ctxs = line_contexts(pts, [b.ctx for b in mine])
    fit = row.fit
    return ModelSeries(
        model=row.model,
        engine=row.engine,
        device=row.device,
        engine_kv=is_engine_kv(points),
        points=pts,
        line_ctx=ctxs,
        fit_bytes=tuple(fit.predict(c) for c in ctxs) if fit else None,
        theory_bytes=_theory_line(row, ctxs),
        ttft=tuple(
            sorted((b.prompt_tokens, b.ttft_ms) for b in mine if b.prompt_tokens and b.ttft_ms)
        ),
        decode=tuple(sorted((b.ctx, b.decode_tokens_per_s) for b in mine if b.decode_tokens_per_s)),
    )


def all_series(outcome: Outcome) -> tuple[ModelSeries, ...]:
    """One ModelSeries per model that has anything to draw, in the run's order."""
    out = []
    for row in outcome.models:
        points = [p for p in outcome.points if p.model == row.model]
        s = model_series(row, points, outcome.benches)
        if s.has_memory_chart or s.has_bench_charts:
            out.append(s)
    return tuple(out)
