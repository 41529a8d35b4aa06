"""The memory budget of each vLLM start, and what vLLM says it got.

Calibration in two starts (`calibration_contexts`): vLLM reserves its KV pool up front and says
how large it is (`/metrics`: `kv_cache_memory_bytes`, `kv_cache_size_tokens`), so the cost per
token is the engine's own exact figure, and each start gets a different KV budget so that
`base = measured memory - KV pool` is checked by a second, different allocation:
- CPU build: `VLLM_CPU_KVCACHE_SPACE` (whole GiB) from `cfg.cpu_kvcache_space_gib[i]`;
- GPU: `--gpu-memory-utilization` from the smart allocation `(base + ctx x cost) / total +
  margin`, with the physics database's entry when there is one; else the first start uses
  `cfg.default_gpu_memory_utilization` and the second the physics its first start learned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vramphysics.engines.base import MemoryComponents
from vramphysics.engines.gpus import pinned_indices
from vramphysics.engines.vllm.config import VllmConfig
from vramphysics.engines.vllm.log import VllmLogFacts, VllmMetricsFacts, encoder_components
from vramphysics.probes import nvml_status
from vramphysics.setups import ModelSpec

if TYPE_CHECKING:
    from vramphysics.allocate import DeviceMemory

engine_name = "vllm"


class KvBudget:
    """The KV budget of each start of one engine, and the physics its GPU starts taught it."""

    def __init__(
        self,
        cfg: VllmConfig,
        physics_path: Path | None,
        settings: Callable[[], dict[str, Any]],
    ) -> None:
        self.cfg = cfg
        self.physics_path = physics_path
        self._settings = settings
        self.calibration: list[int] = []
        self._gpu_checked = False
        self._gpu_info: DeviceMemory | None = None
        self._learned: dict[str, tuple[float, float]] = {}  # model key -> (base, cost) on this GPU

    def calibration_contexts(self, sweep: Sequence[int]) -> list[int]:
        """The smallest and the largest context of the sweep (see `VllmEngine`)."""
        ctxs = sorted(set(sweep))
        self.calibration = ctxs if len(ctxs) <= 2 else [ctxs[0], ctxs[-1]]
        return list(self.calibration)

    def gpu(self) -> DeviceMemory | None:
        """The GPU(s) vLLM's utilization refers to: those the start is pinned to, named and
        summed as the NVML probe does (alike GPUs: the same fraction of each). None without
        NVML."""
        if not self._gpu_checked:
            self._gpu_checked = True
            if self.cfg.gpus != "none":
                from vramphysics.allocate import device_memory

                self._gpu_info = device_memory(nvml_status().gpus, pinned_indices(self.cfg.gpus))
        return self._gpu_info

    def kv_space_gib(self, ctx: int) -> int:
        """VLLM_CPU_KVCACHE_SPACE of the start at `ctx`: its calibration rank, else the last."""
        spaces = self.cfg.cpu_kvcache_space_gib
        rank = self.calibration.index(ctx) if ctx in self.calibration else len(spaces) - 1
        return spaces[min(rank, len(spaces) - 1)]

    def gpu_memory_utilization(self, spec: ModelSpec, ctx: int) -> tuple[float, str]:
        """`--gpu-memory-utilization` for a start at `ctx`, and where it came from."""
        gpu = self.gpu()
        default = self.cfg.default_gpu_memory_utilization
        if gpu is None:
            return default, "default (no GPU: the KV pool is VLLM_CPU_KVCACHE_SPACE)"
        physics = self._physics_for(spec, gpu)
        if physics is None:
            return default, "default (model not calibrated on this GPU)"
        (base, cost), source = physics
        from vramphysics.allocate import vllm_utilization

        util = vllm_utilization(
            base + ctx * cost, gpu.total_bytes, margin=self.cfg.utilization_margin
        )
        return util, source

    def _physics_for(
        self, spec: ModelSpec, gpu: DeviceMemory
    ) -> tuple[tuple[float, float], str] | None:
        key = spec.key
        if self.physics_path is not None and self.physics_path.is_file():
            from vramphysics import physics_db
            from vramphysics.allocate import select_physics

            entry = select_physics(
                physics_db.load(self.physics_path),
                engine_name,
                key,
                gpu.name,
                settings=physics_db.settings_tag(self._settings()),
            )
            if entry is not None:
                return (
                    entry.base_bytes,
                    entry.cost_per_token_bytes,
                ), f"physics database ({entry.probe})"
        if key in self._learned:
            return self._learned[key], "smart allocation from this run's first start"
        return None

    def learn(
        self, spec: ModelSpec | None, utilization: float | None, mem: MemoryComponents
    ) -> None:
        """After a GPU start: base = utilization x total - KV pool, cost = KV pool / tokens."""
        gpu = self.gpu()
        cost = mem.kv_bytes_per_token
        if gpu is None or spec is None or utilization is None or cost is None:
            return
        if mem.kv_pool_bytes is None:
            return
        base = utilization * gpu.total_bytes - mem.kv_pool_bytes
        self._learned.setdefault(spec.key, (base, cost))

    def components(
        self,
        metrics: VllmMetricsFacts | None,
        facts: VllmLogFacts,
        *,
        kv_space_gib: int | None,
        utilization: float | None,
        utilization_source: str,
    ) -> MemoryComponents | None:
        """`vllm-metrics` when /metrics states the pool in bytes (the CPU build, or an explicit
        --kv-cache-memory-bytes); else `vllm-log`: the log's pool (GiB, 2 decimals) over the
        token count of /metrics or of the log."""
        m = metrics or VllmMetricsFacts()
        tokens: int | None
        if m.kv_cache_memory_bytes and m.kv_cache_size_tokens:
            source, pool, tokens = "vllm-metrics", m.kv_cache_memory_bytes, m.kv_cache_size_tokens
        elif facts.available_kv_bytes and (m.kv_cache_size_tokens or facts.kv_cache_tokens):
            source, pool = "vllm-log", facts.available_kv_bytes
            tokens = m.kv_cache_size_tokens or facts.kv_cache_tokens
        else:
            return None
        device = facts.device or ("gpu" if self.gpu() is not None else "cpu")
        return MemoryComponents(
            source=source,
            weights_bytes=facts.weights_bytes,
            kv_pool_bytes=pool,
            kv_tokens=tokens,
            cuda_graph_bytes=facts.cuda_graph_bytes,
            calibration="engine-kv",
            device_resident=device != "cpu",
            extra={
                "vllm_device": device,
                "kv_cache_space_gib": kv_space_gib if device == "cpu" else None,
                "gpu_memory_utilization": utilization,
                "utilization_source": utilization_source,
                "num_gpu_blocks": m.num_gpu_blocks or facts.num_gpu_blocks,
                "block_size": m.block_size or facts.block_size,
                "cache_dtype": m.cache_dtype,
                "max_model_len": facts.max_model_len,
                "log_kv_bytes": facts.available_kv_bytes,
                "launch": self.cfg.mode,
                **encoder_components(facts),
            },
        )
