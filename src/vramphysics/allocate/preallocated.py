"""The plan for an engine that reserves `utilization x total` up front (vLLM)."""

from __future__ import annotations

import math

from vramphysics.allocate.formula import _gib, max_context, required_bytes, vllm_utilization
from vramphysics.allocate.physics import _as_physics
from vramphysics.allocate.records import MAX_UTIL, MIN_UTIL, VLLM_BLOCK_TOKENS, Physics, Plan
from vramphysics.allocate.verdict import _cap_at_model, _check_device, _check_physics, _plan, _Setup
from vramphysics.errors import ConfigError
from vramphysics.physics_db import PhysicsEntry
from vramphysics.theory import Theory


def _preallocated_verdict(
    base: float, cost: float, ctx: int, total: int, free: int, margin: float, max_util: float
) -> tuple[float, float, str | None]:
    """(raw utilization, rounded utilization, why refused or None) of the forward rule."""
    req = required_bytes(base, cost, ctx)
    raw = req / total + margin
    util = vllm_utilization(req, total, margin, max_util=max_util)
    if raw > max_util:
        return (
            raw,
            util,
            (
                f"refused: ctx {ctx} needs {_gib(req)} + margin = {raw:.3f} of the device, above "
                f"the {max_util} cap"
            ),
        )
    if util * total > free:
        return (
            raw,
            util,
            (
                f"refused: vLLM would reserve {util:.3f} x {_gib(total)} = {_gib(util * total)}, "
                f"but only {_gib(free)} is free ({_gib(total - free)} used by other processes)"
            ),
        )
    return raw, util, None


def longest_preallocated(
    base: float, cost: float, total: int, free: int, margin: float, max_util: float = MAX_UTIL
) -> int:
    """The longest context the forward rule accepts, with its utilization ROUNDED as printed.

    The rounded utilization must stay within `max_util` and within the free memory, so the
    budget is the largest 3-decimal utilization both allow, less the margin.
    """
    cap = min(max_util, free / total)
    util_cap = math.floor(round(cap * 1000, 6)) / 1000
    if util_cap < MIN_UTIL:
        return 0
    ctx = max_context((util_cap - margin) * total, base, cost)
    while ctx > 0 and _preallocated_verdict(base, cost, ctx, total, free, margin, max_util)[2]:
        ctx -= 1  # float noise at the boundary: step down to a context the check accepts
    return ctx


def plan_preallocated(
    source: PhysicsEntry | Theory | Physics,
    *,
    total_bytes: int,
    ctx: int | None = None,
    budget_bytes: float | None = None,
    used_by_others_bytes: int = 0,
    margin: float = 0.05,
    engine: str = "",
    model: str | None = None,
    device: str | None = None,
    max_util: float = MAX_UTIL,
) -> Plan:
    """Forward (ctx -> utilization) or inverse (budget -> longest context) plan for an engine
    that reserves `utilization x total` up front (vLLM).

    Forward: `utilization = required/total + margin`, rounded up; refused when it passes
    `max_util` or when `utilization x total` exceeds the free memory (`total - used_by_others`).
    Inverse: the longest context the budget holds, `floor((budget - base) / cost)`, no longer
    than what the forward rule accepts on this device nor the model's own maximum, so the
    context it names always passes the forward check with the utilization it prints.
    """
    if (ctx is None) == (budget_bytes is None):
        raise ValueError("give exactly one of ctx and budget_bytes")
    if ctx is not None and ctx <= 0:
        raise ConfigError(f"the context must be > 0 tokens, got {ctx}")
    _check_device(total_bytes, used_by_others_bytes, margin)
    phys = _as_physics(source)
    _check_physics(phys)
    setup = _Setup(phys, engine, model, device, total_bytes, used_by_others_bytes, margin)
    messages = list(phys.messages)
    longest = longest_preallocated(
        phys.base_bytes, phys.cost_per_token_bytes, total_bytes, setup.free_bytes, margin, max_util
    )
    longest = _cap_at_model(longest, phys, messages)
    if budget_bytes is not None:
        ctx = longest = _inverse_context(setup, budget_bytes, longest, messages)
        if ctx == 0:
            return _plan(
                setup,
                messages,
                ctx=None,
                required_bytes=None,
                gpu_memory_utilization=None,
                kv_cache_memory_bytes=None,
                max_context=0,
                fits=False,
            )
    assert ctx is not None
    return _forward_plan(setup, ctx, longest, max_util, messages, budget_bytes is not None)


def _inverse_context(setup: _Setup, budget_bytes: float, longest: int, messages: list[str]) -> int:
    """The longest context `budget_bytes` holds, no longer than `longest` (what the forward
    rule accepts and the model allows); 0, with a message saying so, when none."""
    phys, free = setup.phys, setup.free_bytes
    inverse_ctx = max_context(budget_bytes, phys.base_bytes, phys.cost_per_token_bytes)
    if phys.max_context_tokens is not None:
        inverse_ctx = min(inverse_ctx, phys.max_context_tokens)
    if inverse_ctx > longest:
        messages.append(
            f"the budget {_gib(budget_bytes)} would hold {inverse_ctx} tokens, but with the "
            f"margin only {longest} fit in the {_gib(free)} free "
            f"({_gib(setup.used_by_others_bytes)} used by other processes)"
        )
        inverse_ctx = longest
    if inverse_ctx == 0:
        messages.append(
            f"refused: the budget {_gib(budget_bytes)} and the {_gib(free)} free do not "
            f"hold the base {_gib(phys.base_bytes)} and a context"
        )
        return 0
    messages.append(f"the budget {_gib(budget_bytes)} holds up to {inverse_ctx} tokens")
    return inverse_ctx


def _forward_plan(
    setup: _Setup,
    ctx: int,
    longest: int,
    max_util: float,
    messages: list[str],
    from_budget: bool,
) -> Plan:
    """The forward rule's verdict for `ctx`: its utilization, KV-cache bytes and refusals."""
    phys = setup.phys
    base, cost = phys.base_bytes, phys.cost_per_token_bytes
    req = required_bytes(base, cost, ctx)
    _raw, util, refused = _preallocated_verdict(
        base, cost, ctx, setup.total_bytes, setup.free_bytes, setup.margin, max_util
    )
    if refused:
        messages.append(refused)
    if phys.max_context_tokens is not None and ctx > phys.max_context_tokens:
        messages.append(
            f"ctx {ctx} is beyond the model's maximum context of {phys.max_context_tokens} "
            "tokens (vLLM refuses a --max-model-len above it)"
        )
        refused = refused or "beyond the model's maximum"
    if not refused and not from_budget:
        messages.append(f"up to {longest} tokens would fit in the memory free now")
    kv_ctx = math.ceil(ctx / VLLM_BLOCK_TOKENS) * VLLM_BLOCK_TOKENS
    return _plan(
        setup,
        messages,
        ctx=ctx,
        required_bytes=req,
        gpu_memory_utilization=util,
        kv_cache_memory_bytes=math.ceil(kv_ctx * cost),
        max_context=longest,
        fits=refused is None,
    )
