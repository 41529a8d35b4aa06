"""From journal records to what the database and the report need (pure: no I/O).

Points are grouped per (engine, model, device, probe); each group with enough points becomes a
physics entry. A model measured on several devices (a `--ray` run over nodes of several kinds)
has one Calibration row per device. The model key in the database is the ID without runtime flags, so `#ctx=…` or
`#stream` do not split one model's physics.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from vramphysics.calibrate import Fit, NotEnoughPoints, fit_linear
from vramphysics.physics_db import PhysicsEntry
from vramphysics.probes import device_names
from vramphysics.records import (
    BenchCell,
    BenchRequest,
    BenchResult,
    CalibrationPoint,
    ModelInfo,
    Record,
    RunHeader,
    Stats,
    StatusRow,
    WarningRow,
)
from vramphysics.setups import parse_model_id


def model_key(model_id: str) -> str:
    return parse_model_id(model_id).key


@dataclass(frozen=True)
class ModelRow:
    """One model's line in the Calibration sheet."""

    model: str
    engine: str
    status: str
    reason: str
    device: str | None
    probe: str | None
    fit: Fit | None
    theory: dict[str, Any] | None
    engine_version: str | None
    engine_kv_bytes_per_token: float | None
    failures: tuple[StatusRow, ...] = ()
    warnings: tuple[WarningRow, ...] = ()
    other_fits: tuple[tuple[str, Fit], ...] = ()  # (probe, fit) beyond the primary one

    @property
    def theory_kv_bytes_per_token(self) -> float | None:
        return None if not self.theory else self.theory.get("kv_bytes_per_token")

    @property
    def measured_over_theory(self) -> float | None:
        t = self.theory_kv_bytes_per_token
        if self.fit is None or not t:
            return None
        return self.fit.cost_per_token_bytes / float(t)


@dataclass(frozen=True)
class Outcome:
    header: RunHeader | None
    models: tuple[ModelRow, ...]
    points: tuple[CalibrationPoint, ...]
    cells: tuple[BenchCell, ...]
    requests: tuple[BenchRequest, ...]
    failures: tuple[StatusRow, ...]
    warnings: tuple[WarningRow, ...]
    entries: tuple[PhysicsEntry, ...]
    engine_versions: dict[str, str] = field(default_factory=dict)
    infos: tuple[ModelInfo, ...] = ()

    def status_counts(self) -> dict[str, int]:
        return dict(Counter(m.status for m in self.models))


def _engine_kv_per_token(points: list[CalibrationPoint]) -> float | None:
    vals = []
    for p in points:
        comp = p.engine_components
        if comp.get("kv_pool_bytes") and comp.get("kv_tokens"):
            vals.append(comp["kv_pool_bytes"] / comp["kv_tokens"])
    return sum(vals) / len(vals) if vals else None


@dataclass
class _Collected:
    """The journal's records sorted by kind, in the order the models first appear."""

    header: RunHeader | None
    infos: dict[str, ModelInfo] = field(default_factory=dict)
    points: dict[tuple[str, str, int], CalibrationPoint] = field(default_factory=dict)
    # (model, device, ctx, cell) -> the cell; a re-done cell (a resumed run) replaces the first
    cells: dict[tuple[str, str, int, str], BenchCell] = field(default_factory=dict)
    # (model, device, ctx, cell, phase, index) -> the request; a re-done cell's requests replace
    # its first
    requests: dict[tuple[str, str, int, str, str, int], BenchRequest] = field(default_factory=dict)
    finals: dict[str, StatusRow] = field(default_factory=dict)
    failures: list[StatusRow] = field(default_factory=list)
    warnings: list[WarningRow] = field(default_factory=list)
    order: list[str] = field(default_factory=list)


def _collect(records: list[Record]) -> _Collected:
    c = _Collected(header=next((r for r in records if isinstance(r, RunHeader)), None))
    for r in records:
        model = getattr(r, "model", None)
        if model is not None and model not in c.order:
            c.order.append(model)
        if isinstance(r, ModelInfo):
            c.infos[r.model] = r
        elif isinstance(r, CalibrationPoint):
            # the first wins: a point is never duplicated
            c.points.setdefault((r.model, r.device, r.ctx), r)
        elif isinstance(r, BenchCell | BenchRequest | BenchResult):
            _collect_bench(c, r)
        elif isinstance(r, StatusRow):
            if r.ctx is None:
                c.finals[r.model] = r
            if r.status == "FAILED":
                c.failures.append(r)
        elif isinstance(r, WarningRow):
            c.warnings.append(r)
    return c


def _collect_bench(c: _Collected, r: BenchCell | BenchRequest | BenchResult) -> None:
    """A cell or a request: a re-done one (a resumed run) replaces the first, in its place.
    An old journal's single request (`bench`) becomes a cell of n 1."""
    if isinstance(r, BenchCell):
        c.cells[(r.model, r.device, r.ctx, r.cell)] = r
    elif isinstance(r, BenchRequest):
        c.requests[(r.model, r.device, r.ctx, r.cell, r.phase, r.index)] = r
    else:
        legacy = cell_from_legacy(r)
        c.cells.setdefault((legacy.model, legacy.device, legacy.ctx, legacy.cell), legacy)


def _status(
    final: StatusRow | None,
    mpoints: list[CalibrationPoint],
    fits: list[tuple[str, Fit]],
    why_not: str,
) -> tuple[str, str]:
    """A model's status and reason: its final row's, corrected by the fit of its points."""
    reason = final.reason if final else "not finished (interrupted)"
    status = final.status if final else ("INCOMPLETE" if mpoints else "FAILED")
    if mpoints and not fits:
        if status == "OK":
            status = "NO_FIT"
        reason = f"no fit: {why_not}"
    elif fits and status == "NO_FIT":  # the fit is decided here, from the points themselves
        status, reason = "OK", f"{len(mpoints)} points"
    return status, reason


def _entry(
    c: _Collected,
    model: str,
    engine: str,
    mpoints: list[CalibrationPoint],
    fit_probe: str,
    f: Fit,
) -> PhysicsEntry:
    """The database entry of one fit of one model's points."""
    info = c.infos.get(model)
    theory = info.theory if info else None
    device = mpoints[0].device
    point_ctxs = {p.ctx for p in mpoints}
    # one start per benchmarked context on this device
    bench_ctxs = {k[2] for k in c.cells if k[0] == model and k[1] == device}
    starts = len(mpoints) + len(bench_ctxs - point_ctxs)
    return PhysicsEntry(
        engine=engine,
        model=model_key(model),
        device=device,
        probe=fit_probe,
        base_bytes=round(f.base_bytes, 1),
        cost_per_token_bytes=round(f.cost_per_token_bytes, 3),
        r2=None if f.r2 is None else round(f.r2, 6),
        n_points=f.n_points,
        points=tuple((c_, float(b)) for c_, b in f.points),
        engine_starts=starts,
        theory={
            "kv_bytes_per_token": theory.get("kv_bytes_per_token") if theory else None,
            "weights_bytes": theory.get("weights_bytes") if theory else None,
            "max_context_tokens": theory.get("max_context_tokens") if theory else None,
        },
        engine_version=mpoints[-1].engine_version,
        calibrated_at=mpoints[-1].at,
        base_stderr_bytes=round(f.base_stderr_bytes, 1),
        cost_stderr_bytes=round(f.cost_stderr_bytes, 3),
        device_total_bytes=_device_total(c.header, device),
        driver=c.header.driver if c.header else None,
        settings=dict(info.settings) if info else {},
    )


def _model(
    c: _Collected, model: str, device: str | None, min_points: int
) -> tuple[ModelRow, list[PhysicsEntry], str, ModelInfo | None]:
    """One model's Calibration row on one device (None: no point measured), its database
    entries, its engine and its info record."""
    info = c.infos.get(model)
    final = c.finals.get(model)
    mpoints = sorted(
        (p for (m, d, _c), p in c.points.items() if m == model and d == device),
        key=lambda p: p.ctx,
    )
    engine = (
        info.engine
        if info
        else (mpoints[0].engine if mpoints else (final.engine if final else "?"))
    )
    fits, why_not = fits_for(mpoints, min_points)
    status, reason = _status(final, mpoints, fits, why_not)
    entries = [_entry(c, model, engine, mpoints, fit_probe, f) for fit_probe, f in fits]
    row = ModelRow(
        model=model,
        engine=engine,
        status=status,
        reason=reason,
        device=mpoints[0].device if mpoints else None,
        probe=fits[0][0] if fits else (mpoints[0].probe if mpoints else None),
        fit=fits[0][1] if fits else None,
        theory=info.theory if info else None,
        engine_version=info.engine_version if info else None,
        engine_kv_bytes_per_token=_engine_kv_per_token(mpoints),
        failures=tuple(f for f in c.failures if f.model == model),
        warnings=tuple(w for w in c.warnings if w.model == model) + _spill_warnings(mpoints),
        other_fits=tuple(fits[1:]),
    )
    return row, entries, engine, info


def build_outcome(records: list[Record], *, min_points: int = 3) -> Outcome:
    c = _collect(records)
    rows: list[ModelRow] = []
    entries: list[PhysicsEntry] = []
    versions: dict[str, str] = {}
    for model in c.order:
        devices: list[str | None] = list(dict.fromkeys(d for (m, d, _c) in c.points if m == model))
        for device in devices or [None]:
            row, model_entries, engine, info = _model(c, model, device, min_points)
            if info:
                versions[engine] = info.engine_version
            entries.extend(model_entries)
            rows.append(row)
    return Outcome(
        header=c.header,
        models=tuple(rows),
        points=tuple(
            sorted(c.points.values(), key=lambda p: (c.order.index(p.model), p.device, p.ctx))
        ),
        cells=tuple(c.cells.values()),
        requests=tuple(c.requests.values()),
        failures=tuple(c.failures),
        warnings=tuple(c.warnings),
        entries=tuple(entries),
        engine_versions=versions,
        infos=tuple(c.infos.values()),
    )


def _device_total(header: RunHeader | None, device: str) -> int | None:
    """The device's total from the run header; for a label of several GPUs (`2x NAME`), the sum
    of as many of the header's GPUs of that name (None when any is missing)."""
    if header is None:
        return None
    totals: dict[str, list[int]] = {}
    for d in header.devices:
        if d.get("total_bytes") is not None:
            totals.setdefault(str(d.get("name")), []).append(int(d["total_bytes"]))
    names = device_names(device)
    if any(len(totals.get(n, [])) < names.count(n) for n in set(names)):
        return None
    return sum(sum(totals[n][: names.count(n)]) for n in set(names))


def engine_kv_fit(points: list[CalibrationPoint]) -> Fit:
    """Cost per token from the engine's own KV figures (pool / tokens); base = measured - pool.

    Used for engines that pre-allocate their KV pool (vLLM), where memory does not move with
    the context. Each start is a check of the others: the base's spread is its standard error.
    """
    costs = [
        p.engine_components["kv_pool_bytes"] / p.engine_components["kv_tokens"] for p in points
    ]
    bases = [p.measured_bytes - p.engine_components["kv_pool_bytes"] for p in points]
    cost = sum(costs) / len(costs)
    base = sum(bases) / len(bases)
    return Fit(
        base_bytes=base,
        cost_per_token_bytes=cost,
        base_stderr_bytes=(max(bases) - min(bases)) / 2,
        cost_stderr_bytes=(max(costs) - min(costs)) / 2,
        r2=None,
        n_points=len(points),
        points=tuple((p.ctx, float(p.measured_bytes)) for p in points),
        residuals_bytes=tuple(b - base for b in bases),
    )


def fits_for(points: list[CalibrationPoint], min_points: int) -> tuple[list[tuple[str, Fit]], str]:
    """Every fit the points allow, the primary one first, and why there is none when none.

    - engine-kv (the engine's own KV figures; probe named by their source) when every point has them;
    - otherwise a regression of the probe's measurements over the contexts;
    - and a regression of the engine's own total (e.g. Ollama's /api/ps `size`, probe `ollama-ps`).
    """
    if not points:
        return [], "no points"
    out: list[tuple[str, Fit]] = []
    why = ""
    comps = [p.engine_components for p in points]
    if all(
        c.get("calibration") == "engine-kv" and c.get("kv_pool_bytes") and c.get("kv_tokens")
        for c in comps
    ):
        out.append((str(comps[0].get("source") or "engine"), engine_kv_fit(points)))
    else:
        try:
            fit = fit_linear([(p.ctx, p.measured_bytes) for p in points], min_points=min_points)
            if fit.cost_per_token_bytes > 0:
                out.append((points[0].probe, fit))
            else:
                why = _flat(fit)
        except NotEnoughPoints as exc:
            why = str(exc)
    if all(c.get("total_bytes") for c in comps):
        try:
            totals = [(p.ctx, float(p.engine_components["total_bytes"])) for p in points]
            fit = fit_linear(totals, min_points=min_points)
            if fit.cost_per_token_bytes > 0:
                out.append((str(comps[0].get("source") or "engine"), fit))
            else:
                why = why or _flat(fit)
        except NotEnoughPoints as exc:
            why = why or str(exc)
    return out, why


def _flat(fit: Fit) -> str:
    """Memory that does not grow with the context is not physics: say so, write nothing."""
    r2 = f", r2 {fit.r2:.3f}" if fit.r2 is not None else ""
    return (
        f"memory did not grow with the context (slope {fit.cost_per_token_bytes:.1f} B/token{r2}): "
        "the probe did not see the KV cache, or the points are noise"
    )


def _spill_warnings(points: list[CalibrationPoint]) -> tuple[WarningRow, ...]:
    """A model whose engine reports less memory on the GPU than in all (Ollama's size_vram <
    size) has spilled layers to the CPU: the report must say so beside its figures."""
    out = []
    for p in points:
        comp = p.engine_components
        if comp.get("spilled_to_cpu"):
            vram, total = comp.get("size_vram"), comp.get("total_bytes")
            detail = (
                f" ({vram / 2**30:.2f} of {total / 2**30:.2f} GiB on the GPU)"
                if vram is not None and total
                else ""
            )
            out.append(
                WarningRow(
                    model=p.model,
                    engine=p.engine,
                    ctx=p.ctx,
                    message=f"spilled to the CPU at ctx {p.ctx}{detail}",
                )
            )
    return tuple(out)


LEGACY_CELL = "legacy-1"  # the cell ID of an old journal's single benchmark request


def _one(value: float | None) -> Stats:
    """The distribution of a single figure (n 1), or of none."""
    if value is None:
        return Stats(n=0)
    return Stats(n=1, mean=value, std=0.0, min=value, p50=value, p90=value, p99=value, max=value)


def cell_from_legacy(b: BenchResult) -> BenchCell:
    """An old journal's `bench` line (one request per model) as a cell of n 1, so old runs still
    report. Its peak was the engine start's, not the request's: the note says so, and the cell's
    peak stays empty rather than pass it off as memory during the request."""
    tpot = 1000.0 / b.decode_tokens_per_s if b.decode_tokens_per_s else None
    e2e = (
        1000.0 * b.output_tokens / b.e2e_tokens_per_s
        if b.output_tokens and b.e2e_tokens_per_s
        else None
    )
    peak = f"; start-up peak {b.peak_bytes / 2**30:.3f} GiB" if b.peak_bytes is not None else ""
    return BenchCell(
        model=b.model,
        engine=b.engine,
        ctx=b.ctx,
        cell=LEGACY_CELL,
        prompt_tokens_target=b.prompt_tokens or 0,
        output_tokens_target=b.output_tokens or 0,
        concurrency=1,
        warm_prefix=False,
        n_measured=1 if b.ttft_ms is not None else 0,
        n_failed=0 if b.ttft_ms is not None else 1,
        prompt_tokens=None if b.prompt_tokens is None else float(b.prompt_tokens),
        output_tokens=None if b.output_tokens is None else float(b.output_tokens),
        token_source=b.token_source,
        ttft_ms=_one(b.ttft_ms),
        tpot_ms=_one(tpot),
        itl_ms=Stats(n=0),
        e2e_ms=_one(e2e),
        window_s=None,
        request_throughput_per_s=1000.0 / e2e if e2e else None,
        output_throughput_tokens_per_s=b.e2e_tokens_per_s,
        decode_tokens_per_s=b.decode_tokens_per_s,
        prefill_tokens_per_s=b.prefill_tokens_per_s,
        engine_prefill_tokens_per_s=None,
        load_s=b.load_s,
        cold_ttft_ms=None,
        cold_prompt_tokens=None,
        peak_bytes=None,
        steady_bytes=None,
        predicted_bytes=None,
        memory_metric="",
        probe=b.probe,
        device=b.device,
        engine_version=b.engine_version,
        note=f"old journal: one request, no warm-up or repetitions; asked = counted{peak}",
        at=b.at,
    )
