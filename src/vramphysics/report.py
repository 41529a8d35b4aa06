"""The Excel report (openpyxl) from an Outcome, and nothing else.

Sheets: Summary, Calibration, Points, Benchmarks, Failures (and Plan when rows are given).
Every header states its unit and carries a comment saying what the column means.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openpyxl import Workbook
from openpyxl.comments import Comment
from openpyxl.styles import Font, PatternFill
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.worksheet import Worksheet

from vramphysics.allocate import plan_sheet_rows
from vramphysics.calibrate import Fit
from vramphysics.outcome import ModelRow, Outcome
from vramphysics.physics_db import PhysicsEntry
from vramphysics.redact import redact

GIB = 2**30
MIB = 2**20
FILL_MISSING = PatternFill("solid", start_color="FFF2CC", end_color="FFF2CC")  # yellow
FILL_FAILED = PatternFill("solid", start_color="F4C7C3", end_color="F4C7C3")  # red
FILL_WARN = PatternFill("solid", start_color="FCE5CD", end_color="FCE5CD")  # orange
_STATUS_FILL = {
    "MISSING": FILL_MISSING,
    "FAILED": FILL_FAILED,
    "NO_FIT": FILL_WARN,
    "INCOMPLETE": FILL_WARN,
}


@dataclass(frozen=True)
class Column:
    header: str
    comment: str
    width: int = 14


@dataclass(frozen=True)
class ExtraSheet:
    """A sheet another module contributes (e.g. the Plan sheet from the planner)."""

    title: str
    columns: tuple[Column, ...]
    rows: tuple[tuple[Any, ...], ...]


def _gib(v: float | None) -> float | None:
    return None if v is None else round(v / GIB, 4)


def _round(v: float | None, n: int = 3) -> float | None:
    return None if v is None else round(v, n)


def _sheet(
    wb: Workbook, title: str, columns: Sequence[Column], rows: Sequence[Sequence[Any]]
) -> Worksheet:
    ws = wb.create_sheet(title)
    for i, col in enumerate(columns, start=1):
        cell = ws.cell(row=1, column=i, value=col.header)
        cell.font = Font(bold=True)
        cell.comment = Comment(col.comment, "vram-physics")
        ws.column_dimensions[get_column_letter(i)].width = col.width
    for r, row in enumerate(rows, start=2):
        for c, value in enumerate(row, start=1):
            ws.cell(row=r, column=c, value=redact(value) if isinstance(value, str) else value)
    ws.freeze_panes = "A2"
    return ws


def _fill_status(ws: Worksheet, status_col: int) -> None:
    for row in ws.iter_rows(min_row=2):
        fill = _STATUS_FILL.get(str(row[status_col - 1].value))
        if fill is not None:
            for cell in row:
                cell.fill = fill


CALIBRATION_COLUMNS = (
    Column("Model", "Model ID as written in the test setups", 34),
    Column("Engine", "llamacpp, vllm or ollama", 10),
    Column(
        "Status", "OK, MISSING (not on disk, nothing started), FAILED, NO_FIT (too few points)", 10
    ),
    Column("Reason", "Why this status; for failures the engine's own message", 40),
    Column("Device", "GPU name from NVML, or cpu for the process-tree probe", 14),
    Column(
        "Probe",
        "What measured the memory: nvml (device used), process (USS of the engine's process tree), engine figures",
        10,
    ),
    Column(
        "Base (GiB)",
        "Intercept of bytes = base + ctx x cost: memory at context 0 (weights, runtime, fixed buffers)",
        12,
    ),
    Column("Cost per token (B)", "Slope: bytes per token of context, measured", 14),
    Column("GiB per 10k tokens", "Slope x 10,000 tokens, in GiB", 12),
    Column("r2", "Coefficient of determination of the linear fit", 8),
    Column("Points", "Number of contexts measured (one fresh engine start each)", 8),
    Column("Base stderr (MiB)", "Standard error of the intercept", 12),
    Column("Cost stderr (B)", "Standard error of the slope", 12),
    Column(
        "Theory KV (B/token)",
        "2 x layers x KV heads x head dim x bytes per value, from the model's own metadata",
        14,
    ),
    Column("Theory weights (GiB)", "Sum of the weight tensors' sizes from the model file", 12),
    Column("Measured/theory", "Measured cost per token / theory KV bytes per token", 12),
    Column(
        "Engine KV (B/token)",
        "KV bytes per token from the engine's own log or metrics (pool / cells)",
        14,
    ),
    Column("Engine version", "Engine and version that produced the figures", 22),
    Column("Warnings", "Guardrail and other warnings for this model", 40),
)

POINT_COLUMNS = (
    Column("Model", "Model ID", 34),
    Column("Engine", "Engine", 10),
    Column("Context (tokens)", "Context size the engine was started with", 12),
    Column("Measured (MiB)", "Steady memory after warm-up minus the baseline before the start", 12),
    Column("Peak (MiB)", "Highest sample of the start minus the baseline", 12),
    Column(
        "Baseline (MiB)", "Memory in use before the engine started (NVML) or 0 (process tree)", 12
    ),
    Column("Fit residual (MiB)", "Measured minus the fitted line", 12),
    Column("Samples", "Probe samples taken during the start", 8),
    Column("Ready (s)", "Launch until the engine answered", 10),
    Column("Probe", "nvml or process", 10),
    Column("Device", "GPU name or cpu", 14),
    Column("Engine KV pool (MiB)", "KV cache size the engine reports for this start", 12),
    Column("Engine compute (MiB)", "Compute buffers the engine reports for this start", 12),
    Column("Engine weights (MiB)", "Weight buffers the engine reports for this start", 12),
    Column("At (UTC)", "When the point was measured", 20),
)

BENCH_COLUMNS = (
    Column("Model", "Model ID", 34),
    Column("Engine", "Engine", 10),
    Column("Context (tokens)", "Context size of the benchmark start", 12),
    Column(
        "TTFT (ms)",
        "Request sent until the first chunk carrying text (role-only chunks excluded)",
        10,
    ),
    Column(
        "Decode (tokens/s)", "(output tokens - 1) / (last text - first text): excludes TTFT", 12
    ),
    Column("End-to-end (tokens/s)", "Output tokens / whole request time", 12),
    Column("Prefill (tokens/s)", "Prompt tokens / TTFT, when the engine reports prompt tokens", 12),
    Column(
        "Output tokens",
        "From the engine's usage figures or its own tokenizer (see Token source)",
        10,
    ),
    Column("Prompt tokens", "From the engine", 10),
    Column(
        "Token source",
        "engine-usage: the engine's usage object; engine-tokenizer: the engine's own tokenizer on the output",
        16,
    ),
    Column("Setup (s)", "Launch, ready, warm-up and steady sampling", 10),
    Column("Exec (s)", "The benchmark request", 10),
    Column("Cleanup (s)", "Stopping the engine's whole process tree", 10),
    Column("Load (s)", "Cold-start load time reported by the engine (Ollama load_duration)", 10),
    Column("Peak memory (GiB)", "Highest probe sample during the start, minus the baseline", 12),
    Column("Probe", "What measured the peak", 10),
    Column("Device", "GPU name or cpu", 14),
    Column("Engine version", "Engine and version", 22),
    Column("Status", "OK or FAILED", 8),
)

FAILURE_COLUMNS = (
    Column("Model", "Model ID", 34),
    Column("Engine", "Engine", 10),
    Column("Context (tokens)", "The step's context (empty: the whole model)", 12),
    Column(
        "Kind",
        "timeout, engine_crashed, start_failed, kv_too_small, cuda_oom, insufficient_free_memory, model_not_found, download_failed, request_failed, other",
        18,
    ),
    Column("Reason", "The engine's message", 50),
    Column(
        "Max context (tokens)", "Largest context the engine said would fit, when it said so", 12
    ),
    Column("Log tail", "The end of the engine's log (secrets masked)", 80),
)


def _calibration_row(m: ModelRow, probe: str | None, f: Fit | None) -> tuple[Any, ...]:
    theory_w = m.theory.get("weights_bytes") if m.theory else None
    t = m.theory_kv_bytes_per_token
    return (
        m.model,
        m.engine,
        m.status,
        m.reason,
        m.device,
        probe,
        _gib(f.base_bytes) if f else None,
        _round(f.cost_per_token_bytes, 1) if f else None,
        _gib(f.cost_per_token_bytes * 10_000) if f else None,
        _round(f.r2, 5) if f else None,
        f.n_points if f else None,
        _round(f.base_stderr_bytes / MIB, 3) if f else None,
        _round(f.cost_stderr_bytes, 2) if f else None,
        t,
        _gib(theory_w) if theory_w else None,
        _round(f.cost_per_token_bytes / float(t), 3) if f and t else None,
        _round(m.engine_kv_bytes_per_token, 1),
        m.engine_version,
        "; ".join(w.message for w in m.warnings) or None,
    )


def _summary(wb: Workbook, outcome: Outcome) -> None:
    ws = wb.active
    assert ws is not None
    ws.title = "Summary"
    h = outcome.header
    rows: list[tuple[str, Any]] = []
    if h is not None:
        devices = "; ".join(
            f"{d.get('name')} ({(d.get('total_bytes') or 0) / GIB:.1f} GiB)" for d in h.devices
        )
        rows += [
            ("Run", h.run_id),
            ("Started (UTC)", h.started_at),
            ("Host", h.host),
            ("Platform", h.platform),
            ("Python", h.python),
            ("Devices", devices),
            ("Driver", h.driver or "none (no NVIDIA GPU)"),
            ("Probe", f"{h.probe}: {h.probe_reason}"),
            ("Sweep contexts", ", ".join(map(str, h.sweep_contexts))),
            ("Setups", ", ".join(h.setups)),
            ("Git commit", h.git_commit),
            ("vram-physics", h.tool_version),
            ("Command", " ".join(h.argv)),
        ]
    for engine, version in sorted(outcome.engine_versions.items()):
        rows.append((f"Engine {engine}", version))
    for status, n in sorted(outcome.status_counts().items()):
        rows.append((f"Models {status}", n))
    rows.append(("Points measured", len(outcome.points)))
    rows.append(("Physics entries", len(outcome.entries)))
    for r, (k, v) in enumerate(rows, start=1):
        ws.cell(row=r, column=1, value=k).font = Font(bold=True)
        ws.cell(row=r, column=2, value=redact(v) if isinstance(v, str) else v)
    ws.column_dimensions["A"].width = 18
    ws.column_dimensions["B"].width = 80


PLAN_CONTEXTS = (4096, 8192, 16384, 32768, 131072)


def plan_sheet(
    entries: Sequence[PhysicsEntry], contexts: Sequence[int] = PLAN_CONTEXTS
) -> ExtraSheet:
    """The Plan sheet: per calibrated model and device, vLLM's utilization for standard contexts
    and the largest context at 90% of the device (best probe per model and device)."""
    rows = plan_sheet_rows(entries, {}, contexts=tuple(contexts))
    columns = (
        Column("Engine", "Engine of the calibration", 10),
        Column("Model", "Model as stored in the physics database", 34),
        Column("Device", "Device the calibration was measured on", 16),
        Column("Probe", "Which calibration of the model the plan uses", 12),
        Column("Device total (GiB)", "Memory of the device", 12),
        *(
            Column(
                f"Util @ {c} tokens",
                f"--gpu-memory-utilization for a {c}-token context: (base + ctx x cost) / total "
                "+ 5% margin, rounded up; empty when it does not fit",
                12,
            )
            for c in contexts
        ),
        Column(
            "Max context @ 90% (tokens)", "Longest context with --gpu-memory-utilization 0.9", 14
        ),
    )
    out = []
    for r in rows:
        utils = dict(r.utilization)
        out.append(
            (
                r.engine,
                r.model,
                r.device,
                r.probe,
                _gib(r.total_bytes),
                *(utils.get(c) for c in contexts),
                r.max_context_at_90,
            )
        )
    return ExtraSheet("Plan", columns, tuple(out))


def write_report(path: Path, outcome: Outcome, extra: Sequence[ExtraSheet] = ()) -> Path:
    """Write the workbook atomically (a reader never sees half a file)."""
    wb = Workbook()
    _summary(wb, outcome)

    cal_rows = []
    for m in outcome.models:
        for probe, f in ((m.probe, m.fit), *m.other_fits):
            cal_rows.append(_calibration_row(m, probe, f))
    ws = _sheet(wb, "Calibration", CALIBRATION_COLUMNS, cal_rows)
    _fill_status(ws, 3)
    for row in ws.iter_rows(min_row=2):
        if row[-1].value:
            row[-1].fill = FILL_WARN

    fits = {m.model: m.fit for m in outcome.models}
    point_rows = []
    for p in outcome.points:
        fit = fits.get(p.model)
        comp = p.engine_components
        point_rows.append(
            (
                p.model,
                p.engine,
                p.ctx,
                _round(p.measured_bytes / MIB),
                _round(p.peak_bytes / MIB),
                _round(p.baseline_bytes / MIB),
                _round((p.measured_bytes - fit.predict(p.ctx)) / MIB) if fit else None,
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
    _sheet(wb, "Points", POINT_COLUMNS, point_rows)

    bench_rows: list[tuple[Any, ...]] = [
        (
            b.model,
            b.engine,
            b.ctx,
            _round(b.ttft_ms, 2),
            _round(b.decode_tokens_per_s, 2),
            _round(b.e2e_tokens_per_s, 2),
            _round(b.prefill_tokens_per_s, 2),
            b.output_tokens,
            b.prompt_tokens,
            b.token_source,
            b.setup_s,
            b.exec_s,
            b.cleanup_s,
            b.load_s,
            _gib(b.peak_bytes),
            b.probe,
            b.device,
            b.engine_version,
            "OK",
        )
        for b in outcome.benches
    ]
    benched = {b.model for b in outcome.benches}
    for m in outcome.models:
        if m.model not in benched and m.status in ("FAILED", "MISSING"):
            blanks = [None] * (len(BENCH_COLUMNS) - 4)
            bench_rows.append((m.model, m.engine, *blanks, m.engine_version, m.status))
    ws = _sheet(wb, "Benchmarks", BENCH_COLUMNS, bench_rows)
    _fill_status(ws, len(BENCH_COLUMNS))

    fail_rows = [
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
    ws = _sheet(wb, "Failures", FAILURE_COLUMNS, fail_rows)
    for row in ws.iter_rows(min_row=2):
        for cell in row:
            cell.fill = FILL_FAILED

    for sheet in extra:
        _sheet(wb, sheet.title, sheet.columns, sheet.rows)

    # built in memory and written by us: a full disk is one OSError, not a half-written zip
    # file whose garbage collection prints a second traceback from zipfile
    buf = io.BytesIO()
    wb.save(buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        try:
            data = memoryview(buf.getvalue())
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
