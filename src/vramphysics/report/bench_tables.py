"""The rows of the Benchmarks sheet (one per cell) and of the Requests sheet (one per request),
as plain tuples in the order of their columns (pure)."""

from __future__ import annotations

import statistics
from typing import Any

from vramphysics.outcome import Outcome
from vramphysics.records import BenchCell, BenchRequest, Stats
from vramphysics.report.columns import BENCH_COLUMNS
from vramphysics.report.series import cell_order, speed_cells

GIB = 2**30
Rows = list[tuple[Any, ...]]
Ranges = dict[str, tuple[int, int]]  # model -> (first, last) sheet row, header in row 1


def _r(v: float | None, n: int = 2) -> float | None:
    return None if v is None else round(v, n)


def _gib(v: float | None) -> float | None:
    return None if v is None else round(v / GIB, 4)


def _pcts(s: Stats) -> tuple[float | None, ...]:
    return (_r(s.p50), _r(s.p90), _r(s.p99))


def cell_status(c: BenchCell) -> str:
    """OK; PARTIAL when some measured requests failed; FAILED when none succeeded."""
    if c.n_measured == 0:
        return "FAILED"
    return "PARTIAL" if c.n_failed else "OK"


def peak_over_predicted(c: BenchCell) -> float | None:
    if c.peak_bytes is None or not c.predicted_bytes:
        return None
    return round(c.peak_bytes / c.predicted_bytes, 3)


def _memory(c: BenchCell) -> tuple[Any, ...]:
    return (
        _gib(c.peak_bytes),
        _gib(c.steady_bytes),
        _gib(c.predicted_bytes),
        peak_over_predicted(c),
        c.memory_metric or None,
    )


def cell_row(c: BenchCell) -> tuple[Any, ...]:
    """One cell's Benchmarks row, in the order of BENCH_COLUMNS."""
    t = c.ttft_ms
    return (
        c.model,
        c.engine,
        c.ctx,
        c.cell,
        c.prompt_tokens_target,
        _r(c.prompt_tokens, 1),
        c.output_tokens_target,
        _r(c.output_tokens, 1),
        c.concurrency,
        c.media or None,
        _r(c.media_tokens_per_item, 1),
        c.n_measured,
        c.n_failed,
        *_pcts(t),
        _r(t.mean),
        _r(t.std),
        _r(t.min),
        _r(t.max),
        *_pcts(c.tpot_ms),
        *_pcts(c.itl_ms),
        *_pcts(c.e2e_ms),
        _r(c.window_s, 3),
        _r(c.request_throughput_per_s, 3),
        _r(c.output_throughput_tokens_per_s),
        _r(c.decode_tokens_per_s),
        _r(c.prefill_tokens_per_s),
        _r(c.engine_prefill_tokens_per_s),
        _r(c.load_s, 3),
        _r(c.cold_ttft_ms),
        *_memory(c),
        c.probe,
        c.device,
        c.token_source or None,
        c.engine_version,
        "yes" if c.warm_prefix else "no",
        c.note or None,
        cell_status(c),
    )


def bench_rows(outcome: Outcome) -> tuple[Rows, Ranges]:
    """The Benchmarks rows (a model's cells together, the charted ones first) and, per model,
    the rows the charts read (its cells at its lowest concurrency, without `#warm`)."""
    rows: Rows = []
    ranges: Ranges = {}
    for m in outcome.models:
        mine = sorted((c for c in outcome.cells if c.model == m.model), key=cell_order)
        charted = len(speed_cells(mine, m.model))
        first = len(rows) + 2
        rows.extend(cell_row(c) for c in mine)
        if charted:
            ranges[m.model] = (first, first + charted - 1)
        elif not mine and m.status in ("FAILED", "MISSING"):
            blanks = [None] * (len(BENCH_COLUMNS) - 6)
            rows.append((m.model, m.engine, *blanks, m.engine_version, None, m.reason, m.status))
    return rows, ranges


def request_row(r: BenchRequest) -> tuple[Any, ...]:
    """One request's Requests row: every field but the ITL list, which is its count and p50."""
    itl_p50 = statistics.median(r.itl_ms) if r.itl_ms else None
    return (
        r.model,
        r.engine,
        r.ctx,
        r.cell,
        r.phase,
        r.index,
        r.prompt_tokens_target,
        r.output_tokens_target,
        r.concurrency,
        "yes" if r.ok else "no",
        r.error or None,
        r.prompt_tokens,
        r.output_tokens,
        r.token_source or None,
        _r(r.ttft_ms),
        _r(r.tpot_ms, 3),
        _r(r.e2e_ms),
        len(r.itl_ms),
        _r(itl_p50, 3),
        _r(r.start_s, 3),
        r.finish_reason,
        _r(r.engine_prefill_tokens_per_s),
        r.at or None,
    )


_PHASES = {"cold": 0, "warmup": 1, "measured": 2}


def request_rows(outcome: Outcome) -> Rows:
    """The Requests rows: by model (the run's order), context, cell, phase and index."""
    models = [m.model for m in outcome.models]

    def key(r: BenchRequest) -> tuple[int, int, str, int, int]:
        pos = models.index(r.model) if r.model in models else len(models)
        return (pos, r.ctx, r.cell, _PHASES.get(r.phase, 3), r.index)

    return [request_row(r) for r in sorted(outcome.requests, key=key)]
