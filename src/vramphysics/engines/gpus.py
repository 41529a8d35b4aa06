"""Which GPUs a start may use: the `gpus` key every engine config has, as environment variables
and as the NVML indices the probe and the planner must look at."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

GpuSelection = Literal["all", "none"] | list[int]


def pinned_indices(gpus: GpuSelection) -> tuple[int, ...] | None:
    """NVML indices a start is pinned to: None when not pinned (every GPU the environment
    shows), () for none (a start without a GPU)."""
    if gpus == "all":
        return None
    return () if gpus == "none" else tuple(gpus)


def gpu_env(gpus: Literal["all", "none"] | list[int], *, docker: bool) -> dict[str, str]:
    """The variables that pin a start to `gpus` (NVML / nvidia-smi indices).

    `all`: none (the GPUs the user's environment shows). A list: natively CUDA_VISIBLE_DEVICES,
    with CUDA_DEVICE_ORDER=PCI_BUS_ID so that CUDA numbers the GPUs as NVML does (its default
    order is fastest first); in a container NVIDIA_VISIBLE_DEVICES, which the NVIDIA runtime
    reads even without device requests (CUDA images set it to `all`), and no
    CUDA_VISIBLE_DEVICES, as the container renumbers its GPUs from 0. `none`: no GPU.
    """
    if gpus == "all":
        return {}
    if docker:
        return {"NVIDIA_VISIBLE_DEVICES": "void" if gpus == "none" else _joined(gpus)}
    if gpus == "none":
        return {"CUDA_VISIBLE_DEVICES": ""}
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": _joined(gpus)}


def _joined(indices: Sequence[int]) -> str:
    return ",".join(str(i) for i in indices)
