"""The one place the report calls the planner (allocate.py).

Every plan figure in the report (Answer sheet, Plan sheet, HTML page, terminal table) comes
through these functions, so the report and `vramphysics plan` cannot disagree, and a change to
the planner's names is one edit here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from vramphysics import allocate
from vramphysics.allocate import Plan, SheetRow
from vramphysics.physics_db import PhysicsEntry

PREALLOCATING_ENGINES = frozenset({"vllm"})  # reserve utilization x total up front


def preallocates(engine: str) -> bool:
    return engine in PREALLOCATING_ENGINES


def select_entry(
    entries: Iterable[PhysicsEntry], engine: str, model: str, device: str
) -> PhysicsEntry | None:
    """The calibration `plan` would use for this engine, model and device."""
    return allocate.select_physics(entries, engine, model, device)


def plan_for(
    entry: PhysicsEntry,
    *,
    total_bytes: int,
    used_by_others_bytes: int,
    ctx: int | None,
    margin: float = 0.05,
) -> Plan:
    """The plan `vramphysics plan --engine E --ctx N --total-gib T --used-gib U` prints."""
    if preallocates(entry.engine):
        if ctx is None:
            raise ValueError("a vLLM plan needs a context")
        return allocate.plan_vllm(
            entry,
            ctx=ctx,
            total_bytes=total_bytes,
            used_by_others_bytes=used_by_others_bytes,
            margin=margin,
            engine=entry.engine,
            model=entry.model,
            device=entry.device,
        )
    return allocate.plan_ollama(
        entry,
        ctx=ctx,
        total_bytes=total_bytes,
        used_by_others_bytes=used_by_others_bytes,
        margin=margin,
        engine=entry.engine,
        model=entry.model,
        device=entry.device,
    )


def sheet_rows(entries: Sequence[PhysicsEntry], contexts: Sequence[int]) -> list[SheetRow]:
    return allocate.plan_sheet_rows(entries, {}, contexts=tuple(contexts))
