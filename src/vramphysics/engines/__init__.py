"""Engines: one interface (`base.Engine`), one module per engine. `engine_class` is the only
place that maps an engine name from a model ID to its class."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from vramphysics import physics_db
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
    extra: dict[str, Any] = {}
    if name == "vllm":  # it sizes --gpu-memory-utilization from the physics database
        extra["physics_path"] = physics_db.db_path(config.paths.calibration_dir)
    return factory(getattr(config.engines, name), state_dir=state_dir, log_dir=log_dir, **extra)
