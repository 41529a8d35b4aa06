"""What each model's charts show, as plain numbers (pure: no I/O).

Memory vs context: the measured points, the fitted line `base + ctx x cost` and the theory line
`weights + ctx x KV bytes per token`. Benchmarks: TTFT p50 and decode throughput against the
prompt tokens, of the model's cells at its lowest concurrency (`#warm` cells left out). The Excel
charts and the HTML figures both draw these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vramphysics.outcome import ModelRow, Outcome
from vramphysics.records import BenchCell, CalibrationPoint

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
    ttft: tuple[tuple[float, float], ...]  # (prompt tokens, TTFT p50 ms)
    decode: tuple[tuple[float, float], ...]  # (prompt tokens, decode tokens/s)

    @property
    def has_memory_chart(self) -> bool:
        return bool(self.points)

    @property
    def has_bench_charts(self) -> bool:
        return bool(self.ttft or self.decode)


def cell_order(c: BenchCell) -> tuple[bool, int, int, int, str]:
    """A model's cells in the Benchmarks sheet: the charted ones first (not #warm, lowest
    concurrency), each group by prompt length."""
    return (c.warm_prefix, c.concurrency, c.prompt_tokens_target, c.ctx, c.cell)


def speed_cells(cells: Sequence[BenchCell], model: str) -> tuple[BenchCell, ...]:
    """The cells the charts and the Answer read: the model's cells without `#warm`, at its
    lowest concurrency (one stream, where it ran one), smallest prompt first."""
    mine = sorted((c for c in cells if c.model == model and not c.warm_prefix), key=cell_order)
    if not mine:
        return ()
    low = mine[0].concurrency
    return tuple(c for c in mine if c.concurrency == low)


def prompt_of(c: BenchCell) -> float:
    """The cell's prompt length: the engine's count, else what was asked."""
    return c.prompt_tokens if c.prompt_tokens is not None else float(c.prompt_tokens_target)


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
    row: ModelRow, points: Sequence[CalibrationPoint], cells: Sequence[BenchCell]
) -> ModelSeries:
    pts = tuple((p.ctx, float(p.measured_bytes)) for p in points)
    mine = speed_cells(cells, row.model)
    ctxs = line_contexts(pts, [c.ctx for c in mine])
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
        ttft=tuple(sorted((prompt_of(c), c.ttft_ms.p50) for c in mine if c.ttft_ms.p50)),
        decode=tuple(
            sorted((prompt_of(c), c.decode_tokens_per_s) for c in mine if c.decode_tokens_per_s)
        ),
    )


def all_series(outcome: Outcome) -> tuple[ModelSeries, ...]:
    """One ModelSeries per model that has anything to draw, in the run's order."""
    out = []
    for row in outcome.models:
        points = [p for p in outcome.points if p.model == row.model]
        s = model_series(row, points, outcome.cells)
        if s.has_memory_chart or s.has_bench_charts:
            out.append(s)
    return tuple(out)
