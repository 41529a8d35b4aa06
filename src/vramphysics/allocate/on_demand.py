"""The plan for engines that allocate what they need (Ollama, llama.cpp)."""

from __future__ import annotations

from vramphysics.allocate.formula import _gib, max_context, required_bytes
from vramphysics.allocate.physics import _as_physics
from vramphysics.allocate.records import Physics, Plan
from vramphysics.allocate.verdict import _cap_at_model, _check_device, _check_physics, _plan, _Setup
from vramphysics.errors import ConfigError
from vramphysics.physics_db import PhysicsEntry
from vramphysics.theory import Theory


def plan_on_demand(
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
) -> Plan:
    """Verdict for engines that allocate what they need (Ollama, llama.cpp).

    `fits` = required + margin x total <= free; `max_context` = the longest context that fits
    in the free memory (or in `budget_bytes`, when smaller), no longer than the model's own
    maximum. Without `ctx`, fits says whether any context fits.
    """
    _check_device(total_bytes, used_by_others_bytes, margin)
    if ctx is not None and ctx <= 0:
        raise ConfigError(f"the context must be > 0 tokens, got {ctx}")
    phys = _as_physics(source)
    _check_physics(phys)
    setup = _Setup(phys, engine, model, device, total_bytes, used_by_others_bytes, margin)
    free = setup.free_bytes
    room = free if budget_bytes is None else min(free, budget_bytes)
    messages = list(phys.messages)
    longest = _longest_on_demand(setup, room, messages)
    req: float | None
    if ctx is None:
        ctx = longest or None
        fits = longest > 0
        req = (
            required_bytes(phys.base_bytes, phys.cost_per_token_bytes, ctx)
            if ctx is not None
            else None
        )
        if not fits:
            messages.append(
                f"refused: the base {_gib(phys.base_bytes)} + margin does not fit in {_gib(room)}"
            )
    else:
        req, fits = _given_context(setup, ctx, room, messages)
    messages.append(f"up to {longest} tokens fit in {_gib(room)}")
    return _plan(
        setup,
        messages,
        ctx=ctx,
        required_bytes=req,
        gpu_memory_utilization=None,
        kv_cache_memory_bytes=None,
        max_context=longest,
        fits=fits,
    )


def _passes(setup: _Setup, room: float, ctx: int) -> bool:
    """The on-demand rule: required + margin x total <= room."""
    phys = setup.phys
    required = required_bytes(phys.base_bytes, phys.cost_per_token_bytes, ctx)
    return required + setup.margin * setup.total_bytes <= room


def _longest_on_demand(setup: _Setup, room: float, messages: list[str]) -> int:
    """The longest context the rule accepts in `room`, capped at the model's maximum."""
    phys = setup.phys
    longest = max_context(
        room - setup.margin * setup.total_bytes, phys.base_bytes, phys.cost_per_token_bytes
    )
    while longest > 0 and not _passes(setup, room, longest):
        longest -= 1  # float noise at the boundary
    return _cap_at_model(longest, phys, messages)


def _given_context(setup: _Setup, ctx: int, room: float, messages: list[str]) -> tuple[float, bool]:
    """(required bytes, fits) for a context asked for, with a message for each refusal."""
    phys = setup.phys
    req = required_bytes(phys.base_bytes, phys.cost_per_token_bytes, ctx)
    fits = _passes(setup, room, ctx)
    if not fits:
        messages.append(
            f"refused: ctx {ctx} needs {_gib(req)} + margin "
            f"{_gib(setup.margin * setup.total_bytes)}, but only {_gib(room)} is available "
            f"({_gib(setup.used_by_others_bytes)} used by other processes)"
        )
    if phys.max_context_tokens is not None and ctx > phys.max_context_tokens:
        messages.append(
            f"ctx {ctx} is beyond the model's maximum context of {phys.max_context_tokens} "
            "tokens: the engine may accept it, but the model was not trained for it"
        )
    return req, fits
