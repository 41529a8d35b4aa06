"""vLLM: the engine (`engine.py`), how its server is launched (`launcher.py`: native or Docker),
its arguments (`args.py`), its memory budget (`budget.py`), its log and /metrics readers
(`log.py`, `metrics.py`, `failure.py`) and how a plan is served (`advice.py`).

Importing this package reads only its registry declaration; the names below are imported on
first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vramphysics.engines.registry import EngineInfo, lazy_exports
from vramphysics.engines.vllm.advice import advice
from vramphysics.engines.vllm.config import VllmConfig
from vramphysics.engines.vllm.log import inspect_log

if TYPE_CHECKING:
    from vramphysics.engines.vllm.args import (
        API_SERVER_MODULE,
        DEFAULT_COMMAND,
        MANAGED_LABEL,
        MODEL_LABEL,
        RUN_LABEL,
        container_name,
        installed_flag_support,
        kv_cache_dtype,
        resolve_native_command,
        sanitize_container_name,
        server_args,
    )
    from vramphysics.engines.vllm.containers import managed_containers, remove_managed_containers
    from vramphysics.engines.vllm.engine import VllmEngine

ENGINE = EngineInfo(
    name="vllm",
    label="vLLM",
    prefixes=("vllm:", "vl_"),
    config_model=VllmConfig,
    engine_module="vramphysics.engines.vllm.engine",
    engine_class_name="VllmEngine",
    memory_kind="preallocated",  # it reserves --gpu-memory-utilization x total at start
    probes=("vllm-metrics", "vllm-log", "nvml", "process"),
    advice=advice,
    inspect_log=inspect_log,
    uses_physics_db=True,  # a start's utilization comes from the calibrated physics
)

_ARGS = "vramphysics.engines.vllm.args"
_HOMES = {
    **{
        name: _ARGS
        for name in (
            "API_SERVER_MODULE",
            "DEFAULT_COMMAND",
            "MANAGED_LABEL",
            "MODEL_LABEL",
            "RUN_LABEL",
            "container_name",
            "installed_flag_support",
            "kv_cache_dtype",
            "resolve_native_command",
            "sanitize_container_name",
            "server_args",
        )
    },
    "managed_containers": "vramphysics.engines.vllm.containers",
    "remove_managed_containers": "vramphysics.engines.vllm.containers",
    "VllmEngine": "vramphysics.engines.vllm.engine",
}

__all__ = [
    "ENGINE",
    "API_SERVER_MODULE",
    "DEFAULT_COMMAND",
    "MANAGED_LABEL",
    "MODEL_LABEL",
    "RUN_LABEL",
    "VllmEngine",
    "container_name",
    "installed_flag_support",
    "kv_cache_dtype",
    "managed_containers",
    "remove_managed_containers",
    "resolve_native_command",
    "sanitize_container_name",
    "server_args",
]

__getattr__ = lazy_exports(__name__, _HOMES)
