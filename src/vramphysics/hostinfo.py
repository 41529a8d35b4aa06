"""What a run header records about the machine beside its GPUs: the CPU model and the CUDA
version the NVIDIA driver supports."""

from __future__ import annotations

import logging
import platform
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The CPU's model name (Linux: /proc/cpuinfo; elsewhere what `platform` says), or None."""
    try:
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        log.debug("no %s", cpuinfo)
    return platform.processor() or None


def cuda_driver_version(pynvml: Any) -> str | None:
    """The CUDA version the driver supports ("12.4"), from an initialised NVML module."""
    try:
        v = int(pynvml.nvmlSystemGetCudaDriverVersion())
    except (pynvml.NVMLError, AttributeError, TypeError, ValueError):
        return None
    return f"{v // 1000}.{(v % 1000) // 10}"
