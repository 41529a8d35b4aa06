"""The formula: required = base + ctx x cost, the utilization and context it gives, bytes."""

from __future__ import annotations

import math

from vramphysics.allocate.records import GIB, MAX_UTIL, MIN_UTIL


def required_bytes(base_bytes: float, cost_per_token_bytes: float, ctx: int) -> float:
    """base + ctx x cost."""
    if ctx < 0:
        raise ValueError(f"ctx must be >= 0, got {ctx}")
    return base_bytes + ctx * cost_per_token_bytes


def _ceil3(x: float) -> float:
    """Round up to 3 decimals, ignoring float noise (0.15 + 0.05 stays 0.2)."""
    return math.ceil(round(x * 1000, 6)) / 1000


def vllm_utilization(
    required_bytes: float,
    total_bytes: float,
    margin: float = 0.05,
    min_util: float = MIN_UTIL,
    max_util: float = MAX_UTIL,
) -> float:
    """required / total + margin, rounded UP to 3 decimals and clamped to [min, max].

    Rounded up because a user pastes it into `--gpu-memory-utilization`, and it must not
    under-allocate. A value clamped at `max_util` does not hold `required`: check the raw
    figure (`plan_preallocated` refuses such a plan).
    """
    if total_bytes <= 0:
        raise ValueError(f"total_bytes must be > 0, got {total_bytes}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    return min(max(_ceil3(required_bytes / total_bytes + margin), min_util), max_util)


def max_context(budget_bytes: float, base_bytes: float, cost_per_token_bytes: float) -> int:
    """floor((budget - base) / cost): the longest context a budget holds; 0 when none."""
    if cost_per_token_bytes <= 0:
        raise ValueError(f"cost_per_token_bytes must be > 0, got {cost_per_token_bytes}")
    return max(0, math.floor((budget_bytes - base_bytes) / cost_per_token_bytes))


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def format_bytes(n: float) -> str:
    """Bytes for people: GiB, MiB or KiB with two decimals."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"
