"""`manage_loadout.py`: status of engines and GPUs, applying a loadout preset, killing services.

- `status`: each configured engine (up/down, version, what it holds and the memory it reports),
  each NVIDIA GPU (name, total, used, free; per process where the driver says), and predicted vs
  reported memory for what is loaded.
- `apply`: the presets are `loadouts:` in config.yaml (lists of model IDs with their `#ctx`). The
  predicted sum is checked against free device memory before anything starts; a loadout that
  does not fit is refused, naming its biggest consumers. What is missing is started with the
  planner's allocation and left running.
- `kill`: stop what this tool started or manages (recorded processes, labelled containers), and
  nothing else.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vramphysics import physics_db
from vramphysics.allocate import resolve_physics
from vramphysics.config import Config, load_config
from vramphysics.engines import create_engine
from vramphysics.engines.base import Engine, EngineStatus
from vramphysics.errors import ConfigError, EngineError, SetupError
from vramphysics.physics_db import PhysicsEntry
from vramphysics.probes import GpuInfo, nvml_status
from vramphysics.setups import ENGINES, ModelSpec, parse_model_id

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
        create_engine(n, cfg, state_dir=state, log_dir=state / "logs" / "loadout") for n in ENGINES
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
    spec: ModelSpec
    ctx: int
    required_bytes: float | None
    source: str | None


def plan_loadout(cfg: Config, preset: str) -> tuple[list[LoadoutItem], int | None, str]:
    """The models of a preset with their predicted need, and the free device memory.

    Raises ConfigError naming the preset when it does not exist or an ID is bad.
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
    if cfg.guardrail.assume_free_gib is not None:
        free = int(cfg.guardrail.assume_free_gib * GIB)
    entries = physics_db.load(physics_db.db_path(cfg.paths.calibration_dir))
    items = []
    for i, raw in enumerate(cfg.loadouts[preset]):
        try:
            spec = parse_model_id(raw)
        except SetupError as exc:
            raise ConfigError(exc.message, path=cfg.source, key=f"loadouts.{preset}[{i}]") from exc
        ctx = spec.ctx if spec.ctx is not None else max(cfg.sweep.contexts)
        key = spec.key
        try:
            phys = resolve_physics(entries, spec.engine, key, device)
            items.append(
                LoadoutItem(
                    spec, ctx, phys.base_bytes + ctx * phys.cost_per_token_bytes, phys.source
                )
            )
        except ConfigError:
            items.append(LoadoutItem(spec, ctx, None, None))
    return items, free, device


def check_fits(items: list[LoadoutItem], free_bytes: int | None, device: str) -> list[str]:
    """Refusal reasons (empty: it fits or cannot be checked). Pure."""
    if free_bytes is None:
        return []
    known = [it for it in items if it.required_bytes is not None]
    total = sum(it.required_bytes or 0 for it in known)
    if total <= free_bytes:
        return []
    biggest = sorted(known, key=lambda it: -(it.required_bytes or 0))[:3]
    names = ", ".join(f"{it.spec.raw} {(it.required_bytes or 0) / GIB:.2f} GiB" for it in biggest)
    return [
        f"the loadout needs {total / GIB:.2f} GiB but {free_bytes / GIB:.2f} GiB is free on {device}; "
        f"biggest consumers: {names}"
    ]


def apply(cfg: Config, preset: str, *, force_download: bool = False) -> list[str]:
    """Start what is missing of a preset and leave it running. Returns what was done."""
    items, free, device = plan_loadout(cfg, preset)
    refusals = check_fits(items, free, device)
    if refusals:
        raise ConfigError(
            "refused: " + "; ".join(refusals), path=cfg.source, key=f"loadouts.{preset}"
        )
    done = []
    ports: dict[str, int] = {}
    for it in items:
        name = it.spec.engine
        engine_cfg = getattr(cfg.engines, name)
        base_cfg = cfg
        if not _serves_many(name) and engine_cfg.port != "auto":
            port = ports.get(name, engine_cfg.port)
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
                f", predicted {it.required_bytes / GIB:.2f} GiB ({it.source})"
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
    names = list(ENGINES) if name == "all" else [name]
    unknown = [n for n in names if n not in ENGINES]
    if unknown:
        raise ConfigError(f"--kill takes one of {', '.join(ENGINES)} or all, not {name!r}")
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
            apply(cfg, args.apply, force_download=args.force_download)
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
