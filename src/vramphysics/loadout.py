"""`manage_loadout.py`: status of engines and GPUs, applying a loadout preset, killing services.

- `status`: each configured engine (up/down, version, what it holds and the memory it reports),
  each NVIDIA GPU (name, total, used, free; per process where the driver says), and predicted vs
  reported memory for what is loaded.
- `apply`: the presets are `loadouts:` in config.yaml (lists of model IDs with their `#ctx`). The
  predicted sum (calibration, else theory from the model's metadata, labelled; vLLM at what it
  reserves, utilization x total with the margin) is checked against free device memory before
  anything starts; a loadout that does not fit is refused, naming its biggest consumers. What
  cannot be checked (a model with neither calibration nor theory, no free-memory figure) is
  refused unless `--force`. What is missing is started and left running.
- `kill`: stop what this tool started or manages (recorded processes, labelled containers), and
  nothing else.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vramphysics import physics_db
from vramphysics.allocate import Physics, Plan, plan_preallocated, resolve_physics, select_physics
from vramphysics.config import Config, load_config
from vramphysics.config_base import PreallocatingEngineConfig
from vramphysics.engines import create_engine, registry
from vramphysics.engines.base import Engine, EngineStatus
from vramphysics.errors import ConfigError, EngineError, SetupError
from vramphysics.physics_db import PhysicsEntry
from vramphysics.probes import GpuInfo, nvml_status
from vramphysics.setups import ModelSpec, parse_model_id
from vramphysics.theory import Theory

log = logging.getLogger(__name__)
GIB = 2**30


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


def _engines(cfg: Config) -> list[Engine]:
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
    for engine in _engines(cfg):
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


def check_fits(
    items: Sequence[LoadoutItem],
    free_bytes: int | None,
    device: str,
    *,
    free_why: str = "",
    force: bool = False,
) -> list[str]:
    """Refusal reasons (empty: it fits, or `force` waives what cannot be checked). Pure.

    What cannot be vouched for is refused unless `force`: a model with neither a calibration
    nor a theory, and a device without a free-memory figure. A known sum above the free memory
    is refused even with `force`.
    """
    refusals = []
    if not force:
        refusals += [
            f"{it.spec.raw} has no prediction ({it.note}): calibrate it, or pass --force "
            "to start it unchecked"
            for it in items
            if it.required_bytes is None
        ]
        if free_bytes is None:
            refusals.append(
                f"no free-memory figure for {device} ({free_why or 'unknown'}): set "
                "guardrail.assume_free_gib, or pass --force to start unchecked"
            )
    if free_bytes is None:
        return refusals
    known = [it for it in items if it.required_bytes is not None]
    total = sum(it.required_bytes or 0 for it in known)
    if total <= free_bytes:
        return refusals
    biggest = sorted(known, key=lambda it: -(it.required_bytes or 0))[:3]
    names = ", ".join(
        f"{it.spec.raw} {(it.required_bytes or 0) / GIB:.2f} GiB ({it.source})" for it in biggest
    )
    return [
        *refusals,
        f"the loadout needs {total / GIB:.2f} GiB but {free_bytes / GIB:.2f} GiB is free on "
        f"{device}; biggest consumers: {names}",
    ]


def unchecked(plan: LoadoutPlan) -> list[str]:
    """What `--force` let through without a check, one line each."""
    lines = [
        f"warning: {it.spec.raw}: not in the sum ({it.note}); started unchecked (--force)"
        for it in plan.items
        if it.required_bytes is None
    ]
    if plan.free_bytes is None:
        lines.append(
            f"warning: no free-memory figure for {plan.device} ({plan.free_why}); "
            "the loadout was not checked (--force)"
        )
    return lines


def apply(
    cfg: Config, preset: str, *, force_download: bool = False, force: bool = False
) -> list[str]:
    """Start what is missing of a preset and leave it running. Returns what was done.

    Refused (ConfigError) before anything starts when the preset does not fit, or when it
    cannot be checked and `force` is not given.
    """
    plan = plan_loadout(cfg, preset)
    refusals = check_fits(
        plan.items, plan.free_bytes, plan.device, free_why=plan.free_why, force=force
    )
    if refusals:
        raise ConfigError(
            "refused: " + "; ".join(refusals), path=cfg.source, key=f"loadouts.{preset}"
        )
    done = unchecked(plan) if force else []
    ports: dict[str, int] = {}
    for it in plan.items:
        name = it.spec.engine
        engine_cfg = cfg.engines.section(name)
        base_cfg = cfg
        first = getattr(engine_cfg, "port", None)  # engines with a fixed TCP port of their own
        if not _serves_many(name) and isinstance(first, int):
            port = ports.get(name, first)
            ports[name] = port + 1
            base_cfg = cfg.model_copy(
                update={
                    "engines": cfg.engines.model_copy(
                        update={name: engine_cfg.model_copy(update={"port": port})}
                    )
                }
            )
        engine = create_engine(
            name,
            base_cfg,
            state_dir=cfg.paths.state_dir,
            log_dir=cfg.paths.state_dir / "logs" / "loadout",
        )
        try:
            held = engine.status()
            if held.up and any(
                parse_model_id_name(it.spec.raw) == m.name or m.name.endswith(it.spec.name)
                for m in held.models
            ):
                done.append(f"{it.spec.raw}: already running at {held.url}")
                continue
            avail = engine.check_available(it.spec)
            if not avail.present:
                if not force_download:
                    raise ConfigError(
                        f"{it.spec.raw} is missing ({avail.detail}); use --force-download",
                        path=cfg.source,
                    )
                engine.download(it.spec)
            engine.start(it.spec, it.ctx)
            engine.wait_ready()
            engine.detach()
            need = (
                f", predicted {it.required_bytes / GIB:.2f} GiB ({it.source}"
                + (f"; {it.note})" if it.note else ")")
                if it.required_bytes
                else ""
            )
            done.append(f"{it.spec.raw}: started at ctx {it.ctx} on {held.url}{need}")
        finally:
            engine.close()
    return done


def _serves_many(engine: str) -> bool:
    from vramphysics.engines import engine_class

    return engine_class(engine).serves_many_models


def kill(cfg: Config, name: str) -> list[str]:
    """Stop what this tool started or manages for one engine, or for all."""
    known = registry.names()
    names = list(known) if name == "all" else [name]
    if any(n not in known for n in names):
        raise ConfigError(f"--kill takes one of {', '.join(known)} or all, not {name!r}")
    stopped: list[str] = []
    for engine in _engines(cfg):
        if engine.name in names:
            stopped += engine.kill_managed()
    return stopped


def _print_status(st: LoadoutStatus) -> None:
    for e in st.engines:
        state = "up" if e.up else "down"
        print(f"{e.name:9} {state:5} {e.url}  {e.version or ''} {e.detail}".rstrip())
        for m in e.models:
            size = f" {m.size_bytes / GIB:.2f} GiB" if m.size_bytes else ""
            vram = f" ({m.vram_bytes / GIB:.2f} GiB VRAM)" if m.vram_bytes is not None else ""
            ctx = f" ctx {m.ctx}" if m.ctx else ""
            print(f"          {m.name}{ctx}{size}{vram}")
    if not st.gpus:
        print(f"GPUs: none ({st.nvml})")
    for g in st.gpus:
        print(
            f"GPU {g.index}: {g.name}  total {g.total_bytes / GIB:.2f} GiB  used {g.used_bytes / GIB:.2f} GiB  "
            f"free {g.free_bytes / GIB:.2f} GiB  driver {g.driver}"
        )
        for pid, used in g.processes:
            print(f"          pid {pid}: {'?' if used is None else f'{used / GIB:.2f} GiB'}")
    for p in st.predictions:
        if p.predicted_bytes is not None:
            rep = f"{p.reported_bytes / GIB:.2f}" if p.reported_bytes else "?"
            print(
                f"{p.engine} {p.model}: predicted {p.predicted_bytes / GIB:.2f} GiB ({p.source}), reported {rep} GiB"
            )


def main(argv: list[str] | None = None) -> int:
    from vramphysics.cli import run_main

    p = argparse.ArgumentParser(prog="manage_loadout.py", description=__doc__.splitlines()[0])
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--status", action="store_true", help="engines, GPUs, what is loaded")
    what.add_argument("--apply", metavar="PRESET", help="start a loadout preset from config.yaml")
    what.add_argument(
        "--kill", metavar="NAME", help="stop a managed engine (llamacpp, vllm, ollama) or all"
    )
    p.add_argument("--config", type=Path, default=Path("config.yaml"), help="configuration file")
    p.add_argument(
        "--force-download", action="store_true", help="with --apply: download missing models"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="with --apply: start what cannot be checked (a model with neither a calibration "
        "nor a theory, or no free-memory figure); a loadout known not to fit is still refused",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    return run_main(_run, args)


def _run(args: argparse.Namespace) -> int:
    cfg = (
        load_config(args.config)
        if args.config.exists() or args.config != Path("config.yaml")
        else Config()
    )
    if args.status:
        st = status(cfg)
        if args.json:
            print(json.dumps(st.to_dict(), indent=2))
        else:
            _print_status(st)
        return 0
    try:
        lines = (
            apply(cfg, args.apply, force_download=args.force_download, force=args.force)
            if args.apply
            else kill(cfg, args.kill)
        )
    except EngineError as exc:
        print(f"manage_loadout: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"done": lines}, indent=2))
    else:
        print("\n".join(lines) if lines else "nothing to do")
    return 0
