"""A plan in words: the verdict, the device, the physics and what to type to serve it."""

from __future__ import annotations

from collections.abc import Sequence

from vramphysics.allocate.formula import format_bytes
from vramphysics.allocate.records import Plan


def render_plan(plan: Plan, advice: Sequence[tuple[str, str]] = ()) -> str:
    """The plan as lines of text; `advice` is (label, text) pairs worded for the engine."""
    verdict = "FITS" if plan.fits else "REFUSED"
    lines = [f"{verdict}: {plan.engine} / {plan.model} on {plan.device} ({plan.source} physics)"]
    if plan.settings_tag:
        lines.append(f"settings: {plan.settings_tag}")
    lines.append(
        f"device:   {format_bytes(plan.total_bytes)} total, "
        f"{format_bytes(plan.used_by_others_bytes)} used by others, "
        f"{format_bytes(plan.free_bytes)} free; margin {plan.margin:g}"
    )
    lines.append(
        f"physics:  {format_bytes(plan.base_bytes)} + ctx x "
        f"{format_bytes(plan.cost_per_token_bytes)}"
    )
    if plan.ctx is not None and plan.required_bytes is not None:
        lines.append(f"ctx {plan.ctx}: needs {format_bytes(plan.required_bytes)}")
    if plan.gpu_memory_utilization is not None:
        lines.append(f"--gpu-memory-utilization {plan.gpu_memory_utilization:.3f}")
    if plan.max_context is not None:
        lines.append(f"longest context: {plan.max_context} tokens")
    lines.extend(f"- {message}" for message in plan.messages)
    lines.extend(f"{label + ':':9} {text}" for label, text in advice)
    return "\n".join(lines)
