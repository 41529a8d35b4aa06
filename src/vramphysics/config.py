"""`config.yaml`: a typed, validated configuration. Unknown keys and bad values name the key."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from vramphysics.config_base import (
    EngineConfig,
    StrictModel,
    resolve_path,
)
from vramphysics.engines import registry
from vramphysics.errors import ConfigError
from vramphysics.yamlio import load_yaml


class EnginesConfig(StrictModel):
    """`engines:`, one section per registered engine. The fields are added from the registry
    (`config_model`): this base class names no engine."""

    def section(self, name: str) -> EngineConfig:
        """The section `engines.<name>`, with its defaults when the file has none."""
        value = getattr(self, name, None)
        if isinstance(value, EngineConfig):
            return value
        made = registry.get(name).config_model()
        if not isinstance(made, EngineConfig):
            raise ConfigError(f"the config model of engine {name!r} is not an EngineConfig")
        return made

    def resolved(self, base: Path) -> EnginesConfig:
        """Every section with its paths resolved against `base`."""
        update = {name: self.section(name).resolved(base) for name in type(self).model_fields}
        return self.model_copy(update=update)


@functools.cache
def _engines_model(infos: tuple[registry.EngineInfo, ...]) -> type[EnginesConfig]:
    fields: dict[str, Any] = {
        i.name: (i.config_model, Field(default_factory=i.config_model)) for i in infos
    }
    return create_model("EnginesConfig", __base__=EnginesConfig, **fields)


def engines_config_model() -> type[EnginesConfig]:
    """`engines:` with a section for every engine registered now (plugins included)."""
    return _engines_model(registry.engines())


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


class ImageCell(StrictModel):
    """`bench.images[]`: cells whose every request carries `count` images of this size."""

    count: int = Field(1, ge=1)
    width: int = Field(ge=1, le=16384)
    height: int = Field(ge=1, le=16384)


class VideoCell(StrictModel):
    """`bench.videos[]`: cells whose every request carries `count` videos of this shape."""

    count: int = Field(1, ge=1)
    width: int = Field(ge=1, le=8192)
    height: int = Field(ge=1, le=8192)
    frames: int = Field(ge=1, le=4096)
    fps: float = Field(1.0, gt=0, le=240)


class BenchConfig(StrictModel):
    """`bench:`, the benchmark grid of every model (README: "Benchmark figures").

    Cells: each prompt length (`prompt_tokens`, and `depth` x the context) x each concurrency,
    at the model's benchmark context. Per cell: `warmup_requests` x concurrency discarded, then
    `repetitions` x concurrency measured."""

    enabled: bool = Field(True, description="false: calibrate only, no benchmark start")
    prompt_tokens: list[int] = Field(
        [128, 1024], description="prompt lengths in tokens, by the engine's own count"
    )
    depth: list[float] = Field(
        [], description="prompt lengths as fractions of the context (llama-bench -d)"
    )
    output_tokens: int = Field(64, ge=2, description="tokens every request produces, exactly")
    repetitions: int = Field(5, ge=1, description="measured requests per cell (x concurrency)")
    warmup_requests: int = Field(2, ge=0, description="discarded requests per cell")
    concurrency: list[int] = Field([1], description="requests in flight at once")
    images: list[ImageCell] = Field(
        [], description="media cells: each entry adds cells with that many images per request"
    )
    videos: list[VideoCell] = Field([], description="media cells with videos (vLLM)")
    max_s_per_model: float | None = Field(
        None, gt=0, description="stop starting new cells of a model after this many seconds"
    )
    warmup_max_tokens: int = Field(4, ge=1, description="the calibration's warm-up request")

    @field_validator("prompt_tokens")
    @classmethod
    def _prompt_tokens(cls, v: list[int]) -> list[int]:
        if any(n < 1 for n in v):
            raise ValueError("every prompt length must be >= 1 token")
        return sorted(set(v))

    @field_validator("depth")
    @classmethod
    def _depth(cls, v: list[float]) -> list[float]:
        if any(not 0 < d <= 1 for d in v):
            raise ValueError("every depth must be a fraction of the context in (0, 1]")
        return sorted(set(v))

    @model_validator(mode="after")
    def _some_prompt(self) -> BenchConfig:
        if not self.prompt_tokens and not self.depth:
            raise ValueError("give at least one prompt length: prompt_tokens or depth")
        return self

    @field_validator("concurrency")
    @classmethod
    def _concurrency(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("at least one concurrency level")
        if any(n < 1 for n in v):
            raise ValueError("every concurrency level must be >= 1")
        return sorted(set(v))


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
    engines: EnginesConfig = Field(default_factory=lambda: engines_config_model()())
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


@functools.cache
def _config_model(engines: type[EnginesConfig]) -> type[Config]:
    return create_model(
        "Config", __base__=Config, engines=(engines, Field(default_factory=engines))
    )


def config_model() -> type[Config]:
    """The schema of config.yaml with `engines.<name>` for every registered engine."""
    return _config_model(engines_config_model())


def load_config(path: Path) -> Config:
    """Load and validate `config.yaml`. A missing file is an error (use --config to point at one)."""
    doc = load_yaml(path, what="config")
    data = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping at the top level", path=path, line=doc.line_of())
    try:
        config = config_model().model_validate(data)
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
