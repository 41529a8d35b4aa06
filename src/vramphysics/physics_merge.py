"""Merge physics databases from several machines into one (pure, but for reading the inputs).

One entry per key (engine, model, device, settings, probe). When two inputs hold the same key,
the newer calibration (`calibrated_at`) is kept and the other is listed in the kept entry's
`provenance.sources`, figures included: nothing is dropped. On a tie (the same time, or no time
at all), the input named later on the command line wins.

Two calibrations of one key whose figures (cost per token, base) disagree by more than their
uncertainty are a `Conflict`, reported beside the merge. The uncertainty is the fits' standard
errors when both entries state them (and they are not both zero): the figures disagree when
they differ by more than `sigmas` combined standard errors, sqrt(se_a^2 + se_b^2). Otherwise
(an entry typed by hand, or one from an older tool) they disagree when they differ by more
than `relative` of the larger figure.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vramphysics import physics_db
from vramphysics.errors import ConfigError
from vramphysics.physics_db import PhysicsEntry
from vramphysics.provenance import Source
from vramphysics.yamlio import load_yaml

DEFAULT_SIGMAS = 2.0
DEFAULT_RELATIVE = 0.05
_FIGURES = (
    ("cost_per_token_bytes", "cost_stderr_bytes"),
    ("base_bytes", "base_stderr_bytes"),
)
_OLDEST = dt.datetime.min.replace(tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class Tolerance:
    """How far two calibrations of one key may differ before they are a conflict."""

    sigmas: float = DEFAULT_SIGMAS  # combined standard errors, when both entries state them
    relative: float = DEFAULT_RELATIVE  # fraction of the larger figure, otherwise

    def __post_init__(self) -> None:
        if not self.sigmas > 0 or not 0 < self.relative < 1:
            raise ValueError(f"sigmas must be > 0 and relative in (0, 1): {self}")


@dataclass(frozen=True)
class InputDb:
    """One input database: its file and its entries, in file order."""

    path: Path
    entries: tuple[PhysicsEntry, ...]


@dataclass(frozen=True)
class Conflict:
    """One figure of one key on which two calibrations disagree beyond their uncertainty."""

    key: tuple[str, str, str, str, str]  # engine, model, device, settings tag, probe
    figure: str  # cost_per_token_bytes | base_bytes
    kept: float
    kept_from: str  # the input file
    kept_calibrated_at: str
    other: float
    other_from: str
    other_calibrated_at: str
    tolerance: float
    basis: str  # "stderr" (sigmas x combined standard errors) | "relative"

    @property
    def difference(self) -> float:
        return abs(self.kept - self.other)

    def to_dict(self) -> dict[str, Any]:
        engine, model, device, settings, probe = self.key
        return {
            "engine": engine,
            "model": model,
            "device": device,
            "settings_tag": settings,
            "probe": probe,
            "figure": self.figure,
            "kept": self.kept,
            "kept_from": self.kept_from,
            "kept_calibrated_at": self.kept_calibrated_at,
            "other": self.other,
            "other_from": self.other_from,
            "other_calibrated_at": self.other_calibrated_at,
            "difference": self.difference,
            "tolerance": self.tolerance,
            "basis": self.basis,
        }


@dataclass(frozen=True)
class MergeResult:
    """The merged entries (sorted by key), what they disagree on, and how many calibrations
    were set aside for a newer one of the same key."""

    entries: tuple[PhysicsEntry, ...]
    conflicts: tuple[Conflict, ...]
    set_aside: int


def read_inputs(paths: Sequence[Path]) -> list[InputDb]:
    """Every input, read and checked before anything is written; a missing or corrupt one is a
    ConfigError naming the file (and its line, when the problem has one)."""
    out = []
    for path in paths:
        if not path.is_file():
            raise ConfigError("physics database file not found", path=path)
        entries = tuple(physics_db.load(path))
        for i, e in enumerate(entries):
            try:
                calibrated_time(e, path, i)  # an unreadable time is refused now, not mid-merge
            except ConfigError as exc:
                line = load_yaml(path, what="physics database").line_of(
                    "entries", i, "calibrated_at"
                )
                raise ConfigError(exc.message, path=path, line=line, key=exc.key) from None
        out.append(InputDb(path, entries))
    return out


def calibrated_time(entry: PhysicsEntry, path: Path, index: int) -> dt.datetime:
    """When the entry was calibrated (UTC; a time without a zone is taken as UTC, no time at
    all as the oldest possible); a ConfigError when `calibrated_at` is not an ISO time."""
    if not entry.calibrated_at:
        return _OLDEST
    try:
        when = dt.datetime.fromisoformat(entry.calibrated_at)
    except ValueError:
        raise ConfigError(
            f"calibrated_at {entry.calibrated_at!r} is not an ISO date or time "
            "(e.g. 2026-01-02T03:04:05+00:00)",
            path=path,
            key=f"entries[{index}]",
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def merge_inputs(inputs: Sequence[InputDb], tolerance: Tolerance) -> MergeResult:
    """One entry per key: the newest calibration, the others in its `provenance.sources`."""
    groups: dict[tuple[str, ...], list[tuple[dt.datetime, int, Path, PhysicsEntry]]] = {}
    order = 0
    for db in inputs:
        for i, e in enumerate(db.entries):
            groups.setdefault(e.key, []).append((calibrated_time(e, db.path, i), order, db.path, e))
            order += 1
    entries, conflicts, set_aside = [], [], 0
    for group in groups.values():
        group.sort(key=lambda g: (g[0], g[1]))
        _, _, kept_path, kept = group[-1]
        others = [(path, e) for _, _, path, e in group[:-1]]
        merged, n = _keep(kept, others)
        entries.append(merged)
        set_aside += n
        conflicts += [
            c for path, e in others for c in find_conflicts(kept, kept_path, e, path, tolerance)
        ]
    entries.sort(key=lambda e: e.key)
    return MergeResult(tuple(entries), tuple(conflicts), set_aside)


def source_of(entry: PhysicsEntry, path: Path) -> Source:
    """An entry as a source of another: who measured it, when, and its figures."""
    return Source(
        database=str(path),
        host=entry.provenance.host,
        run_id=entry.provenance.run_id,
        tool_version=entry.provenance.tool_version,
        engine_version=entry.engine_version,
        driver=entry.driver,
        calibrated_at=entry.calibrated_at,
        base_bytes=entry.base_bytes,
        cost_per_token_bytes=entry.cost_per_token_bytes,
    )


def _keep(
    kept: PhysicsEntry, others: Sequence[tuple[Path, PhysicsEntry]]
) -> tuple[PhysicsEntry, int]:
    """The kept entry with the other calibrations (and those they had set aside) among its
    sources, each calibration once; and how many new ones it lists."""
    itself = source_of(kept, Path()).identity
    sources = list(kept.provenance.sources)
    seen = {itself, *(s.identity for s in sources)}
    added = 0
    for path, e in others:
        for s in (*e.provenance.sources, source_of(e, path)):
            if s.identity not in seen:
                seen.add(s.identity)
                sources.append(s)
                added += 1
    sources.sort(key=lambda s: s.calibrated_at)
    provenance = replace(kept.provenance, sources=tuple(sources))
    return replace(kept, provenance=provenance), added


def find_conflicts(
    kept: PhysicsEntry, kept_path: Path, other: PhysicsEntry, other_path: Path, tol: Tolerance
) -> list[Conflict]:
    """The figures on which `other` disagrees with `kept` beyond their uncertainty."""
    out = []
    for figure, stderr in _FIGURES:
        a, b = float(getattr(kept, figure)), float(getattr(other, figure))
        limit, basis = _limit(a, b, getattr(kept, stderr), getattr(other, stderr), tol)
        if abs(a - b) > limit:
            out.append(
                Conflict(
                    key=kept.key,
                    figure=figure,
                    kept=a,
                    kept_from=str(kept_path),
                    kept_calibrated_at=kept.calibrated_at,
                    other=b,
                    other_from=str(other_path),
                    other_calibrated_at=other.calibrated_at,
                    tolerance=limit,
                    basis=basis,
                )
            )
    return out


def _limit(
    a: float, b: float, se_a: float | None, se_b: float | None, tol: Tolerance
) -> tuple[float, str]:
    """The largest difference two figures may have, and what it is based on."""
    if se_a is not None and se_b is not None and (se_a > 0 or se_b > 0):
        return tol.sigmas * math.hypot(se_a, se_b), "stderr"
    return tol.relative * max(abs(a), abs(b)), "relative"
