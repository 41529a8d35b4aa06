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


def preallocates(engine: str) -> bool:
    """Does the engine reserve utilization x total up front (vLLM)?"""
    return allocate.memory_kind(engine) == "preallocated"


def select_entry(
    entries: Iterable[PhysicsEntry], engine: str, model: str, device: str, settings: str | None
) -> PhysicsEntry | None:
    """The calibration `plan --settings TAG` would use for this engine, model and device
    (None: any settings, as `plan` does when there is one)."""
    return allocate.select_physics(entries, engine, model, device, settings=settings)


def plan_for(
    entry: PhysicsEntry,
    *,
    total_bytes: int,
    used_by_others_bytes: int,
    ctx: int | None,
    margin: float = 0.05,
) -> Plan:
    """The plan `vramphysics plan --engine E --ctx N --total-gib T --used-gib U` prints."""
    if preallocates(entry.engine) and ctx is None:
        raise ValueError("a vLLM plan needs a context")
    return allocate.plan_for(
        entry,
        engine=entry.engine,
        ctx=ctx,
        total_bytes=total_bytes,
        used_by_others_bytes=used_by_others_bytes,
        margin=margin,
        model=entry.model,
        device=entry.device,
    )


def sheet_rows(entries: Sequence[PhysicsEntry], contexts: Sequence[int]) -> list[SheetRow]:
    return allocate.plan_sheet_rows(entries, {}, contexts=tuple(contexts))
