"""The device memory a start can use (the GPUs it is pinned to and the figures that bind), and
the device a plan is made for (the user's figures, else the calibration's, else NVML's)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vramphysics.allocate.formula import format_bytes
from vramphysics.errors import ConfigError
from vramphysics.probes import device_label

if TYPE_CHECKING:
    from vramphysics.probes import GpuInfo


@dataclass(frozen=True)
class DeviceMemory:
    """The memory a start can use: the GPUs it is pinned to, the name physics is keyed by (the
    NVML probe's device label, e.g. `2x NVIDIA H200`), and their total and free bytes, summed."""

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

    The name is the NVML probe's label of the chosen GPUs (`probes.device_label`: the GPU's
    name, `2x NAME` for two alike, else `A + B`) and the total and free bytes are summed over
    them, as the probe sums their used memory: a calibration made on those GPUs is keyed and
    sized alike. The GPUs of one start are taken as alike: vLLM applies its utilization to each
    GPU's own total, and for alike GPUs summed need / summed total is that same fraction.
    `assume_free_bytes` replaces the free figure (and stands in for the total without a GPU).
    None when nothing is known: no GPU figures and no assumption, or a pinned GPU that is not
    visible.
    """
    chosen = [g for g in visible if pinned is None or g.index in pinned]
    if pinned is not None and len(chosen) != len(set(pinned)):
        chosen = []  # a pinned GPU NVML does not show: its figures are unknown
    if not chosen:
        if assume_free_bytes is None:
            return None
        return DeviceMemory("cpu", assume_free_bytes, assume_free_bytes)
    free = sum(g.free_bytes for g in chosen)
    return DeviceMemory(
        name=device_label([g.name for g in chosen]),
        total_bytes=sum(g.total_bytes for g in chosen),
        free_bytes=free if assume_free_bytes is None else assume_free_bytes,
        gpu_indices=tuple(g.index for g in chosen),
    )


@dataclass(frozen=True)
class PlanDevice:
    """The total and used memory a plan is made for, and sentences saying where they came from."""

    total_bytes: int
    used_bytes: int
    messages: tuple[str, ...]


def nvml_memory(device: str) -> tuple[tuple[int, int] | None, str]:
    """(total, used) of the GPU named `device`, and a sentence saying what NVML said."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return None, f"NVML unavailable ({exc})"
    try:
        names = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            raw = pynvml.nvmlDeviceGetName(handle)
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            names.append(name)
            if name == device:
                mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
                total_b, used_b = int(mem.total), int(mem.used)
                return (total_b, used_b), (
                    f"NVML: GPU {i} ({name}) has {format_bytes(used_b)} of "
                    f"{format_bytes(total_b)} in use, counted as used by others"
                )
        return None, f"NVML: no GPU named {device!r} (found: {', '.join(names) or 'none'})"
    except pynvml.NVMLError as exc:
        return None, f"NVML unavailable ({exc})"
    finally:
        pynvml.nvmlShutdown()


def resolve_device(
    device: str,
    *,
    total_bytes: int | None,
    used_bytes: int | None,
    calibrated_total_bytes: int | None,
    total_key: str = "total",
    used_key: str = "used",
) -> PlanDevice:
    """Total and used memory of `device`: the given figures, else the calibration's total
    (`calibrated_total_bytes`), else NVML's; used unknown is taken as 0 and said so.
    `total_key` and `used_key` name the given figures in an error (e.g. the flags)."""
    messages: list[str] = []
    total = total_bytes
    if total is None and calibrated_total_bytes:
        total = int(calibrated_total_bytes)
        messages.append(f"device total {format_bytes(total)} from the calibration")
    used = used_bytes
    if total is None or used is None:
        nvml, said = nvml_memory(device)
        messages.append(said)
        if nvml is not None:
            total = nvml[0] if total is None else total
            used = nvml[1] if used is None else used
    if total is None:
        raise ConfigError("the device's memory is unknown: give it", key=total_key)
    if used is None:
        used = 0
        messages.append("memory used by other processes unknown: taken as 0")
    if used > total:
        raise ConfigError(
            f"{format_bytes(used)} used by others is more than the device's {format_bytes(total)}",
            key=used_key,
        )
    return PlanDevice(total, used, tuple(messages))
