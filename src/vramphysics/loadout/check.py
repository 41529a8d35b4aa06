"""Does a loadout fit: refusal reasons before anything starts, and what `--force` waived. Pure."""

from __future__ import annotations

from collections.abc import Sequence

from vramphysics.loadout.plan import LoadoutItem, LoadoutPlan

GIB = 2**30


def check_fits(
    items: Sequence[LoadoutItem],
    free_bytes: int | None,
    device: str,
    *,
    free_why: str = "",
    force: bool = False,
) -> list[str]:
    """Refusal reasons (empty: it fits, or `force` waives what cannot be checked). Pure.

    What cannot be vouched for is refused unless `force`: a model with neither a calibration
    nor a theory, and a device without a free-memory figure. A known sum above the free memory
    is refused even with `force`.
    """
    refusals = []
    if not force:
        refusals += [
            f"{it.spec.raw} has no prediction ({it.note}): calibrate it, or pass --force "
            "to start it unchecked"
            for it in items
            if it.required_bytes is None
        ]
        if free_bytes is None:
            refusals.append(
                f"no free-memory figure for {device} ({free_why or 'unknown'}): set "
                "guardrail.assume_free_gib, or pass --force to start unchecked"
            )
    if free_bytes is None:
        return refusals
    known = [it for it in items if it.required_bytes is not None]
    total = sum(it.required_bytes or 0 for it in known)
    if total <= free_bytes:
        return refusals
    biggest = sorted(known, key=lambda it: -(it.required_bytes or 0))[:3]
    names = ", ".join(
        f"{it.spec.raw} {(it.required_bytes or 0) / GIB:.2f} GiB ({it.source})" for it in biggest
    )
    return [
        *refusals,
        f"the loadout needs {total / GIB:.2f} GiB but {free_bytes / GIB:.2f} GiB is free on "
        f"{device}; biggest consumers: {names}",
    ]


def unchecked(plan: LoadoutPlan) -> list[str]:
    """What `--force` let through without a check, one line each."""
    lines = [
        f"warning: {it.spec.raw}: not in the sum ({it.note}); started unchecked (--force)"
        for it in plan.items
        if it.required_bytes is None
    ]
    if plan.free_bytes is None:
        lines.append(
            f"warning: no free-memory figure for {plan.device} ({plan.free_why}); "
            "the loadout was not checked (--force)"
        )
    return lines
