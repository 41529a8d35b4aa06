"""`manage_loadout.py --status`: what each configured engine holds now, the GPUs, and predicted
vs reported memory for what is loaded. Starts nothing."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from vramphysics import physics_db
from vramphysics.allocate import resolve_physics
from vramphysics.config import Config
from vramphysics.engines import create_engine, registry
from vramphysics.engines.base import Engine, EngineStatus
from vramphysics.errors import ConfigError, SetupError
from vramphysics.physics_db import PhysicsEntry
from vramphysics.probes import GpuInfo, nvml_status
from vramphysics.setups import parse_model_id


@dataclass(frozen=True)
class Prediction:
    """What a model at a context is predicted to need, and what the engine says it uses."""

    engine: str
    model: str
    ctx: int | None
    predicted_bytes: float | None
    source: str | None  # calibrated | theory | None (no physics)
    reported_bytes: int | None = None


@dataclass(frozen=True)
class LoadoutStatus:
    engines: tuple[EngineStatus, ...]
    gpus: tuple[GpuInfo, ...]
    nvml: str
    predictions: tuple[Prediction, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "engines": [dataclasses.asdict(e) for e in self.engines],
            "gpus": [dataclasses.asdict(g) for g in self.gpus],
            "nvml": self.nvml,
            "predictions": [dataclasses.asdict(p) for p in self.predictions],
        }


def all_engines(cfg: Config) -> list[Engine]:
    """One engine object per registered engine, logging under the state's loadout folder."""
    state = cfg.paths.state_dir
    return [
        create_engine(n, cfg, state_dir=state, log_dir=state / "logs" / "loadout")
        for n in registry.names()
    ]


def _device_name(gpus: tuple[GpuInfo, ...], index: int) -> str:
    return next((g.name for g in gpus if g.index == index), "cpu")


def _predict(
    entries: list[PhysicsEntry], engine: str, name: str, device: str, ctx: int | None
) -> tuple[float | None, str | None]:
    """Calibrated prediction for a resident model, matched by name across prefixes."""
    own = [
        e
        for e in entries
        if e.engine == engine and parse_model_id_name(e.model) == name and e.device == device
    ]
    if not own or ctx is None:
        return None, None
    try:
        phys = resolve_physics(own, engine, own[0].model, device)
    except ConfigError:
        return None, None
    return phys.base_bytes + ctx * phys.cost_per_token_bytes, phys.source


def parse_model_id_name(model: str) -> str:
    try:
        return parse_model_id(model).name
    except SetupError:
        return model


def status(cfg: Config) -> LoadoutStatus:
    """Ask every configured engine and NVML; nothing is started. No GPU is not an error."""
    nv = nvml_status()
    device = _device_name(nv.gpus, cfg.probes.gpu_index)
    entries = physics_db.load(physics_db.db_path(cfg.paths.calibration_dir))
    engine_status: list[EngineStatus] = []
    predictions: list[Prediction] = []
    for engine in all_engines(cfg):
        try:
            st = engine.status()
        except NotImplementedError:
            st = EngineStatus(engine.name, False, "", detail="status is not supported")
        finally:
            engine.close()
        engine_status.append(st)
        for m in st.models:
            predicted, source = _predict(entries, st.name, m.name, device, m.ctx)
            reported = m.vram_bytes if nv.available and m.vram_bytes is not None else m.size_bytes
            predictions.append(Prediction(st.name, m.name, m.ctx, predicted, source, reported))
    return LoadoutStatus(tuple(engine_status), nv.gpus, nv.reason, tuple(predictions))
