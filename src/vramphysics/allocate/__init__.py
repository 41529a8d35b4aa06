"""Smart allocation: the memory a context needs, the context a budget allows, and the verdict.

Pure functions over plain values; no I/O, except `resolve_device`, which asks NVML for
the figures a plan was not given. Everything rests on one line,

    required_bytes(ctx) = base_bytes + ctx * cost_per_token_bytes,

measured by a calibration (`PhysicsEntry`, source "calibrated") or, when the device was never
calibrated, worked out from model metadata (`Theory`, source "theory": weights + KV cache only).

Two rules, one per kind of engine (`memory_kind`):
- preallocated (vLLM): the engine takes a fraction of the device's TOTAL memory up front
  (`--gpu-memory-utilization`), and memory other processes hold counts against that fraction,
  so a plan is refused when `utilization x total` exceeds what is free (`plan_preallocated`);
- on demand (Ollama, llama.cpp): the engine allocates what it needs, so the verdict is
  `required + margin x total <= free` (`plan_on_demand`).

A calibration is chosen by its memory settings too (`settings`: a tag like `kv=q8_0` or its
hash); a model calibrated with several settings is never planned from one picked silently.

Modules: `records` (Physics, Plan, SheetRow, constants), `formula`, `device` (DeviceMemory,
and the device a plan is made for), `render` (a plan in words), `physics` (calibrated or
theory), `verdict` (what every plan shares), `preallocated`, `on_demand`, `plans` (by memory
kind), and `sheet`.
"""

from vramphysics.allocate.device import (
    DeviceMemory,
    PlanDevice,
    device_memory,
    nvml_memory,
    resolve_device,
)
from vramphysics.allocate.formula import format_bytes, max_context, required_bytes, vllm_utilization
from vramphysics.allocate.on_demand import plan_on_demand
from vramphysics.allocate.physics import (
    calibrated_devices,
    physics_from_entry,
    physics_from_theory,
    resolve_physics,
    select_physics,
    settings_tags,
)
from vramphysics.allocate.plans import plan_for
from vramphysics.allocate.preallocated import longest_preallocated, plan_preallocated
from vramphysics.allocate.records import (
    GIB,
    MAX_UTIL,
    MIN_UTIL,
    SHEET_CONTEXTS,
    SHEET_UTILIZATION,
    VLLM_BLOCK_TOKENS,
    MemoryKind,
    Physics,
    Plan,
    SheetRow,
    memory_kind,
)
from vramphysics.allocate.render import render_plan
from vramphysics.allocate.sheet import plan_sheet_rows
from vramphysics.allocate.verdict import with_messages

__all__ = [
    "calibrated_devices",
    "device_memory",
    "DeviceMemory",
    "format_bytes",
    "GIB",
    "longest_preallocated",
    "max_context",
    "nvml_memory",
    "MAX_UTIL",
    "memory_kind",
    "MemoryKind",
    "MIN_UTIL",
    "Physics",
    "physics_from_entry",
    "physics_from_theory",
    "Plan",
    "plan_for",
    "plan_on_demand",
    "plan_preallocated",
    "plan_sheet_rows",
    "PlanDevice",
    "render_plan",
    "required_bytes",
    "resolve_device",
    "resolve_physics",
    "select_physics",
    "settings_tags",
    "SHEET_CONTEXTS",
    "SHEET_UTILIZATION",
    "SheetRow",
    "VLLM_BLOCK_TOKENS",
    "vllm_utilization",
    "with_messages",
]
