"""The device memory a start can use: the GPUs it is pinned to and the figures that bind."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vramphysics.probes import GpuInfo


@dataclass(frozen=True)
class DeviceMemory:
    """The memory a start can use: the GPUs it is pinned to, the name physics is keyed by,
    and the total and free bytes that bind (the smallest GPU's)."""

    name: str
    total_bytes: int
    free_bytes: int
    gpu_indices: tuple[int, ...] = ()


def device_memory(
    visible: Sequence[GpuInfo],
    pinned: tuple[int, ...] | None,
    assume_free_bytes: int | None = None,
) -> DeviceMemory | None:
    """The device figures of a start pinned to `pinned` (None: every visible GPU; (): none).

    vLLM applies its utilization to each GPU's own total, so with several GPUs the smallest
    total (and the smallest free figure) binds; its name keys the physics. `assume_free_bytes`
    replaces the free figure (and stands in for the total without a GPU). None when nothing
    is known: no GPU figures and no assumption, or a pinned GPU that is not visible.
    """
    chosen = [g for g in visible if pinned is None or g.index in pinned]
    if pinned is not None and len(chosen) != len(set(pinned)):
        chosen = []  # a pinned GPU NVML does not show: its figures are unknown
    if not chosen:
        if assume_free_bytes is None:
            return None
        return DeviceMemory("cpu", assume_free_bytes, assume_free_bytes)
    binding = min(chosen, key=lambda g: (g.total_bytes, g.index))
    free = min(g.free_bytes for g in chosen)
    return DeviceMemory(
        name=binding.name,
        total_bytes=binding.total_bytes,
        free_bytes=free if assume_free_bytes is None else assume_free_bytes,
        gpu_indices=tuple(g.index for g in chosen),
    )
