"""What every section of `config.yaml` shares, and the base of every engine's section.

Engine packages declare their own section (`engines/<name>/config.py`) on these bases; this module
imports no engine, so any engine can import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)
from typing_extensions import Self


class StrictModel(BaseModel):
    """Unknown keys are errors; numbers are never YAML booleans."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """`port: true` is a mistake, not port 1 (YAML booleans would pass as numbers)."""
        if isinstance(value, bool) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            kinds = set(get_args(annotation)) | {annotation}
            kinds |= {get_args(k)[0] for k in list(kinds) if get_args(k)}  # Annotated[int, ...]
            if bool not in kinds and kinds & {int, float}:
                raise ValueError(f"expected a number, got {value!r}")
        return value


def _gpu_indices_not_booleans(value: Any) -> Any:
    """`gpus: [true]` is a mistake, not GPU 1."""
    if isinstance(value, list) and any(isinstance(i, bool) for i in value):
        raise ValueError(f"GPU indices are whole numbers, got {value!r}")
    return value


def _gpu_list_pins_some_gpu(value: str | list[int]) -> str | list[int]:
    """A list names at least one GPU, each once, by its index (>= 0)."""
    if isinstance(value, list):
        if not value:
            raise ValueError("an empty list names no GPU; write `none` for a start without a GPU")
        if any(i < 0 for i in value):
            raise ValueError(f"GPU indices are >= 0, got {value!r}")
        if len(set(value)) != len(value):
            raise ValueError(f"a GPU index appears twice in {value!r}")
    return value


# `all`: every GPU the environment shows (CUDA_VISIBLE_DEVICES as the user set it); `none`: no
# GPU (a CPU start); a list: exactly those GPUs, by NVML / nvidia-smi index.
GpuSelection = Annotated[
    Literal["all", "none"] | list[int],
    BeforeValidator(_gpu_indices_not_booleans),
    AfterValidator(_gpu_list_pins_some_gpu),
]
GPUS_HELP = (
    "`all` (the GPUs the environment shows), `none` (no GPU) or a list of GPU indices "
    "(nvidia-smi order)"
)


# a TCP port, or `auto`: a free one taken before each start
Port = Annotated[int, Field(ge=1, le=65535)] | Literal["auto"]


class EngineTimeouts(StrictModel):
    start_timeout_s: float = Field(120.0, gt=0, description="launch until ready")
    request_timeout_s: float = Field(120.0, gt=0, description="one request, start to end")
    stop_timeout_s: float = Field(15.0, gt=0, description="SIGTERM to SIGKILL")


class EngineConfig(EngineTimeouts):
    """The base of every `engines.<name>` section."""

    def resolved(self, base: Path) -> Self:
        """This section with its relative paths made relative to `base` (the config file's
        folder) and `~` expanded. Sections without paths return themselves."""
        return self


def resolve_path(p: Path, base: Path) -> Path:
    """`~` expanded; a relative path taken relative to `base`."""
    p = p.expanduser()
    return p if p.is_absolute() else (base / p)


class PreallocatingEngineConfig(EngineConfig):
    """The section of an engine that reserves `utilization x total` at start (vLLM)."""

    default_gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="a start with no calibration on this GPU"
    )
    utilization_margin: float = Field(
        0.05, ge=0, lt=1, description="added to (base + ctx x cost) / total"
    )
