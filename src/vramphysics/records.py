"""The records that flow from the runner to the journal, the database and the report.

Each is a frozen dataclass with a `kind` used as the journal line's type. All figures are bytes,
seconds or milliseconds as their names say. Every row carries what is needed to reproduce it:
device, driver, engine version and settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

T = TypeVar("T", bound="Record")


@dataclass(frozen=True)
class Record:
    kind: ClassVar[str] = ""

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["kind"] = self.kind
        return d

    @classmethod
    def from_json(cls: type[T], d: dict[str, Any]) -> T:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class RunHeader(Record):
    kind: ClassVar[str] = "run"
    run_id: str
    started_at: str
    host: str
    platform: str
    python: str
    git_commit: str
    tool_version: str
    config_path: str
    setups_path: str
    setups: list[str]
    probe: str
    probe_reason: str
    devices: list[dict[str, Any]]
    driver: str | None
    sweep_contexts: list[int]
    argv: list[str]
    cpu_model: str | None = None
    cuda_version: str | None = None  # the CUDA version the NVIDIA driver supports
    at: str = ""


@dataclass(frozen=True)
class ModelInfo(Record):
    """What we know about a model before measuring it."""

    kind: ClassVar[str] = "model"
    model: str
    setup: str
    engine: str
    engine_version: str
    available: bool
    location: str | None
    theory: dict[str, Any] | None
    settings: dict[str, Any]
    at: str = ""


@dataclass(frozen=True)
class CalibrationPoint(Record):
    """One fresh engine start at one context, with its steady memory."""

    kind: ClassVar[str] = "point"
    model: str
    engine: str
    ctx: int
    probe: str
    device: str
    measured_bytes: int
    peak_bytes: int
    baseline_bytes: int
    n_samples: int
    ready_s: float
    engine_version: str
    engine_components: dict[str, Any] = field(default_factory=dict)
    metric: str = ""  # what measured_bytes is: pss | rss | device-used ("" in older journals)
    peak_metric: str = ""  # what peak_bytes is (the probe's cheap series metric)
    probe_reason: str = ""  # why this probe measured this start
    host: str = ""  # the machine the start ran on ("" in older journals: the run header's)
    at: str = ""


@dataclass(frozen=True)
class BenchResult(Record):
    kind: ClassVar[str] = "bench"
    model: str
    engine: str
    ctx: int
    ttft_ms: float | None
    output_tokens: int | None
    prompt_tokens: int | None
    token_source: str
    decode_tokens_per_s: float | None
    e2e_tokens_per_s: float | None
    prefill_tokens_per_s: float | None
    setup_s: float
    exec_s: float
    cleanup_s: float
    peak_bytes: int | None
    probe: str
    device: str
    engine_version: str
    load_s: float | None = None
    at: str = ""


@dataclass(frozen=True)
class Stats:
    """The distribution of one figure over a cell's measured requests (ITL: over every gap of
    every request). Percentiles interpolate linearly between order statistics, as numpy's
    default and `vllm bench serve` do. All None when `n` is 0."""

    n: int
    mean: float | None = None
    std: float | None = None  # population standard deviation (numpy's default, as vllm)
    min: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    max: float | None = None


STATS_FIELDS = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")


@dataclass(frozen=True)
class BenchRequest(Record):
    """One benchmark request, as it went (the README defines every figure).

    `phase`: "cold" (the first request after the engine was ready), "warmup" (discarded),
    "measured". Times in ms; `start_s` is when it was sent, from the start of its cell's window.
    """

    kind: ClassVar[str] = "request"
    model: str
    engine: str
    ctx: int
    cell: str  # the cell's ID, e.g. "p1024-o64-c1"
    phase: str
    index: int
    prompt_tokens_target: int
    output_tokens_target: int
    concurrency: int
    ok: bool
    error: str = ""
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    token_source: str = ""
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None
    itl_ms: list[float] = field(default_factory=list)
    start_s: float | None = None
    device: str = ""  # what the memory was measured on (the cell's device)
    finish_reason: str | None = None
    engine_prefill_tokens_per_s: float | None = None
    at: str = ""


@dataclass(frozen=True)
class BenchCell(Record):
    """One benchmark cell: engine x model x context x prompt tokens x concurrency, aggregated
    over its measured requests, with the memory sampled while they ran.

    Throughputs are over the window from the first measured request sent to the last one done.
    `load_s` (start -> ready) and `cold_ttft_ms` (the first request after ready) belong to the
    start the cell ran on and are never mixed into the warm figures.
    """

    kind: ClassVar[str] = "bench_cell"
    model: str
    engine: str
    ctx: int
    cell: str
    prompt_tokens_target: int
    output_tokens_target: int
    concurrency: int
    warm_prefix: bool  # `#warm`: one prompt repeated on purpose (prefix cache allowed)
    n_measured: int
    n_failed: int
    prompt_tokens: float | None  # mean, by the engine's own count
    output_tokens: float | None
    token_source: str
    ttft_ms: Stats
    tpot_ms: Stats
    itl_ms: Stats
    e2e_ms: Stats
    window_s: float | None
    request_throughput_per_s: float | None
    output_throughput_tokens_per_s: float | None
    decode_tokens_per_s: float | None  # 1 / mean TPOT
    prefill_tokens_per_s: float | None  # mean prompt tokens / mean TTFT
    engine_prefill_tokens_per_s: float | None  # the engine's own figure, mean, where it has one
    load_s: float | None
    cold_ttft_ms: float | None
    cold_prompt_tokens: int | None
    peak_bytes: int | None  # while the cell's requests ran, above the pre-start baseline
    steady_bytes: int | None  # median of the samples while they ran
    predicted_bytes: float | None  # the calibration's prediction for this start's context
    memory_metric: str
    probe: str
    device: str
    engine_version: str
    settings: dict[str, Any] = field(default_factory=dict)
    note: str = ""  # what was adjusted: a clipped prompt length, concurrency held to 1, ...
    # media each request carried (none: a text-only cell): "4 images 256x256"
    media: str = ""
    media_kind: str = ""  # "image" | "video"
    media_count: int = 0
    media_width: int | None = None
    media_height: int | None = None
    video_frames: int | None = None
    video_fps: float | None = None
    # (prompt tokens of this cell - those of the text-only cell of the same prompt) / count:
    # the context one image (video) takes, by the engine's own count
    media_tokens_per_item: float | None = None
    at: str = ""

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BenchCell:
        d = dict(d)
        for name in STATS_FIELDS:
            value = d.get(name)
            if isinstance(value, dict):
                d[name] = Stats(**value)
        return super().from_json(d)


@dataclass(frozen=True)
class StatusRow(Record):
    """The outcome of one model (or of one step of it, when `ctx` is set)."""

    kind: ClassVar[str] = "status"
    model: str
    engine: str
    status: str
    reason: str
    failure_kind: str | None = None
    ctx: int | None = None
    log_tail: str = ""
    max_context: int | None = None
    at: str = ""


@dataclass(frozen=True)
class WarningRow(Record):
    """A guardrail or other warning the report must show beside a model."""

    kind: ClassVar[str] = "warning"
    model: str
    engine: str
    ctx: int | None
    message: str
    predicted_bytes: float | None = None
    free_bytes: int | None = None
    max_context: int | None = None
    at: str = ""


RECORD_TYPES: dict[str, type[Record]] = {
    cls.kind: cls
    for cls in (
        RunHeader,
        ModelInfo,
        CalibrationPoint,
        BenchResult,
        BenchCell,
        BenchRequest,
        StatusRow,
        WarningRow,
    )
}


def record_from_json(d: dict[str, Any]) -> Record:
    if not isinstance(d, dict):
        raise ValueError(f"expected a JSON object, got {type(d).__name__}")
    cls = RECORD_TYPES.get(d.get("kind", ""))
    if cls is None:
        raise ValueError(f"unknown record kind {d.get('kind')!r}")
    return cls.from_json(d)
