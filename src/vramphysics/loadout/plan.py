"""A loadout preset's models with their predicted need, and the free device memory. Starts
nothing: calibration first, else theory from the model's metadata (labelled); vLLM at what it
reserves, utilization x total with the margin."""

from __future__ import annotations

from dataclasses import dataclass

from vramphysics import physics_db
from vramphysics.allocate import Physics, Plan, plan_preallocated, resolve_physics, select_physics
from vramphysics.config import Config
from vramphysics.config_base import PreallocatingEngineConfig
from vramphysics.engines import create_engine, registry
from vramphysics.engines.base import Engine
from vramphysics.errors import ConfigError, EngineError, SetupError
from vramphysics.physics_db import PhysicsEntry
from vramphysics.probes import nvml_status
from vramphysics.setups import ModelSpec, parse_model_id
from vramphysics.theory import Theory

GIB = 2**30


@dataclass(frozen=True)
class LoadoutItem:
    """One model of a preset and what its start will hold.

    `required_bytes`: base + ctx x cost, or for vLLM what it reserves (utilization x total, the
    margin included); None when neither a calibration nor a theory is known (`note` says why).
    """

    spec: ModelSpec
    ctx: int
    required_bytes: float | None
    source: str | None  # calibrated | theory | None: neither
    note: str = ""


@dataclass(frozen=True)
class LoadoutPlan:
    """The items of a preset, the device they land on and its free memory (None: unknown)."""

    items: tuple[LoadoutItem, ...]
    free_bytes: int | None
    device: str
    free_why: str  # where the free figure came from, or why there is none


def plan_loadout(cfg: Config, preset: str) -> LoadoutPlan:
    """The models of a preset with their predicted need, and the free device memory.

    Raises ConfigError naming the preset when it does not exist or an ID is bad. Starts nothing.
    """
    if preset not in cfg.loadouts:
        have = ", ".join(cfg.loadouts) or "none"
        raise ConfigError(
            f"no loadout named {preset!r} (have: {have})", path=cfg.source, key="loadouts"
        )
    nv = nvml_status()
    gpu = next((g for g in nv.gpus if g.index == cfg.probes.gpu_index), None)
    device = gpu.name if gpu else "cpu"
    free: int | None = gpu.free_bytes if gpu else None
    free_why = f"NVML: GPU {cfg.probes.gpu_index}" if gpu else f"NVML: {nv.reason}"
    if gpu is None and nv.available:
        free_why = f"NVML has no GPU {cfg.probes.gpu_index}"
    if cfg.guardrail.assume_free_gib is not None:
        free = int(cfg.guardrail.assume_free_gib * GIB)
        free_why = "guardrail.assume_free_gib"
    # vLLM's utilization is a share of the device's total (no GPU: of what is assumed free)
    total = gpu.total_bytes if gpu else free
    entries = physics_db.load(physics_db.db_path(cfg.paths.calibration_dir))
    items = []
    for i, raw in enumerate(cfg.loadouts[preset]):
        try:
            spec = parse_model_id(raw)
        except SetupError as exc:
            raise ConfigError(exc.message, path=cfg.source, key=f"loadouts.{preset}[{i}]") from exc
        ctx = spec.ctx if spec.ctx is not None else max(cfg.sweep.contexts)
        items.append(_item(cfg, entries, spec, ctx, device, total, on_gpu=gpu is not None))
    return LoadoutPlan(tuple(items), free, device, free_why)


def _item(
    cfg: Config,
    entries: list[PhysicsEntry],
    spec: ModelSpec,
    ctx: int,
    device: str,
    total: int | None,
    *,
    on_gpu: bool,
) -> LoadoutItem:
    physics, why = _physics(cfg, entries, spec, device)
    if physics is None:
        return LoadoutItem(spec, ctx, None, None, why)
    need = physics.base_bytes + ctx * physics.cost_per_token_bytes
    section = cfg.engines.section(spec.engine)
    if not isinstance(section, PreallocatingEngineConfig) or total is None:
        return LoadoutItem(spec, ctx, need, physics.source)
    return _reserved(spec, ctx, physics, need, total, section, on_gpu=on_gpu)


def _reserved(
    spec: ModelSpec,
    ctx: int,
    physics: Physics,
    need: float,
    total: int,
    section: PreallocatingEngineConfig,
    *,
    on_gpu: bool,
) -> LoadoutItem:
    """What an engine that reserves `utilization x total` holds (vLLM), margin included."""
    label = registry.get(spec.engine).label
    margin = section.utilization_margin
    try:
        plan = _preallocated_plan(physics, total, ctx, margin)
    except ValueError as exc:  # e.g. an entry whose cost per token is not > 0
        return LoadoutItem(
            spec, ctx, None, None, f"no {label} plan from its {physics.source}: {exc}"
        )
    util = plan.gpu_memory_utilization or 0.0
    note = f"{label} reserves {util:.3f} x {total / GIB:.2f} GiB, margin {margin}"
    if physics.source == "theory" and on_gpu and section.default_gpu_memory_utilization > util:
        # the engine sizes a start from the database only: uncalibrated, it takes the default
        util = section.default_gpu_memory_utilization
        note = f"uncalibrated: {label} starts it at default_gpu_memory_utilization {util}"
    # a need above the utilization cap is not clamped away: the sum must see it
    reserved = max(util * total, need + margin * total)
    return LoadoutItem(spec, ctx, reserved, physics.source, note)


def _preallocated_plan(physics: Physics, total: int, ctx: int, margin: float) -> Plan:
    """The pre-allocating plan of one start: the one call of allocate's plan for it."""
    return plan_preallocated(physics, total_bytes=total, ctx=ctx, margin=margin)


def _physics(
    cfg: Config, entries: list[PhysicsEntry], spec: ModelSpec, device: str
) -> tuple[Physics | None, str]:
    """Calibrated physics on this device with the engine's own settings, else theory from the
    model's own metadata; else (None, why). Starts nothing."""
    state = cfg.paths.state_dir
    engine = create_engine(spec.engine, cfg, state_dir=state, log_dir=state / "logs" / "loadout")
    try:
        tag = physics_db.settings_tag(engine.settings())
        if select_physics(entries, spec.engine, spec.key, device, settings=tag) is not None:
            return resolve_physics(entries, spec.engine, spec.key, device, settings=tag), ""
        theory, why = _theory(engine, spec)
        if theory is None:
            return None, f"never calibrated on {device} with {tag}, and no theory: {why}"
        try:
            return resolve_physics(entries, spec.engine, spec.key, device, theory, tag), ""
        except ConfigError as exc:  # a theory without a weights size
            return None, f"never calibrated on {device}, and no theory: {exc.message}"
    finally:
        engine.close()


def _theory(engine: Engine, spec: ModelSpec) -> tuple[Theory | None, str]:
    """The engine's theory of a model, or (None, why). An engine that serves many models
    (Ollama) is asked only when its server already answers."""
    try:
        if engine.serves_many_models and not engine.status().up:
            return None, f"{engine.name} is not running, so its metadata cannot be read"
        theory = engine.theory(spec)
    except (ConfigError, EngineError, OSError, ValueError, KeyError) as exc:
        return None, str(exc)
    return theory, "" if theory is not None else f"{engine.name} has no metadata for it"
