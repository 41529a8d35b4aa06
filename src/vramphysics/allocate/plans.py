"""The plan by the engine's memory kind."""

from __future__ import annotations

from typing import Any

from vramphysics.allocate.on_demand import plan_on_demand
from vramphysics.allocate.preallocated import plan_preallocated
from vramphysics.allocate.records import Physics, Plan, memory_kind
from vramphysics.physics_db import PhysicsEntry
from vramphysics.theory import Theory


def plan_for(
    source: PhysicsEntry | Theory | Physics,
    *,
    engine: str,
    total_bytes: int,
    ctx: int | None = None,
    budget_bytes: float | None = None,
    used_by_others_bytes: int = 0,
    margin: float = 0.05,
    model: str | None = None,
    device: str | None = None,
) -> Plan:
    """The plan by the engine's memory kind: `plan_preallocated` or `plan_on_demand`."""
    common: dict[str, Any] = dict(
        total_bytes=total_bytes,
        ctx=ctx,
        budget_bytes=budget_bytes,
        used_by_others_bytes=used_by_others_bytes,
        margin=margin,
        engine=engine,
        model=model,
        device=device,
    )
    if memory_kind(engine) == "preallocated":
        return plan_preallocated(source, **common)
    return plan_on_demand(source, **common)
