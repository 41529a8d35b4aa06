"""Engines: one interface (`base.Engine`), one package per engine, and the registry
(`registry.py`) through which everything else finds them. Adding an engine: see
docs/adding-an-engine.md.

This module imports nothing at load time, so that `setups` and `config` can ask the registry
without importing any engine.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vramphysics.engines import registry

if TYPE_CHECKING:
    from vramphysics.config import Config
    from vramphysics.engines.base import Engine


def engine_class(name: str) -> type[Engine]:
    """The Engine subclass registered as `name` (its module is imported now)."""
    return registry.get(name).engine_class()


def create_engine(name: str, config: Config, *, state_dir: Path, log_dir: Path) -> Engine:
    """An engine with its section of the config (`engines.<name>`)."""
    info = registry.get(name)
    extra: dict[str, Any] = {}
    if info.uses_physics_db:  # it sizes its starts from the physics database (vLLM)
        from vramphysics import physics_db

        extra["physics_path"] = physics_db.db_path(config.paths.calibration_dir)
    factory: Callable[..., Engine] = info.engine_class()  # (its config section, *, state_dir, ...)
    return factory(config.engines.section(name), state_dir=state_dir, log_dir=log_dir, **extra)
