"""What every plan shares: checks of its inputs, the Plan it builds, the model's context cap."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vramphysics.allocate.records import Physics, Plan
from vramphysics.errors import ConfigError


def with_messages(plan: Plan, messages: Sequence[str]) -> Plan:
    """The same plan with `messages` (e.g. where the device figures came from) put first."""
    return dataclasses.replace(plan, messages=(*messages, *plan.messages))


def _check_device(total_bytes: int, used_by_others_bytes: int, margin: float) -> None:
    if total_bytes <= 0:
        raise ConfigError(f"the device total must be > 0 bytes, got {total_bytes}")
    if used_by_others_bytes < 0:
        raise ConfigError(f"memory used by others must be >= 0 bytes, got {used_by_others_bytes}")
    if not 0 <= margin < 1:
        raise ConfigError(f"the margin must be in [0, 1), got {margin}")


def _check_physics(phys: Physics) -> None:
    """Figures no plan can be made from are a ConfigError naming where they came from."""
    cost = phys.cost_per_token_bytes
    if not (math.isfinite(cost) and cost > 0) or not math.isfinite(phys.base_bytes):
        where = (
            f"the calibration of {phys.engine} / {phys.model} on {phys.device} "
            f"({phys.settings_tag}, {phys.probe})"
            if phys.source == "calibrated"
            else f"the {phys.source} physics"
        )
        raise ConfigError(
            f"{where} has base {phys.base_bytes} bytes and cost {cost} bytes per token: "
            "the cost per token must be a number > 0 (memory must grow with the context)"
        )


@dataclass(frozen=True)
class _Setup:
    """What a plan is made for: the checked physics, the names, and the device's memory."""

    phys: Physics
    engine: str
    model: str | None
    device: str | None
    total_bytes: int
    used_by_others_bytes: int
    margin: float

    @property
    def free_bytes(self) -> int:
        return self.total_bytes - self.used_by_others_bytes


def _plan(setup: _Setup, messages: Sequence[str], **verdict: Any) -> Plan:
    """A Plan from the physics and the device; `verdict` holds the plan-specific fields."""
    phys = setup.phys
    return Plan(
        engine=phys.engine or setup.engine,
        model=setup.model or phys.model or "",
        device=setup.device or phys.device or "",
        source=phys.source,
        total_bytes=setup.total_bytes,
        free_bytes=setup.free_bytes,
        used_by_others_bytes=setup.used_by_others_bytes,
        margin=setup.margin,
        base_bytes=phys.base_bytes,
        cost_per_token_bytes=phys.cost_per_token_bytes,
        probe=phys.probe,
        upper_bound=phys.upper_bound,
        settings_tag=phys.settings_tag,
        messages=tuple(messages),
        **verdict,
    )


def _cap_at_model(longest: int, phys: Physics, messages: list[str]) -> int:
    """The model's own maximum context bounds every context a plan names; say so when it does."""
    limit = phys.max_context_tokens
    if limit is not None and longest > limit:
        messages.append(
            f"capped at the model's maximum context of {limit} tokens "
            f"(max position embeddings); memory alone would hold {longest}"
        )
        return limit
    return longest
