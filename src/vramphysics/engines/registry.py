"""The engine registry: the one place that knows which engines exist.

Each engine declares itself in one `EngineInfo` in its own package (`engines/<name>/__init__.py`
sets `ENGINE`): its name, model-ID prefixes, config model, memory kind, probes in order of
preference and how a plan is turned into advice. Engines outside this package register the same
way through the `vramphysics.engines` entry-point group (see docs/adding-an-engine.md).

Everything else asks the registry (`get(name).memory_kind == "preallocated"`) and never names an
engine. Engine code is imported only when an engine is used: `EngineInfo.engine_class()` imports
its module on first call.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, Literal

from vramphysics.errors import ConfigError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from vramphysics.allocate import Plan
    from vramphysics.engines.base import Engine

MemoryKind = Literal["preallocated", "on_demand"]
ENTRY_POINT_GROUP = "vramphysics.engines"
BUILTIN_PACKAGES = (
    "vramphysics.engines.llamacpp",
    "vramphysics.engines.ollama",
    "vramphysics.engines.vllm",
)


@dataclass(frozen=True)
class AdviceRequest:
    """What `plan` was asked, beside the plan itself: the model to serve and how."""

    model: str
    port: int | None = None
    kv_cache_bytes: bool = False  # size the KV cache in bytes rather than by utilization


@dataclass(frozen=True)
class Advice:
    """How to serve a plan with this engine, worded for it."""

    lines: tuple[tuple[str, str], ...] = ()  # (label, text) for people
    commands: Mapping[str, list[str]] = field(default_factory=dict)  # argv lists, for --json
    notes: tuple[str, ...] = ()  # facts about the installed engine, e.g. which flags it takes
    facts: Mapping[str, Any] = field(default_factory=dict)  # the same facts for --json


def _no_advice(plan: Plan, request: AdviceRequest) -> Advice:
    return Advice()


@dataclass(frozen=True)
class EngineInfo:
    """One engine, as the rest of vram-physics sees it."""

    name: str  # the model ID's engine, `engines.<name>` in config.yaml, the database's `engine`
    label: str  # for people: "vLLM"
    prefixes: tuple[str, ...]  # model-ID prefixes, matched case-insensitively: ("vllm:", "vl_")
    config_model: type[BaseModel]  # the pydantic model of `engines.<name>`
    engine_module: str  # imported on first use
    engine_class_name: str
    memory_kind: MemoryKind = "on_demand"  # preallocated: it reserves utilization x total
    probes: tuple[str, ...] = ("nvml", "process")  # its entries' probes, best first
    advice: Callable[[Plan, AdviceRequest], Advice] = _no_advice
    # its log (and a saved /metrics page) as figures, for `inspect-log`; None: not supported
    inspect_log: Callable[[str, str | None], dict[str, Any]] | None = None
    bare_names: bool = False  # a bare `name:tag` or `org/name` model ID is this engine's
    uses_physics_db: bool = False  # its starts are sized from the physics database (vLLM)

    def __post_init__(self) -> None:
        # a plugin may pass lists: keep the record hashable (config models are cached by it)
        object.__setattr__(self, "prefixes", tuple(self.prefixes))
        object.__setattr__(self, "probes", tuple(self.probes))

    def engine_class(self) -> type[Engine]:
        """The Engine subclass, imported now."""
        module = importlib.import_module(self.engine_module)
        cls: type[Engine] = getattr(module, self.engine_class_name)
        return cls


def _builtin(package: str) -> EngineInfo:
    info = importlib.import_module(package).ENGINE
    if not isinstance(info, EngineInfo):
        raise TypeError(f"{package}.ENGINE is not an EngineInfo")
    return info


def _plugins() -> list[EngineInfo]:
    found = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            info = ep.load()
        except Exception as exc:  # noqa: BLE001 - a plugin's import may raise anything: name it
            raise ConfigError(
                f"the engine plugin {ep.name!r} ({ep.value}, entry point group "
                f"{ENTRY_POINT_GROUP}) cannot be loaded: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(info, EngineInfo):
            raise ConfigError(
                f"entry point {ep.name!r} ({ep.value}) of group {ENTRY_POINT_GROUP} is not an "
                "EngineInfo"
            )
        found.append(info)
    return found


def engines() -> tuple[EngineInfo, ...]:
    """Every registered engine: the built-in ones, then those of installed plugins.

    The entry points are scanned once per `sys.path` (a scan reads every installed
    distribution's metadata, about 10 ms): a plugin put on the path, as a test does, is seen at
    once; one installed while this process runs is seen by the next process."""
    return _registered(tuple(sys.path))


@functools.lru_cache(maxsize=8)
def _registered(path: tuple[str, ...]) -> tuple[EngineInfo, ...]:
    found = [_builtin(p) for p in BUILTIN_PACKAGES] + _plugins()
    names = [i.name for i in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"two engines are registered as {', '.join(twice)}")
    return tuple(found)


def names() -> tuple[str, ...]:
    return tuple(i.name for i in engines())


def get(name: str) -> EngineInfo:
    """The engine named `name`; a ConfigError listing the known ones otherwise."""
    for info in engines():
        if info.name == name:
            return info
    raise ConfigError(f"unknown engine {name!r} (known: {', '.join(names())})")


def match_prefix(model_id: str) -> tuple[EngineInfo, str] | None:
    """The engine whose prefix starts `model_id` (case-insensitive), and the prefix as written;
    the longest prefix wins. None when no prefix matches."""
    lowered = model_id.lower()
    best: tuple[EngineInfo, str] | None = None
    for info in engines():
        for prefix in info.prefixes:
            if lowered.startswith(prefix.lower()) and (best is None or len(prefix) > len(best[1])):
                best = (info, model_id[: len(prefix)])
    return best


def bare_name_engine() -> EngineInfo | None:
    """The engine a bare `name:tag` or `org/name` ID belongs to (Ollama), if one claims them."""
    return next((i for i in engines() if i.bare_names), None)


def lazy_exports(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for an engine package: `homes` maps each public name to the
    module that defines it, imported on first use, so that reading the package's `ENGINE`
    declaration imports none of the engine's code."""

    def getattr_(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(home), name)

    return getattr_
