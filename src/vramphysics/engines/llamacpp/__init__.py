"""llama.cpp: `llama-server` when it is on PATH, else `python -m llama_cpp.server`.

- `engine`: `LlamaCppEngine`, one fresh server process per context.
- `command`: the GGUF file a model ID names and the server's command line.
- `log`: llama.cpp's own memory lines (also read by the Ollama engine, which embeds llama.cpp).

The engine and its helpers are imported on first use, so that `import vramphysics.engines.llamacpp.log`
(the Ollama engine does) loads neither the engine nor its HTTP client code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vramphysics.engines.llamacpp.advice import advice
from vramphysics.engines.llamacpp.config import LlamaCppConfig
from vramphysics.engines.registry import EngineInfo, lazy_exports

if TYPE_CHECKING:
    from vramphysics.engines.llamacpp.command import resolve_model_path
    from vramphysics.engines.llamacpp.engine import LlamaCppEngine

__all__ = ["ENGINE", "LlamaCppEngine", "resolve_model_path"]

ENGINE = EngineInfo(
    name="llamacpp",
    label="llama.cpp",
    prefixes=("llamacpp:",),
    config_model=LlamaCppConfig,
    engine_module="vramphysics.engines.llamacpp.engine",
    engine_class_name="LlamaCppEngine",
    memory_kind="on_demand",
    probes=("nvml", "process"),
    advice=advice,
)

_HOMES = {
    "LlamaCppEngine": "vramphysics.engines.llamacpp.engine",
    "resolve_model_path": "vramphysics.engines.llamacpp.command",
}


__getattr__ = lazy_exports(__name__, _HOMES)
