"""The guardrail before a start, and the GPUs and memory figures a start is measured on."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from vramphysics import physics_db
from vramphysics.allocate import (
    DeviceMemory,
    Physics,
    Plan,
    device_memory,
    memory_kind,
    plan_for,
    resolve_physics,
)
from vramphysics.engines.base import Engine
from vramphysics.errors import ConfigError
from vramphysics.probes import ProbeChoice, nvml_status, probes_for
from vramphysics.records import StatusRow, WarningRow
from vramphysics.runner.state import _Run
from vramphysics.setups import ModelSpec

if TYPE_CHECKING:
    from vramphysics.theory import Theory

log = logging.getLogger("vramphysics.runner")
GIB = 2**30


def _make_probe_factory(run: _Run) -> Callable[[Engine], ProbeChoice]:
    """Per start: the probes to record (NVML on the engine's GPUs and the process tree when a GPU
    answers and `prefer` is auto); the engine's report of where its buffers live picks one."""

    def make(engine: Engine) -> ProbeChoice:
        return probes_for(run.probe_prefer, engine.root_pid, _probe_gpus(run, engine), run.nvml)

    return make


def _probe_gpus(run: _Run, engine: Engine) -> tuple[int, ...] | None:
    """The GPUs the NVML probe sums: those the engine is pinned to; for an engine that is not
    pinned, `probes.gpu_index` when the config sets it, else every GPU NVML sees (None)."""
    pinned = engine.gpu_indices()
    if pinned is not None:
        return pinned
    if "gpu_index" in run.cfg.probes.model_fields_set:
        return (run.cfg.probes.gpu_index,)
    return None


def _device_memory(run: _Run, gpus: tuple[int, ...] | None) -> DeviceMemory | None:
    """Name, total and free memory of the GPUs a start is pinned to (`gpus`; None: all
    visible), if known; `guardrail.assume_free_gib` stands in for NVML's free figure."""
    g = run.cfg.guardrail
    visible = nvml_status().gpus if run.nvml.available else ()
    assume = int(g.assume_free_gib * GIB) if g.assume_free_gib is not None else None
    return device_memory(visible, gpus, assume_free_bytes=assume)


def _start_memory(run: _Run, engine: Engine, spec: ModelSpec) -> DeviceMemory | None:
    """The memory a start is checked against. A start without a GPU (`gpus: none`, known before
    it starts from `engine.gpu_indices() == ()`) is never checked against NVML's free GPU
    memory: `guardrail.assume_free_gib` stands in when set, else there is nothing to check."""
    gpus = _probe_gpus(run, engine)
    if gpus != ():
        return _device_memory(run, gpus)
    assume = run.cfg.guardrail.assume_free_gib
    if assume is None:
        log.debug("%s: runs without a GPU and no guardrail.assume_free_gib: not checked", spec.raw)
        return None
    return device_memory((), (), assume_free_bytes=int(assume * GIB))


def _guardrail(run: _Run, engine: Engine, spec: ModelSpec, ctx: int, theory: Theory | None) -> bool:
    """Warn (and skip, when configured) before a start predicted not to fit in free memory,
    by the engine's rule: vLLM reserves utilization x total up front, the others allocate
    what they need. The prediction comes from the calibration with the engine's settings."""
    if not run.cfg.guardrail.enabled:
        return True
    memory = _start_memory(run, engine, spec)
    if memory is None:
        return True  # no device memory figure: nothing to compare with
    predicted = _prediction(run, engine, spec, ctx, theory, memory)
    if predicted is None or predicted[1].fits:
        return True
    return _warn(run, engine, spec, ctx, predicted, memory)


def _prediction(
    run: _Run,
    engine: Engine,
    spec: ModelSpec,
    ctx: int,
    theory: Theory | None,
    memory: DeviceMemory,
) -> tuple[Physics, Plan] | None:
    """The physics and the plan of one start by the engine's rule; None: no prediction."""
    device, total, free = memory.name, memory.total_bytes, memory.free_bytes
    entries = physics_db.load(physics_db.db_path(run.cfg.paths.calibration_dir))
    settings = engine.settings()
    tag = physics_db.settings_tag(settings)
    # what a pre-allocating engine adds to the need when it sizes its utilization
    margin = float(settings.get("utilization_margin") or 0.0)
    try:
        physics = resolve_physics(entries, engine.name, spec.key, device, theory, settings=tag)
    except ConfigError as exc:
        log.debug("%s: no prediction for the guardrail: %s", spec.raw, exc)
        return None
    try:
        plan = plan_for(
            physics,
            engine=engine.name,
            total_bytes=total,
            ctx=ctx,
            used_by_others_bytes=max(0, total - free),
            margin=margin if memory_kind(engine.name) == "preallocated" else 0.0,
        )
    except (ConfigError, ValueError) as exc:  # no physics, or figures no plan can use
        log.warning("%s: guardrail skipped: %s", spec.raw, exc)
        return None
    return physics, plan


def _warn(
    run: _Run,
    engine: Engine,
    spec: ModelSpec,
    ctx: int,
    predicted: tuple[Physics, Plan],
    memory: DeviceMemory,
) -> bool:
    """Record the warning (and the skip, when configured) of a start that does not fit."""
    physics, plan = predicted
    device, free = memory.name, memory.free_bytes
    skip = run.cfg.guardrail.skip_if_no_fit
    refusal = next((m for m in reversed(plan.messages) if m.startswith("refused")), "refused")
    message = (
        f"guardrail: ctx {ctx} is predicted to need {(plan.required_bytes or 0) / GIB:.2f} GiB "
        f"({physics.source}) but {free / GIB:.2f} GiB is free on {device} ({refusal}); "
        f"the largest context that fits is {plan.max_context}" + ("; skipped" if skip else "")
    )
    log.warning("%s: %s", spec.raw, message)
    run.record(
        WarningRow(
            model=spec.raw,
            engine=engine.name,
            ctx=ctx,
            message=message,
            predicted_bytes=plan.required_bytes,
            free_bytes=free,
            max_context=plan.max_context,
        )
    )
    if skip:
        run.record(
            StatusRow(model=spec.raw, engine=engine.name, status="SKIPPED", reason=message, ctx=ctx)
        )
    return not skip
