"""Engines: one interface (`base.Engine`), one module per engine. `engine_class` is the only
place that maps an engine name from a model ID to its class."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vramphysics.config import Config
from vramphysics.engines.base import Engine


def engine_class(name: str) -> type[Engine]:
    if name == "llamacpp":
        from vramphysics.engines.llamacpp import LlamaCppEngine

        return LlamaCppEngine
    if name == "vllm":
        from vramphysics.engines.vllm import VllmEngine

        return VllmEngine
    if name == "ollama":
        from vramphysics.engines.ollama import OllamaEngine

        return OllamaEngine
    raise ValueError(f"unknown engine {name!r}")


def create_engine(name: str, config: Config, *, state_dir: Path, log_dir: Path) -> Engine:
    """An engine with its section of the config (`engines.<name>`)."""
    factory: Callable[..., Engine] = engine_class(name)
    return factory(getattr(config.engines, name), state_dir=state_dir, log_dir=log_dir)
