"""How a plan is served with Ollama."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vramphysics.engines.registry import Advice, AdviceRequest

if TYPE_CHECKING:
    from vramphysics.allocate import Plan


def advice(plan: Plan, request: AdviceRequest) -> Advice:
    """The request option `num_ctx` (or the server default) for a plan that fits."""
    if not plan.fits or plan.ctx is None:
        return Advice()
    text = f"request option num_ctx={plan.ctx} (server default: OLLAMA_CONTEXT_LENGTH={plan.ctx})"
    return Advice(lines=(("ollama", text),))
