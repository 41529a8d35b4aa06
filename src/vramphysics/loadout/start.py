"""`manage_loadout.py --apply` and `--kill`: start what is missing of a preset and leave it
running; stop what this tool started or manages, and nothing else."""

from __future__ import annotations

from vramphysics.config import Config
from vramphysics.engines import create_engine, registry
from vramphysics.engines.base import Engine
from vramphysics.errors import ConfigError
from vramphysics.loadout.check import check_fits, unchecked
from vramphysics.loadout.plan import LoadoutItem, plan_loadout
from vramphysics.loadout.resident import all_engines, parse_model_id_name

GIB = 2**30


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
        engine = create_engine(
            it.spec.engine,
            _with_next_port(cfg, it.spec.engine, ports),
            state_dir=cfg.paths.state_dir,
            log_dir=cfg.paths.state_dir / "logs" / "loadout",
        )
        try:
            done.append(_start_item(cfg, engine, it, force_download=force_download))
        finally:
            engine.close()
    return done


def _with_next_port(cfg: Config, name: str, ports: dict[str, int]) -> Config:
    """`cfg` with the next free port of an engine that has a fixed TCP port of its own and
    serves one model per process (the first at its configured port, then +1 each); `ports`
    holds the next one per engine."""
    engine_cfg = cfg.engines.section(name)
    first = getattr(engine_cfg, "port", None)  # engines with a fixed TCP port of their own
    if _serves_many(name) or not isinstance(first, int):
        return cfg
    port = ports.get(name, first)
    ports[name] = port + 1
    return cfg.model_copy(
        update={
            "engines": cfg.engines.model_copy(
                update={name: engine_cfg.model_copy(update={"port": port})}
            )
        }
    )


def _start_item(cfg: Config, engine: Engine, it: LoadoutItem, *, force_download: bool) -> str:
    """Start one item unless the engine already holds it, and leave it running: what was done."""
    held = engine.status()
    if held.up and any(
        parse_model_id_name(it.spec.raw) == m.name or m.name.endswith(it.spec.name)
        for m in held.models
    ):
        return f"{it.spec.raw}: already running at {held.url}"
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
    return f"{it.spec.raw}: started at ctx {it.ctx} on {held.url}{need}"


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
    for engine in all_engines(cfg):
        if engine.name in names:
            stopped += engine.kill_managed()
    return stopped
