"""Engines: one interface (`base.Engine`), one module per engine. `create_engine` is the only
place that maps an engine name from a model ID to its class."""

from __future__ import annotations

from pathlib import Path

from vramphysics.config import Config
from vramphysics.engines.base import Engine


def create_engine(name: str, config: Config, *, state_dir: Path, log_dir: Path) -> Engine:
    if name == "llamacpp":
        from vramphysics.engines.llamacpp import LlamaCppEngine

        return LlamaCppEngine(config.engines.llamacpp, state_dir=state_dir, log_dir=log_dir)
    if name == "vllm":
        from vramphysics.engines.vllm import VllmEngine

        return VllmEngine(config.engines.vllm, state_dir=state_dir, log_dir=log_dir)
    if name == "ollama":
        from vramphysics.engines.ollama import OllamaEngine

        return OllamaEngine(config.engines.ollama, state_dir=state_dir, log_dir=log_dir)
    raise ValueError(f"unknown engine {name!r}")
