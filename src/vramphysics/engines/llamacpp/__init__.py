"""llama.cpp: `llama-server` when it is on PATH, else `python -m llama_cpp.server`.

- `engine`: `LlamaCppEngine`, one fresh server process per context.
- `command`: the GGUF file a model ID names and the server's command line.
- `log`: llama.cpp's own memory lines (also read by the Ollama engine, which embeds llama.cpp).

The engine and its helpers are imported on first use, so that `import vramphysics.engines.llamacpp.log`
(the Ollama engine does) loads neither the engine nor its HTTP client code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from vramphysics.engines.llamacpp.advice import advice
from vramphysics.engines.llamacpp.config import LlamaCppConfig
from vramphysics.engines.registry import EngineInfo

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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
