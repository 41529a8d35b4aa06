"""The answer a reader wants first, one row per model x engine x device (pure: no I/O).

How much context fits in this device's free memory (and in 90 % of it), what to give vLLM for
the model's context, how fast it ran, and the one thing to know before trusting the row. Each
figure carries a sentence saying where it came from (the cell comments of the Answer sheet).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vramphysics.outcome import ModelRow, Outcome, model_key
from vramphysics.physics_db import PhysicsEntry
from vramphysics.records import BenchCell, RunHeader
from vramphysics.report import planning
from vramphysics.report.series import prompt_of, speed_cells
from vramphysics.setups import parse_model_id

GIB = 2**30
SHARE_OF_FREE = 0.9
LOW_R2 = 0.98
FAR_ABOVE_THEORY = 1.5
FAR_BELOW_THEORY = 0.5


@dataclass(frozen=True)
class Speed:
    """One benchmarked prompt length: its median TTFT and decode throughput."""

    prompt_tokens: float | None
    ctx: int
    ttft_p50_ms: float | None
    decode_tokens_per_s: float | None
    n_requests: int
    concurrency: int = 1


@dataclass(frozen=True)
class DeviceMemory:
    total_bytes: int
    used_by_others_bytes: int
    source: str

    @property
    def free_bytes(self) -> int:
        return self.total_bytes - self.used_by_others_bytes


@dataclass(frozen=True)
class AnswerRow:
    model: str
    engine: str
    device: str | None
    status: str
    free_bytes: int | None = None
    max_context: int | None = None
    max_context_90: int | None = None
    ctx: int | None = None
    required_bytes: float | None = None
    gpu_memory_utilization: float | None = None
    kv_cache_memory_bytes: int | None = None
    gib_per_10k: float | None = None
    measured_over_theory: float | None = None
    small: Speed | None = None
    large: Speed | None = None
    warning: str | None = None
    sources: tuple[tuple[str, str], ...] = ()  # (column header, where its figure came from)

    def source(self, header: str) -> str | None:
        return dict(self.sources).get(header)


def speeds(cells: Sequence[BenchCell], model: str) -> tuple[Speed, ...]:
    """The benchmarked prompt lengths of one model, smallest prompt first: its cells without
    `#warm` at its lowest concurrency (as the charts), each with its TTFT p50."""
    return tuple(
        Speed(
            prompt_tokens=prompt_of(c),
            ctx=c.ctx,
            ttft_p50_ms=c.ttft_ms.p50,
            decode_tokens_per_s=c.decode_tokens_per_s,
            n_requests=c.n_measured,
            concurrency=c.concurrency,
        )
        for c in speed_cells(cells, model)
        if c.n_measured
    )


def device_memory(
    header: RunHeader | None, device: str, entry: PhysicsEntry | None
) -> DeviceMemory | None:
    """The device's total and the memory others used when the run started (run header first)."""
    for d in header.devices if header else ():
        if d.get("name") == device and d.get("total_bytes"):
            used = d.get("used_bytes")
            why = (
                f"run header: {device} total, {int(used) / GIB:.2f} GiB used by others at the start"
                if used is not None
                else f"run header: {device} total; memory used by others unknown: taken as 0"
            )
            return DeviceMemory(int(d["total_bytes"]), int(used or 0), why)
    if entry is not None and entry.device_total_bytes:
        why = "device total from the calibration; memory used by others unknown: taken as 0"
        return DeviceMemory(int(entry.device_total_bytes), 0, why)
    return None


def _plan_ctx(model: str, cells: Sequence[Speed], row: ModelRow) -> tuple[int | None, str]:
    ctx = parse_model_id(model).ctx
    if ctx is not None:
        return ctx, "the model's #ctx"
    if cells:
        return cells[-1].ctx, "the benchmark's context (the model ID has no #ctx)"
    if row.fit is not None and row.fit.points:
        return max(c for c, _ in row.fit.points), "the largest context measured (no #ctx)"
    return None, "no #ctx, benchmark or point"


def plan_command(entry: PhysicsEntry, mem: DeviceMemory, used: int, ctx: int | None) -> str:
    """The `vramphysics plan` command that prints the same figures."""
    target = f" --ctx {ctx}" if ctx is not None else ""
    return (
        f"vramphysics plan --engine {entry.engine} --model {entry.model} "
        f"--device '{entry.device}' --total-gib {mem.total_bytes / GIB!r} "
        f"--used-gib {used / GIB!r}{target}"
    )


def _warning(row: ModelRow, fits: bool | None, refusal: str | None) -> str | None:
    """The one plain-words warning for a row, most serious first."""
    if row.status != "OK":
        return f"{row.status}: {row.reason}"
    spills = [w.message for w in row.warnings if "spilled" in w.message]
    if spills:
        return f"part of the model ran on the CPU ({spills[0]}): slower, and memory figures mix"
    fit = row.fit
    if fit is not None and fit.r2 is not None and fit.r2 < LOW_R2:
        return f"the fit is loose (r2 {fit.r2:.3f}): measure more contexts before trusting it"
    ratio = row.measured_over_theory
    if ratio is not None and ratio > FAR_ABOVE_THEORY:
        return (
            f"measured {ratio:.1f}x the theory KV per token: the engine holds more than the KV "
            "cache per token (KV dtype, parallel slots?)"
        )
    if ratio is not None and ratio < FAR_BELOW_THEORY:
        return f"measured {ratio:.2f}x the theory KV per token: the probe may miss the KV cache"
    if fits is False:
        return refusal
    others = [w.message for w in row.warnings]
    return others[0] if others else None


def _bench_sources(cells: Sequence[Speed]) -> list[tuple[str, str]]:
    if not cells:
        return []
    small, large = cells[0], cells[-1]

    def where(c: Speed) -> str:
        prompt = "?" if c.prompt_tokens is None else f"{c.prompt_tokens:g}"
        return (
            f"Benchmarks sheet: {prompt} prompt tokens at ctx {c.ctx}, concurrency "
            f"{c.concurrency}, p50 of {c.n_requests} request(s)"
        )

    return [
        ("TTFT p50 small prompt (ms)", where(small)),
        ("TTFT p50 large prompt (ms)", where(large)),
        ("Decode small prompt (tok/s)", where(small)),
        ("Decode large prompt (tok/s)", where(large)),
    ]


def _theory_source(row: ModelRow) -> list[tuple[str, str]]:
    t = row.theory_kv_bytes_per_token
    if row.fit is None or not t:
        return []
    return [
        (
            "Measured/theory",
            f"{row.fit.cost_per_token_bytes:.1f} B/token measured / {float(t):.1f} B/token "
            "from the model's metadata (Calibration sheet)",
        )
    ]


def answer_row(
    row: ModelRow,
    entries: Sequence[PhysicsEntry],
    header: RunHeader | None,
    bench_cells: Sequence[BenchCell],
    settings: str | None = None,
) -> AnswerRow:
    """The answer for one model: its plan on the device it was measured on, and its speed."""
    cells = speeds(bench_cells, row.model)
    base = AnswerRow(
        model=row.model,
        engine=row.engine,
        device=row.device,
        status=row.status,
        measured_over_theory=row.measured_over_theory,
        small=cells[0] if cells else None,
        large=cells[-1] if cells else None,
        sources=(*_bench_sources(cells), *_theory_source(row)),
    )
    entry = (
        planning.select_entry(entries, row.engine, model_key(row.model), row.device, settings)
        if row.device
        else None
    )
    mem = device_memory(header, row.device, entry) if row.device else None
    if entry is None or mem is None:
        missing = "no calibration of it on this device" if entry is None else "device size unknown"
        return _with(base, warning=_warning(row, None, None) or f"no plan: {missing}")
    ctx, ctx_why = _plan_ctx(row.model, cells, row)
    return _planned(base, row, entry, mem, ctx, ctx_why)


def _planned(
    base: AnswerRow,
    row: ModelRow,
    entry: PhysicsEntry,
    mem: DeviceMemory,
    ctx: int | None,
    ctx_why: str,
) -> AnswerRow:
    """`base` with the plan of its calibration on the device: all free, and 90 % of it."""
    try:
        plan = planning.plan_for(
            entry,
            total_bytes=mem.total_bytes,
            used_by_others_bytes=mem.used_by_others_bytes,
            ctx=ctx,
        )
        used_90 = mem.total_bytes - int(SHARE_OF_FREE * mem.free_bytes)
        plan_90 = planning.plan_for(
            entry, total_bytes=mem.total_bytes, used_by_others_bytes=used_90, ctx=ctx
        )
    except ValueError as exc:  # e.g. an entry written by hand with a cost <= 0
        return _with(base, warning=f"no plan from the calibration: {exc}")
    refusal = next((m for m in plan.messages if m.startswith("refused")), None)
    vllm = planning.preallocates(row.engine)
    return _with(
        base,
        free_bytes=mem.free_bytes,
        max_context=plan.max_context,
        max_context_90=plan_90.max_context,
        ctx=plan.ctx,
        required_bytes=plan.required_bytes,
        gpu_memory_utilization=plan.gpu_memory_utilization if vllm else None,
        kv_cache_memory_bytes=plan.kv_cache_memory_bytes if vllm else None,
        gib_per_10k=entry.cost_per_token_bytes * 10_000 / GIB,
        warning=_warning(row, plan.fits, refusal),
        sources=(*base.sources, *_plan_sources(entry, mem, used_90, ctx, ctx_why)),
    )


def _plan_sources(
    entry: PhysicsEntry, mem: DeviceMemory, used_90: int, ctx: int | None, ctx_why: str
) -> tuple[tuple[str, str], ...]:
    """Where each planned figure of a row came from (the cell comments of the Answer sheet)."""
    return (
        ("Free (GiB)", mem.source),
        ("Max context (tokens)", plan_command(entry, mem, mem.used_by_others_bytes, ctx)),
        ("Max context @ 90% free (tokens)", plan_command(entry, mem, used_90, ctx)),
        ("Context (tokens)", ctx_why),
        ("Needs (GiB)", f"calibration {entry.probe} of {entry.calibrated_at or 'unknown date'}"),
        ("GiB per 10k tokens", f"cost per token {entry.cost_per_token_bytes:.1f} B x 10,000"),
    )


def _with(row: AnswerRow, **changes: Any) -> AnswerRow:
    return dataclasses.replace(row, **changes)


def answer_rows(outcome: Outcome, entries: Sequence[PhysicsEntry]) -> tuple[AnswerRow, ...]:
    """One answer per model of the run, in the run's order, planned from the calibration with
    the settings the run used (as `plan --settings TAG` would)."""
    return tuple(
        answer_row(m, entries, outcome.header, outcome.cells, _run_settings(outcome, m))
        for m in outcome.models
    )


def _run_settings(outcome: Outcome, row: ModelRow) -> str | None:
    """The settings tag this run calibrated the model with (None: it wrote no entry)."""
    key = (row.engine, model_key(row.model), row.device)
    own = (e for e in outcome.entries if (e.engine, e.model, e.device) == key)
    return next((e.settings_tag for e in own), None)
