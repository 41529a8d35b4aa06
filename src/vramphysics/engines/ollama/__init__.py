"""Ollama through its HTTP API: the engine (`engine`), the `ollama serve` we may start
(`server`), the HTTP API helpers (`api`) and our server's log (`log`)."""

from vramphysics.engines.ollama.advice import advice
from vramphysics.engines.ollama.config import OllamaConfig
from vramphysics.engines.ollama.engine import OllamaEngine, engine_timings, normalize_model_name
from vramphysics.engines.registry import EngineInfo

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

__all__ = ["ENGINE", "OllamaEngine", "engine_timings", "normalize_model_name"]
