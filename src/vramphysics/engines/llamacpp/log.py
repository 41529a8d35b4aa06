"""llama.cpp's own memory lines (its stderr, or an Ollama server log that embeds it).

Examples::

    load_tensors:   CPU_Mapped model buffer size =     9.52 MiB
    load_tensors:        CUDA0 model buffer size =  4403.49 MiB
    llama_kv_cache:        CPU KV buffer size =     8.00 MiB
    llama_kv_cache_unified:      CUDA0 KV buffer size =   448.00 MiB
    llama_kv_cache: size =    8.00 MiB (  2048 cells,   8 layers,  1/1 seqs), K (f16): 4.00 MiB, V (f16): 4.00 MiB
    sched_reserve:        CPU compute buffer size =    23.01 MiB
    llama_new_context_with_model:  CUDA_Host  compute buffer size =    12.01 MiB

Sliding-window models (Gemma 2/3, gpt-oss, ...) get two KV caches, each with its buffer and size
lines, announced by::

    llama_kv_cache_iswa: creating non-SWA KV cache, size = 8192 cells
    llama_kv_cache_iswa: creating     SWA KV cache, size = 1536 cells

The caches of one context add up; only the full-attention (non-SWA) one holds the whole context.
For each (component, device) the last value in the log wins (a server that reloads prints them
again): a KV line after any other buffer line, or a non-SWA announcement, starts a new set of KV
caches. Buffers on `CPU`, `CPU_Mapped` or `*_Host` devices live in host memory, not in VRAM.
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
# (older builds print "1 seqs")
_KV_SIZE = re.compile(
    r"kv_cache\w*:\s+size\s*=\s*(?P<mib>[0-9.]+)\s*MiB\s*\(\s*(?P<cells>[0-9]+)\s+cells,\s*"
    r"(?P<layers>[0-9]+)\s+layers,\s*(?P<seqs>[0-9]+)(?:/(?P<max_seqs>[0-9]+))?\s+seqs\),\s*"
    r"K\s*\((?P<ktype>\w+)\):\s*[0-9.]+\s*MiB,\s*V\s*\((?P<vtype>\w+)\)"
)
# "llama_kv_cache_iswa: creating non-SWA KV cache, size = 8192 cells" (and "creating     SWA ...")
_ISWA = re.compile(r"creating\s+(?P<kind>non-SWA|SWA)\s+KV cache,\s*size\s*=\s*[0-9]+\s*cells")
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
    swa: bool = False  # the sliding-window cache of a model with two (it holds a window, not n_ctx)

    @property
    def bytes_per_cell(self) -> float:
        return self.size_bytes / self.cells


@dataclass(frozen=True)
class LlamaBuffers:
    """Buffer sizes by (component, device) in bytes; component is weights/kv/compute/output.

    The `kv` buffers of one device add up over the KV caches of the last context (two for a
    sliding-window model); `kv_caches` lists those caches, full-attention first as printed.
    """

    buffers: dict[tuple[str, str], int] = field(default_factory=dict)
    kv_caches: tuple[KvCacheLine, ...] = ()

    @property
    def kv_cache(self) -> KvCacheLine | None:
        """The full-attention cache: the one whose cells are the context (None without one)."""
        return next((kv for kv in self.kv_caches if not kv.swa), None)

    @property
    def kv_bytes(self) -> int:
        """Every KV cache of the context, in bytes (the size lines; buffers where none)."""
        if self.kv_caches:
            return sum(kv.size_bytes for kv in self.kv_caches)
        return self.total("kv")

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


class _Reader:
    """Line by line state of `parse_buffers`: the buffers, and the KV caches being announced."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[str, str], int] = {}
        self.caches: list[KvCacheLine] = []
        self.in_kv = False  # the last matched line was a KV line: more caches of one context
        self.next_is_swa = False

    def _kv_line(self, *, new_set: bool = False) -> None:
        if new_set or not self.in_kv:
            self.caches = []
            self.buffers = {k: v for k, v in self.buffers.items() if k[0] != "kv"}
        self.in_kv = True

    def feed(self, line: str) -> None:
        if m := _BUFFER.search(line):
            key = (_COMPONENTS[m["component"]], m["device"])
            size = round(float(m["mib"]) * _MIB)
            if key[0] == "kv":
                self._kv_line()
                self.buffers[key] = self.buffers.get(key, 0) + size
            else:
                self.in_kv = False
                self.buffers[key] = size
        elif h := _ISWA.search(line):
            self._kv_line(new_set=h["kind"] == "non-SWA")
            self.next_is_swa = h["kind"] == "SWA"
        elif k := _KV_SIZE.search(line):
            self._kv_line()
            self.caches.append(
                KvCacheLine(
                    size_bytes=round(float(k["mib"]) * _MIB),
                    cells=int(k["cells"]),
                    layers=int(k["layers"]),
                    k_type=k["ktype"],
                    v_type=k["vtype"],
                    swa=self.next_is_swa,
                )
            )
            self.next_is_swa = False


def parse_buffers(text: str) -> LlamaBuffers:
    reader = _Reader()
    for line in text.splitlines():
        reader.feed(line)
    return LlamaBuffers(buffers=reader.buffers, kv_caches=tuple(reader.caches))


def _kv_on_device(buffers: LlamaBuffers) -> bool:
    """Whether the engine's memory lives in VRAM: its KV cache (else its weights) on a GPU."""
    if any(comp == "kv" for comp, _dev in buffers.buffers):
        return buffers.total("kv", vram=True) > 0
    return buffers.total("weights", vram=True) > 0


def components_from_log(text: str, source: str) -> MemoryComponents | None:
    """The weights / KV / compute buffers of llama.cpp's lines in a log (its own, or Ollama's).

    On a GPU (the KV cache, or without KV lines the weights, in VRAM) only VRAM buffers count
    (CPU and *_Host buffers are system memory, listed in `extra["host_buffers_bytes"]`);
    `kv_tokens` is given only when the whole cache is in VRAM, so that `kv_pool_bytes /
    kv_tokens` stays a true cost per token. Otherwise (a CPU build, or a CUDA build with no layer
    offloaded) every buffer counts and `device_resident` is False. `kv_pool_bytes` adds up every
    KV cache (two for a sliding-window model) and `kv_tokens` is the full-attention cache's cells;
    `extra["kv_cells"]` is those cells wherever the cache lives (the check of n_ctx).
    """
    buffers = parse_buffers(text)
    if not buffers.buffers:
        return None
    kv = buffers.kv_cache
    extra: dict[str, Any] = {
        "kv_type": kv.k_type if kv else None,
        "kv_cells": kv.cells if kv else None,
        "devices": list(buffers.devices),
    }
    if len(buffers.kv_caches) > 1:
        extra["kv_caches"] = [
            {"cells": c.cells, "layers": c.layers, "bytes": c.size_bytes, "swa": c.swa}
            for c in buffers.kv_caches
        ]
    if _kv_on_device(buffers):
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
    vram = buffers.by_component(vram=True)
    if any(vram.values()):
        extra["vram_buffers_bytes"] = {k: v for k, v in vram.items() if v}
    return MemoryComponents(
        source=source,
        weights_bytes=buffers.total("weights"),
        kv_pool_bytes=buffers.kv_bytes,
        kv_tokens=kv.cells if kv else None,
        compute_bytes=buffers.total("compute"),
        device_resident=False,
        extra=extra,
    )
