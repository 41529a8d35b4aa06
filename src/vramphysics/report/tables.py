"""The rows of each report table, as plain tuples in the order of their columns (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vramphysics.calibrate import Fit
from vramphysics.outcome import ModelRow, Outcome
from vramphysics.physics_db import PhysicsEntry
from vramphysics.report import planning
from vramphysics.report.answer import AnswerRow
from vramphysics.report.columns import F_GIB, F_TOKENS, Column, ExtraSheet
from vramphysics.report.series import is_engine_kv

GIB = 2**30
MIB = 2**20
Rows = list[tuple[Any, ...]]
Ranges = dict[str, tuple[int, int]]  # model -> (first, last) sheet row, header in row 1


def gib(v: float | None) -> float | None:
    return None if v is None else round(v / GIB, 4)


def _round(v: float | None, n: int = 3) -> float | None:
    return None if v is None else round(v, n)


def _spread_or_stderr(f: Fit | None, engine_kv: bool) -> tuple[Any, ...]:
    """(base stderr, cost stderr, base spread, cost spread): a regression has standard
    errors; an engine-KV fit has only the spread of its starts, and is called that."""
    if f is None:
        return (None, None, None, None)
    base, cost = _round(f.base_stderr_bytes / MIB, 3), _round(f.cost_stderr_bytes, 2)
    return (None, None, base, cost) if engine_kv else (base, cost, None, None)


def _calibration_row(
    m: ModelRow, probe: str | None, f: Fit | None, engine_kv: bool
) -> tuple[Any, ...]:
    theory_w = m.theory.get("weights_bytes") if m.theory else None
    t = m.theory_kv_bytes_per_token
    return (
        m.model,
        m.engine,
        m.status,
        m.reason,
        m.device,
        probe,
        gib(f.base_bytes) if f else None,
        _round(f.cost_per_token_bytes, 1) if f else None,
        gib(f.cost_per_token_bytes * 10_000) if f else None,
        _round(f.r2, 5) if f else None,
        f.n_points if f else None,
        *_spread_or_stderr(f, engine_kv),
        t,
        gib(theory_w) if theory_w else None,
        _round(f.cost_per_token_bytes / float(t), 3) if f and t else None,
        _round(m.engine_kv_bytes_per_token, 1),
        m.engine_version,
        "; ".join(w.message for w in m.warnings) or None,
    )


def calibration_rows(outcome: Outcome) -> Rows:
    rows = []
    for m in outcome.models:
        kv = is_engine_kv([p for p in outcome.points if p.model == m.model])
        rows.append(_calibration_row(m, m.probe, m.fit, kv))  # engine-KV is always the primary
        for probe, f in m.other_fits:
            rows.append(_calibration_row(m, probe, f, False))
    return rows


def point_rows(outcome: Outcome) -> tuple[Rows, Ranges]:
    """The Points rows (one model's rows together) and each model's row range."""
    rows: Rows = []
    ranges: Ranges = {}
    for m in outcome.models:
        points = [p for p in outcome.points if p.model == m.model]
        regression = m.fit if not is_engine_kv(points) else None  # residuals only of a fit
        for p in points:
            comp = p.engine_components
            rows.append(
                (
                    p.model,
                    p.engine,
                    p.ctx,
                    _round(p.measured_bytes / MIB),
                    _round(p.peak_bytes / MIB),
                    _round(p.baseline_bytes / MIB),
                    _round((p.measured_bytes - regression.predict(p.ctx)) / MIB)
                    if regression
                    else None,
                    p.n_samples,
                    p.ready_s,
                    p.probe,
                    p.device,
                    _round(comp["kv_pool_bytes"] / MIB) if comp.get("kv_pool_bytes") else None,
                    _round(comp["compute_bytes"] / MIB) if comp.get("compute_bytes") else None,
                    _round(comp["weights_bytes"] / MIB) if comp.get("weights_bytes") else None,
                    p.at,
                )
            )
        if points:
            ranges[m.model] = (len(rows) - len(points) + 2, len(rows) + 1)
    return rows, ranges


def failure_rows(outcome: Outcome) -> Rows:
    return [
        (
            f.model,
            f.engine,
            f.ctx,
            f.failure_kind,
            f.reason,
            f.max_context,
            f.log_tail[-2000:] or None,
        )
        for f in outcome.failures
    ]


def answer_table(answers: tuple[AnswerRow, ...]) -> Rows:
    def cell(c: Any, attr: str) -> float | None:
        return None if c is None else _round(getattr(c, attr), 2)

    return [
        (
            a.model,
            a.engine,
            a.device,
            a.status,
            gib(a.free_bytes),
            a.max_context,
            a.max_context_90,
            a.ctx,
            gib(a.required_bytes),
            a.gpu_memory_utilization,
            a.kv_cache_memory_bytes,
            _round(a.gib_per_10k, 4),
            _round(a.measured_over_theory, 3),
            cell(a.small, "ttft_p50_ms"),
            cell(a.large, "ttft_p50_ms"),
            cell(a.small, "decode_tokens_per_s"),
            cell(a.large, "decode_tokens_per_s"),
            a.warning,
        )
        for a in answers
    ]


PLAN_CONTEXTS = (4096, 8192, 16384, 32768, 131072)


def plan_sheet(
    entries: Sequence[PhysicsEntry], contexts: Sequence[int] = PLAN_CONTEXTS
) -> ExtraSheet:
    """The Plan sheet: per calibrated model and device, vLLM's utilization for standard contexts
    and the largest context at 90% of the device (best probe per model and device)."""
    columns = (
        Column("Engine", "Engine of the calibration", 10),
        Column("Model", "Model as stored in the physics database", 34),
        Column("Device", "Device the calibration was measured on", 16),
        Column("Probe", "Which calibration of the model the plan uses", 12),
        Column("Device total (GiB)", "Memory of the device", 12, F_GIB),
        *(
            Column(
                f"Util @ {c} tokens",
                f"--gpu-memory-utilization for a {c}-token context: (base + ctx x cost) / total "
                "+ 5% margin, rounded up; empty when it does not fit",
                12,
                "0.000",
            )
            for c in contexts
        ),
        Column(
            "Max context @ 90% (tokens)",
            "Longest context with --gpu-memory-utilization 0.9",
            14,
            F_TOKENS,
        ),
    )
    out = []
    for r in planning.sheet_rows(entries, contexts):
        utils = dict(r.utilization)
        out.append(
            (
                r.engine,
                r.model,
                r.device,
                r.probe,
                gib(r.total_bytes),
                *(utils.get(c) for c in contexts),
                r.max_context_at_90,
            )
        )
    return ExtraSheet("Plan", columns, tuple(out))
