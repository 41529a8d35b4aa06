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
    for cls in (RunHeader, ModelInfo, CalibrationPoint, BenchResult, StatusRow, WarningRow)
}


def record_from_json(d: dict[str, Any]) -> Record:
    if not isinstance(d, dict):
        raise ValueError(f"expected a JSON object, got {type(d).__name__}")
    cls = RECORD_TYPES.get(d.get("kind", ""))
    if cls is None:
        raise ValueError(f"unknown record kind {d.get('kind')!r}")
    return cls.from_json(d)
