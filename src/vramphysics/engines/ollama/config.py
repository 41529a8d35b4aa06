"""`engines.ollama` in config.yaml."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vramphysics.config_base import GPUS_HELP, EngineConfig, GpuSelection


class OllamaConfig(EngineConfig):
    host: str = "127.0.0.1"
    port: int = Field(11434, ge=1, le=65535)
    command: list[str] = ["ollama", "serve"]
    start_server: bool = True
    keep_alive: str = "5m"
    num_parallel: int | None = Field(None, ge=1)
    kv_cache_type: Literal["f16", "q8_0", "q4_0"] = "f16"
    pull_silence_timeout_s: float = Field(300.0, gt=0)
    unload_timeout_s: float = Field(60.0, gt=0)
    flash_attention: bool | None = Field(
        None,
        description="OLLAMA_FLASH_ATTENTION for a server we start "
        "(None: on when kv_cache_type is quantized, which Ollama requires; else Ollama's default)",
    )
    env: dict[str, str] = Field(
        {}, description="extra environment of a server we start (e.g. OLLAMA_MODELS)"
    )
    gpus: GpuSelection = Field("all", description=GPUS_HELP + " of a server we start")

    @model_validator(mode="after")
    def _quantized_kv_needs_flash_attention(self) -> OllamaConfig:
        if self.kv_cache_type != "f16" and self.flash_attention is False:
            raise ValueError(
                f"kv_cache_type {self.kv_cache_type} needs flash_attention "
                "(Ollama silently falls back to f16 without it)"
            )
        return self
