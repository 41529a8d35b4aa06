"""Where a physics database entry came from: the host, run and tool that measured it, and the
other calibrations of the same key that a `merge` set aside for it.

The engine version and the driver stay where they always were, in the entry itself
(`PhysicsEntry.engine_version`, `.driver`): plan and the report read them there. An entry
written before provenance existed (schema 1 and 2) loads with an empty provenance (all None).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator


@dataclass(frozen=True, kw_only=True)
class Source:
    """Another calibration of the same key, kept by `merge` beside the newer one it lost to:
    who measured it, when, and its two figures."""

    database: str | None = None  # the file `merge` read it from
    host: str | None = None
    run_id: str | None = None
    tool_version: str | None = None
    engine_version: str | None = None
    driver: str | None = None
    calibrated_at: str = ""
    base_bytes: float
    cost_per_token_bytes: float

    @property
    def identity(self) -> tuple[Any, ...]:
        """The same calibration read from two files (or merged twice) has the same identity."""
        return (
            self.host,
            self.run_id,
            self.calibrated_at,
            self.engine_version,
            self.base_bytes,
            self.cost_per_token_bytes,
        )


@dataclass(frozen=True)
class Provenance:
    """Who measured an entry (None: not known, as for an entry from before provenance or one
    typed by hand), and the calibrations of its key that a merge set aside, oldest first."""

    host: str | None = None
    run_id: str | None = None
    tool_version: str | None = None
    sources: tuple[Source, ...] = ()

    def to_yaml_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sources"] = [dataclasses.asdict(s) for s in self.sources]
        return d


class _Plain(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _plain_values(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"expected a number or text, got {value!r}")
        if isinstance(value, dt.date):  # an unquoted date typed by hand
            return value.isoformat()
        return value


class SourceDoc(_Plain):
    """The YAML shape of one `provenance.sources` item."""

    database: str | None = None
    host: str | None = None
    run_id: str | None = None
    tool_version: str | None = None
    engine_version: str | None = None
    driver: str | None = None
    calibrated_at: str = ""
    base_bytes: float
    cost_per_token_bytes: float


class ProvenanceDoc(_Plain):
    """The YAML shape of an entry's `provenance` (every field optional)."""

    host: str | None = None
    run_id: str | None = None
    tool_version: str | None = None
    sources: list[SourceDoc] = []

    @field_validator("sources", mode="before")
    @classmethod
    def _no_sources(cls, value: Any) -> Any:
        return [] if value is None else value

    def record(self) -> Provenance:
        return Provenance(
            host=self.host,
            run_id=self.run_id,
            tool_version=self.tool_version,
            sources=tuple(Source(**s.model_dump()) for s in self.sources),
        )
