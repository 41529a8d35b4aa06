"""llama.cpp's own memory lines (its stderr, or an Ollama server log that embeds it).

Examples::

    load_tensors:   CPU_Mapped model buffer size =     9.52 MiB
    load_tensors:        CUDA0 model buffer size =  4403.49 MiB
    llama_kv_cache:        CPU KV buffer size =     8.00 MiB
    llama_kv_cache_unified:      CUDA0 KV buffer size =   448.00 MiB
    llama_kv_cache: size =    8.00 MiB (  2048 cells,   8 layers,  1/1 seqs), K (f16): 4.00 MiB, V (f16): 4.00 MiB
    sched_reserve:        CPU compute buffer size =    23.01 MiB
    llama_new_context_with_model:  CUDA_Host  compute buffer size =    12.01 MiB

For each (component, device) the last value in the log wins (a server that reloads prints them
again). Buffers on `CPU`, `CPU_Mapped` or `*_Host` devices live in host memory, not in VRAM.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from vramphysics.engines.base import MemoryComponents

_MIB = 2**20

# "<prefix>: <DEVICE> <component> buffer size = <N> MiB"
_BUFFER = re.compile(
    r"(?P<device>[A-Za-z0-9_]+)\s+(?P<component>model|KV|compute|output|RS)\s+buffer size\s*=\s*"
    r"(?P<mib>[0-9]+(?:\.[0-9]+)?)\s*MiB"
)
# "llama_kv_cache: size = 8.00 MiB ( 2048 cells, 8 layers, 1/1 seqs), K (f16): 4.00 MiB, V (f16): ..."
_KV_SIZE = re.compile(
    r"kv_cache\w*:\s+size\s*=\s*(?P<mib>[0-9.]+)\s*MiB\s*\(\s*(?P<cells>[0-9]+)\s+cells,\s*"
    r"(?P<layers>[0-9]+)\s+layers,\s*(?P<seqs>[0-9]+)/(?P<max_seqs>[0-9]+)\s+seqs\),\s*"
    r"K\s*\((?P<ktype>\w+)\):\s*[0-9.]+\s*MiB,\s*V\s*\((?P<vtype>\w+)\)"
)
_COMPONENTS = {"model": "weights", "KV": "kv", "compute": "compute", "output": "output", "RS": "rs"}


def is_host_device(device: str) -> bool:
    """CPU and pinned host buffers are system memory, not VRAM."""
    d = device.upper()
    return d.startswith("CPU") or d.endswith("_HOST")


@dataclass(frozen=True)
class KvCacheLine:
    size_bytes: int
    cells: int
    layers: int
    k_type: str
    v_type: str

    @property
    def bytes_per_cell(self) -> float:
        return self.size_bytes / self.cells


@dataclass(frozen=True)
class LlamaBuffers:
    """Buffer sizes by (component, device) in bytes; component is weights/kv/compute/output."""

    buffers: dict[tuple[str, str], int] = field(default_factory=dict)
    kv_cache: KvCacheLine | None = None

    def total(self, component: str, *, vram: bool | None = None) -> int:
        """Sum of one component over devices (only VRAM devices, only host, or all)."""
        return sum(
            size
            for (comp, dev), size in self.buffers.items()
            if comp == component and (vram is None or vram != is_host_device(dev))
        )

    def by_component(self, *, vram: bool | None = None) -> dict[str, int]:
        out: dict[str, int] = {}
        for comp, _dev in self.buffers:
            out[comp] = self.total(comp, vram=vram)
        return out

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(sorted({dev for _c, dev in self.buffers}))


def parse_buffers(text: str) -> LlamaBuffers:
    buffers: dict[tuple[str, str], int] = {}
    kv: KvCacheLine | None = None
    for line in text.splitlines():
        m = _BUFFER.search(line)
        if m:
            key = (_COMPONENTS[m["component"]], m["device"])
            buffers[key] = round(float(m["mib"]) * _MIB)
            continue
        k = _KV_SIZE.search(line)
        if k:
            kv = KvCacheLine(
                size_bytes=round(float(k["mib"]) * _MIB),
                cells=int(k["cells"]),
                layers=int(k["layers"]),
                k_type=k["ktype"],
                v_type=k["vtype"],
            )
    return LlamaBuffers(buffers=buffers, kv_cache=kv)


def components_from_log(text: str, source: str) -> MemoryComponents | None:
    """The weights / KV / compute buffers of llama.cpp's lines in a log (its own, or Ollama's).

    With a GPU in the log only its buffers count (CPU and *_Host buffers are system memory, listed
    in `extra["host_buffers_bytes"]`); `kv_tokens` is given only when the whole cache is in VRAM,
    so that `kv_pool_bytes / kv_tokens` stays a true cost per token. Without a GPU every buffer
    counts and `device_resident` is False.
    """
    buffers = parse_buffers(text)
    if not buffers.buffers:
        return None
    kv = buffers.kv_cache
    on_gpu = any(not is_host_device(dev) for dev in buffers.devices)
    extra: dict[str, Any] = {"kv_type": kv.k_type if kv else None, "devices": list(buffers.devices)}
    if on_gpu:
        host = buffers.by_component(vram=False)
        extra["host_buffers_bytes"] = {k: v for k, v in host.items() if v}
        all_kv_in_vram = buffers.total("kv", vram=False) == 0
        return MemoryComponents(
            source=source,
            weights_bytes=buffers.total("weights", vram=True),
            kv_pool_bytes=buffers.total("kv", vram=True),
            kv_tokens=kv.cells if kv and all_kv_in_vram else None,
            compute_bytes=buffers.total("compute", vram=True),
            device_resident=True,
            extra=extra,
        )
    return MemoryComponents(
        source=source,
        weights_bytes=buffers.total("weights"),
        kv_pool_bytes=kv.size_bytes if kv else buffers.total("kv"),
        kv_tokens=kv.cells if kv else None,
        compute_bytes=buffers.total("compute"),
        device_resident=False,
        extra=extra,
    )
