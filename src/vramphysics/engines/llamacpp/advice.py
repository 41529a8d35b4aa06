"""How a plan is served with llama.cpp."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vramphysics.engines.registry import Advice, AdviceRequest

if TYPE_CHECKING:
    from vramphysics.allocate import Plan


def advice(plan: Plan, request: AdviceRequest) -> Advice:
    """`llama-server -c N` (llama-cpp-python's server: `--n_ctx N`) for a plan that fits."""
    if not plan.fits or plan.ctx is None:
        return Advice()
    text = f"-c {plan.ctx} (llama-cpp-python's server: --n_ctx {plan.ctx})"
    return Advice(lines=(("llama-server", text),))
