"""`engines.llamacpp` in config.yaml."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from vramphysics.config_base import GPUS_HELP, EngineConfig, GpuSelection, Port, resolve_path


class LlamaCppConfig(EngineConfig):
    host: str = "127.0.0.1"
    port: Port = 8400
    command: list[str] | None = Field(
        None,
        description="launch command; default: llama-server on PATH, else python -m llama_cpp.server",
    )
    model_dir: Path = Path("models")
    extra_args: list[str] = []
    n_gpu_layers: int = Field(-1, ge=-1, description="layers offloaded to the GPU (-1: all)")
    gpus: GpuSelection = Field("all", description=GPUS_HELP)

    def resolved(self, base: Path) -> LlamaCppConfig:
        return self.model_copy(update={"model_dir": resolve_path(self.model_dir, base)})
