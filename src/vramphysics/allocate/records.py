"""The records of a plan (Physics, Plan, SheetRow), the constants, and an engine's memory kind."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from vramphysics.engines import registry
from vramphysics.engines.registry import MemoryKind

GIB = 2**30
MIN_UTIL = 0.05
MAX_UTIL = 0.98
VLLM_BLOCK_TOKENS = 16  # vLLM's default KV block: a sequence occupies whole blocks
SHEET_CONTEXTS: tuple[int, ...] = (4096, 8192, 16384, 32768, 131072)
SHEET_UTILIZATION = 0.9


def memory_kind(engine: str) -> MemoryKind:
    """How an engine takes memory, as it registered: `preallocated` (it reserves utilization x
    total up front) or `on_demand` (it allocates what the context needs)."""
    return registry.get(engine).memory_kind


@dataclass(frozen=True)
class Physics:
    """What a plan is computed from: `bytes = base_bytes + ctx * cost_per_token_bytes`."""

    source: str  # "calibrated" | "theory"
    base_bytes: float
    cost_per_token_bytes: float
    engine: str | None = None
    model: str | None = None
    device: str | None = None
    probe: str | None = None
    upper_bound: bool = False
    messages: tuple[str, ...] = ()
    settings_tag: str | None = None  # the calibration's memory settings
    max_context_tokens: int | None = None  # the model's own limit (max position embeddings)


@dataclass(frozen=True)
class Plan:
    """A verdict for one engine, model and device, with the figures behind it."""

    engine: str
    model: str
    device: str
    source: str  # "calibrated" | "theory"
    ctx: int | None
    required_bytes: float | None
    gpu_memory_utilization: float | None  # vLLM only
    kv_cache_memory_bytes: int | None  # vLLM only: for --kv-cache-memory-bytes
    max_context: int | None
    fits: bool
    total_bytes: int
    free_bytes: int
    used_by_others_bytes: int
    margin: float
    base_bytes: float
    cost_per_token_bytes: float
    probe: str | None = None
    upper_bound: bool = False
    messages: tuple[str, ...] = ()
    settings_tag: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["messages"] = list(self.messages)
        return d


@dataclass(frozen=True)
class SheetRow:
    """One line of the report's plan sheet: utilization per standard context on one device."""

    engine: str
    model: str
    device: str
    probe: str
    total_bytes: int
    base_bytes: float
    cost_per_token_bytes: float
    margin: float
    utilization: tuple[tuple[int, float | None], ...]  # (ctx, util); None: does not fit
    max_context_at_90: int  # largest ctx with --gpu-memory-utilization 0.9
    settings_tag: str = ""  # the calibration's memory settings

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["utilization"] = {str(c): u for c, u in self.utilization}
        return d
