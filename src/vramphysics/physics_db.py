"""The physics database `calibration/physics.yaml`: read, merge, and write it atomically.

One entry per (engine, model, device, probe). A new calibration replaces only its own entry.
Writes hold a file lock and replace the file in one rename, so two runners at once both land
their entries and a reader never sees half a file. A corrupt file is an error naming its line,
and is never overwritten.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock, Timeout

from vramphysics.errors import ConfigError
from vramphysics.yamlio import yaml_problem

SCHEMA_VERSION = 1
DB_FILENAME = "physics.yaml"
_LOCK_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class PhysicsEntry:
    """What one calibration learned: `bytes = base_bytes + ctx * cost_per_token_bytes`."""

    engine: str
    model: str
    device: str
    probe: str
    base_bytes: float
    cost_per_token_bytes: float
    r2: float | None
    n_points: int
    points: tuple[tuple[int, float], ...]
    engine_starts: int
    theory: Mapping[str, Any] = field(default_factory=dict)
    engine_version: str = "unknown"
    calibrated_at: str = ""
    base_stderr_bytes: float | None = None
    cost_stderr_bytes: float | None = None
    device_total_bytes: int | None = None
    driver: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.engine, self.model, self.device, self.probe)

    def required_bytes(self, ctx: int) -> float:
        return self.base_bytes + ctx * self.cost_per_token_bytes

    def to_yaml_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["points"] = [[int(c), float(b)] for c, b in self.points]
        d["theory"] = dict(self.theory)
        d["settings"] = dict(self.settings)
        return d

    @classmethod
    def from_yaml_dict(cls, d: Mapping[str, Any], *, path: Path, index: int) -> PhysicsEntry:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown field(s) {unknown}", path=path, key=f"entries[{index}]")
        try:
            kwargs = dict(d)
            kwargs["points"] = tuple((int(c), float(b)) for c, b in d.get("points") or [])
            kwargs["theory"] = dict(d.get("theory") or {})
            kwargs["settings"] = dict(d.get("settings") or {})
            for name in ("base_bytes", "cost_per_token_bytes"):
                kwargs[name] = float(d[name])
            return cls(**kwargs)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"bad entry: {exc}", path=path, key=f"entries[{index}]") from exc


def db_path(calibration_dir: Path) -> Path:
    return calibration_dir / DB_FILENAME


def load(path: Path) -> list[PhysicsEntry]:
    """Read the database; a missing file is an empty database; a corrupt one is a ConfigError."""
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        bad_line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"corrupt physics database: not UTF-8 text (byte {exc.start})", path=path, line=bad_line
        ) from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem, line = yaml_problem(exc, text)
        raise ConfigError(f"corrupt physics database: {problem}", path=path, line=line) from exc
    if doc is None:
        return []
    if not isinstance(doc, dict) or "entries" not in doc:
        raise ConfigError("corrupt physics database: expected a mapping with 'entries'", path=path)
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ConfigError(
            f"schema_version {version!r} is not supported (expected {SCHEMA_VERSION})",
            path=path,
            key="schema_version",
        )
    entries = doc.get("entries") or []
    if not isinstance(entries, list):
        raise ConfigError("'entries' must be a list", path=path, key="entries")
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise ConfigError("entry must be a mapping", path=path, key=f"entries[{i}]")
        out.append(PhysicsEntry.from_yaml_dict(e, path=path, index=i))
    return out


def merge(existing: Iterable[PhysicsEntry], new: Iterable[PhysicsEntry]) -> list[PhysicsEntry]:
    """Replace entries with the same key, keep the rest, in a stable order."""
    by_key: dict[tuple[str, str, str, str], PhysicsEntry] = {e.key: e for e in existing}
    for e in new:
        by_key[e.key] = e
    return sorted(by_key.values(), key=lambda e: e.key)


def _dump(entries: Iterable[PhysicsEntry]) -> str:
    doc = {
        "schema_version": SCHEMA_VERSION,
        "units": "bytes; bytes = base_bytes + ctx * cost_per_token_bytes",
        "entries": [e.to_yaml_dict() for e in entries],
    }
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100)


def write_entries(path: Path, new: Iterable[PhysicsEntry]) -> list[PhysicsEntry]:
    """Merge `new` into the database at `path` under a lock and replace the file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = list(new)
    lock = FileLock(str(path) + ".lock")
    try:
        with lock.acquire(timeout=_LOCK_TIMEOUT_S):
            merged = merge(load(path), new)
            _atomic_write(path, _dump(merged))
            return merged
    except Timeout as exc:
        raise ConfigError(
            f"could not lock the physics database within {_LOCK_TIMEOUT_S:.0f} s", path=path
        ) from exc


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def find(
    entries: Iterable[PhysicsEntry],
    *,
    engine: str,
    model: str,
    device: str | None = None,
    probe: str | None = None,
) -> list[PhysicsEntry]:
    """Entries for this engine and model, optionally narrowed to a device and probe."""
    return [
        e
        for e in entries
        if e.engine == engine
        and e.model == model
        and (device is None or e.device == device)
        and (probe is None or e.probe == probe)
    ]
