"""Ollama through its HTTP API: the engine (`engine`), the `ollama serve` we may start
(`server`), the HTTP API helpers (`api`) and our server's log (`log`).

Importing this package reads only its registry declaration; the names below are imported on
first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vramphysics.engines.ollama.advice import advice
from vramphysics.engines.ollama.config import OllamaConfig
from vramphysics.engines.registry import EngineInfo, lazy_exports

if TYPE_CHECKING:
    from vramphysics.engines.ollama.engine import (
        OllamaEngine,
        engine_timings,
        normalize_model_name,
    )

ENGINE = EngineInfo(
    name="ollama",
    label="Ollama",
    prefixes=("ol_",),
    config_model=OllamaConfig,
    engine_module="vramphysics.engines.ollama.engine",
    engine_class_name="OllamaEngine",
    memory_kind="on_demand",
    probes=("nvml", "ollama-ps", "process"),
    advice=advice,
    bare_names=True,  # `qwen2.5:7b`, `library/name`: Ollama's own naming
)

_ENGINE_MODULE = "vramphysics.engines.ollama.engine"
_HOMES = {n: _ENGINE_MODULE for n in ("OllamaEngine", "engine_timings", "normalize_model_name")}

__all__ = ["ENGINE", "OllamaEngine", "engine_timings", "normalize_model_name"]

__getattr__ = lazy_exports(__name__, _HOMES)
