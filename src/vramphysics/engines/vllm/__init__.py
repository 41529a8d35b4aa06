"""vLLM: the engine (`engine.py`), how its server is launched (`launcher.py`: native or Docker),
its arguments (`args.py`), its memory budget (`budget.py`) and its log and /metrics readers
(`log.py`, `metrics.py`, `failure.py`)."""

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

__all__ = [
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
