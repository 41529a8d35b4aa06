"""The report's plan sheet: utilization per standard context for every calibration."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from vramphysics.allocate.formula import max_context, required_bytes, vllm_utilization
from vramphysics.allocate.physics import select_physics
from vramphysics.allocate.records import MAX_UTIL, SHEET_CONTEXTS, SHEET_UTILIZATION, SheetRow
from vramphysics.physics_db import PhysicsEntry


def plan_sheet_rows(
    entries: Iterable[PhysicsEntry],
    device_totals: Mapping[str, int],
    contexts: Sequence[int] = SHEET_CONTEXTS,
    margin: float = 0.05,
    utilization: float = SHEET_UTILIZATION,
    best_probe_only: bool = True,
) -> list[SheetRow]:
    """Per calibrated entry (one per settings): the utilization for each context and the
    longest context at 90%.

    A device's total comes from `device_totals`, else from the entry; entries whose device
    total is unknown are left out. "Longest context at 90%" uses the same rule as the plans:
    `floor(((utilization - margin) x total - base) / cost)`.
    """
    entries = list(entries)
    if best_probe_only:  # one row per engine, model, device and settings
        keys = sorted({(e.engine, e.model, e.device, e.settings_tag) for e in entries})
        chosen = [select_physics(entries, *k) for k in keys]
        picked = [e for e in chosen if e is not None]
    else:
        picked = sorted(entries, key=lambda e: e.key)
    rows = []
    for e in picked:
        total = device_totals.get(e.device, e.device_total_bytes)
        if not total or e.cost_per_token_bytes <= 0:
            continue  # no device size, or an entry that is not physics (written by hand?)
        utils: list[tuple[int, float | None]] = []
        for c in contexts:
            req = required_bytes(e.base_bytes, e.cost_per_token_bytes, c)
            fits = req / total + margin <= MAX_UTIL
            utils.append((c, vllm_utilization(req, total, margin) if fits else None))
        rows.append(
            SheetRow(
                engine=e.engine,
                model=e.model,
                device=e.device,
                probe=e.probe,
                total_bytes=int(total),
                base_bytes=e.base_bytes,
                cost_per_token_bytes=e.cost_per_token_bytes,
                margin=margin,
                utilization=tuple(utils),
                max_context_at_90=max_context(
                    (utilization - margin) * total, e.base_bytes, e.cost_per_token_bytes
                ),
                settings_tag=e.settings_tag,
            )
        )
    return rows
