"""The physics database `calibration/physics.yaml`: read, merge, and write it atomically.

One entry per (engine, model, device, settings, probe): two calibrations of one model with
different memory settings (KV dtype, parallel sequences, GPU layers, flash attention, extra
engine arguments) stand side by side, each under its settings tag (`kv=q8_0,np=1#a1b2c3d4`).
A new calibration replaces only its own entry. Writes hold a file lock and replace the file in
one rename, so two runners at once both land their entries and a reader never sees half a file.
A corrupt file is an error naming its line, and is never overwritten.

Schema 1 files (keyed without settings) are read as schema 3: each entry's tag is computed from
the settings it stored. Schema 1 and 2 entries carry no provenance (who measured them) and load
with an empty one. The next write saves schema 3.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vramphysics.errors import ConfigError
from vramphysics.provenance import Provenance, ProvenanceDoc
from vramphysics.redact import redact_args
from vramphysics.yamlio import Located, dump_yaml, load_yaml

SCHEMA_VERSION = 3  # 3: every entry carries its provenance (host, run ID, tool version)
READABLE_SCHEMAS = (1, 2, 3)
DB_FILENAME = "physics.yaml"
MANUAL_PROBE = "manual"  # the probe of an entry typed in by hand
REQUIRED_FIELDS = ("engine", "model", "device", "base_bytes", "cost_per_token_bytes")
_LOCK_TIMEOUT_S = 60.0
_HASH_CHARS = 8

# --------------------------------------------------------------------------- settings tags

# The keys of an engine's `settings()` that change memory. Everything else (host, port,
# launcher, keep_alive, where a value came from) does not split a model's physics.
MEMORY_SETTING_KEYS = (
    "kv_cache_type",
    "num_parallel",
    "flash_attention",
    "n_gpu_layers",
    "extra_args",
    "env_keys",
)
# Engine flags whose value the readable tag shows (llama-server, llama-cpp-python, vLLM).
_KV_FLAGS = ("--kv-cache-dtype", "-ctk", "--cache-type-k", "--type_k")
_KV_V_FLAGS = ("-ctv", "--cache-type-v", "--type_v")
_NP_FLAGS = ("-np", "--parallel", "--n-parallel")
_NGL_FLAGS = ("-ngl", "--n-gpu-layers", "--gpu-layers", "--n_gpu_layers")
_FA_FLAGS = ("-fa", "--flash-attn", "--flash_attn")


def memory_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that change memory, without unset values (None, empty lists).

    Extra arguments are taken with secret values masked (`--api-key ***`), as the journal and
    the database store them: a live engine's settings and its stored calibration then give the
    same tag, and a rotated key does not change it."""
    mem = {
        k: settings[k]
        for k in MEMORY_SETTING_KEYS
        if k in settings and settings[k] is not None and settings[k] != []
    }
    if isinstance(mem.get("extra_args"), list):
        mem["extra_args"] = redact_args([str(a) for a in mem["extra_args"]])
    return mem


def settings_hash(settings: Mapping[str, Any]) -> str:
    """A short hash of the memory settings: equal settings, equal hash."""
    text = json.dumps(memory_settings(settings), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:_HASH_CHARS]


def _flag_value(args: Sequence[str], flags: Sequence[str], bare: str | None = None) -> str | None:
    """The value of the last of `flags` in `args` (`--f v` or `--f=v`); `bare` for a flag
    given without a value (e.g. an old `-fa`)."""
    value = None
    for i, arg in enumerate(args):
        name, eq, inline = arg.partition("=")
        if name not in flags:
            continue
        if eq:
            value = inline
        elif i + 1 < len(args) and not _is_flag(args[i + 1]):
            value = args[i + 1]
        else:
            value = bare
    return value


def _is_flag(arg: str) -> bool:
    """`-fa` is a flag, `-1` (a value of `-ngl`) is not."""
    return arg.startswith("-") and not arg.lstrip("-").replace(".", "", 1).isdigit()


def _on_off(value: Any) -> str:
    text = str(value).strip().lower()
    if text in ("1", "true", "on", "yes", "enabled"):
        return "on"
    if text in ("0", "false", "off", "no", "disabled"):
        return "off"
    return text


def _readable(mem: Mapping[str, Any]) -> list[str]:
    args = [str(a) for a in mem.get("extra_args") or []]
    kv = _flag_value(args, _KV_FLAGS) or mem.get("kv_cache_type")
    kv_v = _flag_value(args, _KV_V_FLAGS)
    parts = [f"kv={kv or 'default'}" + (f"/{kv_v}" if kv_v and kv_v != kv else "")]
    n_par = _flag_value(args, _NP_FLAGS) or mem.get("num_parallel")
    if n_par is not None:
        parts.append(f"np={n_par}")
    ngl = _flag_value(args, _NGL_FLAGS) or mem.get("n_gpu_layers")
    if ngl is not None:
        parts.append(f"ngl={'all' if str(ngl) == '-1' else ngl}")
    fa = _flag_value(args, _FA_FLAGS, bare="on")
    fa = fa if fa is not None else mem.get("flash_attention")
    if fa is not None:
        parts.append(f"fa={_on_off(fa)}")
    if args:
        parts.append(f"args={len(args)}")
    if mem.get("env_keys"):
        parts.append(f"env={len(mem['env_keys'])}")
    return parts


def settings_tag(settings: Mapping[str, Any]) -> str:
    """`kv=q8_0,np=1,ngl=all,fa=on#a1b2c3d4`: the readable memory settings, then their hash.

    The readable part shows the KV dtype (`default` when none is set), parallel sequences,
    GPU layers, flash attention and how many extra arguments/environment keys there are; the
    hash covers every memory setting, extra arguments included.
    """
    mem = memory_settings(settings)
    return ",".join(_readable(mem)) + "#" + settings_hash(mem)


def tag_matches(tag: str, wanted: str) -> bool:
    """Does `tag` answer the user's `wanted`: a full tag, `#hash`, or parts like `kv=q8_0`?"""
    readable, _, digest = tag.partition("#")
    want_readable, _, want_digest = wanted.strip().partition("#")
    if want_digest and not digest.startswith(want_digest.strip().lower()):
        return False
    have = set(readable.split(","))
    return all(p.strip() in have for p in want_readable.split(",") if p.strip())


# --------------------------------------------------------------------------- entries


@dataclass(frozen=True, kw_only=True)
class PhysicsEntry:
    """What one calibration learned: `bytes = base_bytes + ctx * cost_per_token_bytes`.

    Only engine, model, device and the two figures are required: an entry typed in by hand
    (figures measured elsewhere) gets probe `manual` and no points.
    """

    engine: str
    model: str
    device: str
    probe: str = MANUAL_PROBE
    base_bytes: float
    cost_per_token_bytes: float
    r2: float | None = None
    n_points: int = 0
    points: tuple[tuple[int, float], ...] = ()
    engine_starts: int = 0
    theory: Mapping[str, Any] = field(default_factory=dict)
    engine_version: str = "unknown"
    calibrated_at: str = ""
    base_stderr_bytes: float | None = None
    cost_stderr_bytes: float | None = None
    device_total_bytes: int | None = None
    driver: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    provenance: Provenance = field(default_factory=Provenance)

    @property
    def settings_tag(self) -> str:
        """The memory settings it was calibrated with, e.g. `kv=q8_0,np=1#a1b2c3d4`."""
        return settings_tag(self.settings)

    @property
    def settings_known(self) -> bool:
        """False for an entry that records no settings at all (one written by hand); a
        calibration of ours always records its engine's settings, defaults included."""
        return bool(self.settings)

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        return (self.engine, self.model, self.device, self.settings_tag, self.probe)

    def required_bytes(self, ctx: int) -> float:
        return self.base_bytes + ctx * self.cost_per_token_bytes

    def to_yaml_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["points"] = [[int(c), float(b)] for c, b in self.points]
        d["theory"] = dict(self.theory)
        d["settings"] = dict(self.settings)
        d["provenance"] = self.provenance.to_yaml_dict()
        head = {k: d.pop(k) for k in ("engine", "model", "device", "probe")}
        return {**head, "settings_tag": self.settings_tag, **d}

    @classmethod
    def from_yaml_dict(
        cls, d: Mapping[str, Any], *, path: Path, index: int, doc: Located | None = None
    ) -> PhysicsEntry:
        """An entry from its YAML mapping; a bad one is a ConfigError naming the field, the
        entry's index and its line (when `doc` knows the lines)."""
        try:
            parsed = _EntryDoc.model_validate(dict(d))
        except ValidationError as exc:
            errors = exc.errors()  # a misspelt field first: it explains a "missing" one
            err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
            loc = tuple(err["loc"])
            line = doc.line_of("entries", index, *loc) if doc is not None else None
            raise ConfigError(
                _entry_problem(err, loc), path=path, line=line, key=f"entries[{index}]"
            ) from None
        values = parsed.model_dump(exclude={"settings_tag", "provenance"})
        values["provenance"] = parsed.provenance.record()
        values["points"] = tuple(values["points"])
        if values["n_points"] is None:
            values["n_points"] = len(values["points"])
        entry = cls(**values)
        if parsed.settings_tag is not None and parsed.settings_tag != entry.settings_tag:
            line = doc.line_of("entries", index, "settings_tag") if doc is not None else None
            raise ConfigError(
                f"settings_tag {parsed.settings_tag!r} does not match the entry's settings, "
                f"which give {entry.settings_tag!r}: correct settings, or delete settings_tag "
                "(it is computed)",
                path=path,
                line=line,
                key=f"entries[{index}]",
            )
        return entry


class _EntryDoc(BaseModel):
    """The YAML shape of an entry: what plan needs is required, the rest has defaults."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    engine: str = Field(min_length=1)
    model: str = Field(min_length=1)
    device: str = Field(min_length=1)
    probe: str = Field(MANUAL_PROBE, min_length=1)
    settings_tag: str | None = None
    base_bytes: float
    cost_per_token_bytes: float
    r2: float | None = None
    n_points: int | None = Field(None, ge=0)
    points: list[tuple[int, float]] = []
    engine_starts: int = Field(0, ge=0)
    theory: dict[str, Any] = {}
    engine_version: str = "unknown"
    calibrated_at: str = ""
    base_stderr_bytes: float | None = None
    cost_stderr_bytes: float | None = None
    device_total_bytes: int | None = Field(None, gt=0)
    driver: str | None = None
    settings: dict[str, Any] = {}
    provenance: ProvenanceDoc = ProvenanceDoc()

    @field_validator("*", mode="before")
    @classmethod
    def _plain_values(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"expected a number or text, got {value!r}")
        if isinstance(value, dt.date):  # an unquoted date typed by hand
            return value.isoformat()
        return value

    @field_validator("points", "theory", "settings", "provenance", mode="before")
    @classmethod
    def _empty(cls, value: Any, info: Any) -> Any:
        if value is None:
            return [] if info.field_name == "points" else {}
        return value


def _entry_problem(err: Mapping[str, Any], loc: tuple[Any, ...]) -> str:
    """One sentence for people from pydantic's first error."""
    name = str(loc[0]) if loc else "?"
    where = name + "".join(f"[{p}]" for p in loc[1:])
    if err["type"] == "missing" and len(loc) > 1:
        return f"field {where!r}: a value is missing"
    if err["type"] == "missing":
        return (
            f"field {name!r} is missing (an entry needs {', '.join(REQUIRED_FIELDS)}; "
            "everything else has a default)"
        )
    if err["type"] == "extra_forbidden" and len(loc) > 1:
        return f"unknown field {where!r}"
    if err["type"] == "extra_forbidden":
        known = ", ".join(f.name for f in dataclasses.fields(PhysicsEntry))
        return f"unknown field {name!r} (known: {known}, settings_tag)"
    got = err.get("input")
    shown = f" (got {got!r})" if not isinstance(got, dict | list) else ""
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"field {where!r}: {message}{shown}"


def db_path(calibration_dir: Path) -> Path:
    return calibration_dir / DB_FILENAME


def load(path: Path) -> list[PhysicsEntry]:
    """Read the database; a missing file is an empty database; a corrupt one is a ConfigError.

    Schema 1 files are migrated in memory (each entry's settings tag comes from its settings).
    """
    if not path.exists():
        return []
    try:
        located = load_yaml(path, what="physics database")
    except ConfigError as exc:
        raise ConfigError(
            f"corrupt physics database: {exc.message}", path=path, line=exc.line
        ) from exc
    doc = located.data
    if doc is None:
        return []
    if not isinstance(doc, dict) or "entries" not in doc:
        raise ConfigError("corrupt physics database: expected a mapping with 'entries'", path=path)
    version = doc.get("schema_version")
    if version not in READABLE_SCHEMAS:
        raise ConfigError(
            f"schema_version {version!r} is not supported (expected one of "
            f"{', '.join(map(str, READABLE_SCHEMAS))})",
            path=path,
            line=located.line_of("schema_version"),
            key="schema_version",
        )
    entries = doc.get("entries") or []
    if not isinstance(entries, list):
        raise ConfigError(
            "'entries' must be a list", path=path, line=located.line_of("entries"), key="entries"
        )
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise ConfigError(
                "entry must be a mapping of fields",
                path=path,
                line=located.line_of("entries", i),
                key=f"entries[{i}]",
            )
        out.append(PhysicsEntry.from_yaml_dict(e, path=path, index=i, doc=located))
    _refuse_duplicates(out, path, located)
    return out


def _refuse_duplicates(entries: Sequence[PhysicsEntry], path: Path, doc: Located) -> None:
    seen: dict[tuple[str, ...], int] = {}
    for i, e in enumerate(entries):
        if e.key in seen:
            raise ConfigError(
                f"entry repeats entries[{seen[e.key]}] (same engine, model, device, settings "
                f"{e.settings_tag} and probe): delete one",
                path=path,
                line=doc.line_of("entries", i),
                key=f"entries[{i}]",
            )
        seen[e.key] = i


def merge(existing: Iterable[PhysicsEntry], new: Iterable[PhysicsEntry]) -> list[PhysicsEntry]:
    """Replace entries with the same key (settings included), keep the rest, in a stable order."""
    by_key: dict[tuple[str, ...], PhysicsEntry] = {e.key: e for e in existing}
    for e in new:
        by_key[e.key] = e
    return sorted(by_key.values(), key=lambda e: e.key)


def with_provenance(
    entries: Iterable[PhysicsEntry], provenance: Provenance
) -> tuple[PhysicsEntry, ...]:
    """The entries of one run, each stamped with who measured it."""
    return tuple(dataclasses.replace(e, provenance=provenance) for e in entries)


def _dump(entries: Iterable[PhysicsEntry]) -> str:
    doc = {
        "schema_version": SCHEMA_VERSION,
        "units": "bytes; bytes = base_bytes + ctx * cost_per_token_bytes",
        "entries": [e.to_yaml_dict() for e in entries],
    }
    return dump_yaml(doc)


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


def save(path: Path, entries: Iterable[PhysicsEntry]) -> None:
    """Write exactly `entries` to `path` (replacing what is there) under the database's lock,
    in one rename: a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = _dump(entries)
    lock = FileLock(str(path) + ".lock")
    try:
        with lock.acquire(timeout=_LOCK_TIMEOUT_S):
            _atomic_write(path, text)
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
