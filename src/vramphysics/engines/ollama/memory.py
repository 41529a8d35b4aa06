"""What a loaded model takes, from `/api/ps` (Ollama's own figure: `size`, of which `size_vram`
in VRAM) and, when the server is ours, llama.cpp's breakdown from its log."""

from __future__ import annotations

from typing import Any

from vramphysics.engines.base import MemoryComponents
from vramphysics.engines.ollama.api import int_or_none


def memory_from_ps(
    entry: dict[str, Any],
    parts: MemoryComponents | None,
    *,
    ours: bool,
    n_parallel: int,
) -> MemoryComponents:
    """The `/api/ps` entry of our model, with the log's breakdown (`parts`) when there is one."""
    size = int_or_none(entry.get("size")) or 0
    size_vram = int_or_none(entry.get("size_vram")) or 0
    extra: dict[str, Any] = {
        "size_vram": size_vram,
        "spilled_to_cpu": size_vram < size,
        "context_length": entry.get("context_length"),
        "num_parallel": n_parallel,
        "expires_at": entry.get("expires_at"),
    }
    if parts is None:
        extra["breakdown"] = (
            "none: the server's log is not ours" if not ours else "none found in the server log"
        )
        return MemoryComponents(
            source="ollama-ps",
            total_bytes=size,
            device_resident=size_vram > 0,
            extra=extra,
        )
    extra.update(parts.extra)
    return MemoryComponents(
        source="ollama-ps",
        weights_bytes=parts.weights_bytes,
        kv_pool_bytes=parts.kv_pool_bytes,
        kv_tokens=parts.kv_tokens,
        compute_bytes=parts.compute_bytes,
        total_bytes=size,
        device_resident=size_vram > 0,
        extra=extra,
    )
