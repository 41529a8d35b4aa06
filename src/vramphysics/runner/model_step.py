"""One model: availability -> calibration sweep -> benchmark, and its final status row."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from vramphysics.bench import StartFacts, bench_plan, cold_request, run_bench
from vramphysics.calibrate import StartTimes, measure_point
from vramphysics.engines.base import Availability, Completion, Engine
from vramphysics.errors import ConfigError, EngineError
from vramphysics.outcome import fits_for
from vramphysics.probes import ProbeChoice
from vramphysics.recorder import Recorder
from vramphysics.records import BenchCell, CalibrationPoint, ModelInfo, StatusRow
from vramphysics.runner.guardrail import _guardrail, _make_probe_factory
from vramphysics.runner.state import _engine, _fail, _Run
from vramphysics.setups import ModelSpec

if TYPE_CHECKING:
    from vramphysics.bench import BenchPlan
    from vramphysics.theory import Theory

log = logging.getLogger("vramphysics.runner")


def _model_step(run: _Run, setup: str, spec: ModelSpec) -> None:
    """Availability, the calibration sweep and the benchmark of one model."""
    if run.model_done(spec.raw):
        run.progress.update(len(run.cfg.sweep.contexts))
        return
    found = _availability(run, spec)
    if found is None:
        return
    engine, avail, contexts = found
    theory_obj = _theory(engine, spec, avail)
    _record_info(run, setup, spec, engine, avail, theory_obj)
    if not avail.present:
        run.record(
            StatusRow(model=spec.raw, engine=engine.name, status="MISSING", reason=avail.detail)
        )
        run.progress.update(len(contexts))
        return
    n_failed = _sweep(run, engine, spec, contexts, theory_obj)
    _record_status(run, spec, engine, n_failed)


def _availability(run: _Run, spec: ModelSpec) -> tuple[Engine, Availability, list[int]] | None:
    """The engine, whether it has the model (downloaded with --force-download) and the
    contexts to calibrate; None when that failed (recorded)."""
    contexts = list(run.cfg.sweep.contexts)
    try:
        engine = _engine(run, spec.engine)
        contexts = engine.calibration_contexts(run.cfg.sweep.contexts)
        run.progress.total += len(contexts) - len(run.cfg.sweep.contexts)
        avail = engine.check_available(spec)
    except EngineError as exc:
        _fail(run, spec, spec.engine, exc, ctx=None)
        run.progress.update(len(contexts))
        return None
    if not avail.present and run.force_download:
        try:
            engine.download(spec)
            avail = engine.check_available(spec)
        except EngineError as exc:
            _fail(run, spec, engine.name, exc, ctx=None)
            run.progress.update(len(contexts))
            return None
    return engine, avail, contexts


def _theory(engine: Engine, spec: ModelSpec, avail: Availability) -> Theory | None:
    if not avail.present:
        return None
    try:
        return engine.theory(spec)
    except (ConfigError, EngineError, OSError, ValueError, KeyError) as exc:
        log.warning("%s: no theory: %s", spec.raw, exc)
        return None


def _record_info(
    run: _Run,
    setup: str,
    spec: ModelSpec,
    engine: Engine,
    avail: Availability,
    theory_obj: Theory | None,
) -> None:
    """The model's info record, once per run (a resumed run has it already)."""
    theory = theory_obj.to_dict() if theory_obj is not None else None
    if any(isinstance(r, ModelInfo) and r.model == spec.raw for r in run.done):
        return
    run.record(
        ModelInfo(
            model=spec.raw,
            setup=setup,
            engine=engine.name,
            engine_version=engine.version(),
            available=avail.present,
            location=avail.location,
            theory=theory,
            settings=engine.settings(),
        )
    )


def _sweep(
    run: _Run, engine: Engine, spec: ModelSpec, contexts: list[int], theory_obj: Theory | None
) -> int:
    """Every context not done yet (and the benchmark's); returns how many starts failed."""
    make_probe = _make_probe_factory(run)
    bench_ctx = spec.ctx if spec.ctx is not None else max(contexts)
    n_failed = 0
    sweep = contexts if bench_ctx in contexts else [*contexts, bench_ctx]
    if not run.cfg.bench.enabled:
        bench_ctx, sweep = -1, contexts
    max_s = run.cfg.bench.max_s_per_model
    deadline = None if max_s is None else time.monotonic() + max_s
    for ctx in sweep:
        calibrating = ctx in contexts
        bench = _bench_plan(run, engine, spec, ctx) if ctx == bench_ctx else None
        if calibrating:
            run.progress.set_description(f"{spec.raw} ctx={ctx}")
        if (not calibrating or run.point_done(spec.raw, ctx)) and not (bench and bench.pending):
            if calibrating:
                run.progress.update(1)
            continue
        if not _guardrail(run, engine, spec, ctx, theory_obj):
            run.progress.update(1 if calibrating else 0)
            continue
        try:
            _one_start(
                run,
                engine,
                spec,
                ctx,
                calibrating=calibrating,
                bench=bench if bench and bench.pending else None,
                make_probe=make_probe,
                deadline=deadline,
            )
        except EngineError as exc:
            n_failed += 1
            _fail(run, spec, engine.name, exc, ctx=ctx)
        finally:
            if calibrating:
                run.progress.update(1)
    return n_failed


def _bench_plan(run: _Run, engine: Engine, spec: ModelSpec, ctx: int) -> BenchPlan:
    """The benchmark cells of a model at its benchmark context, and those already done."""
    finished = [
        r for r in run.done if isinstance(r, BenchCell) and r.model == spec.raw and r.ctx == ctx
    ]
    return bench_plan(run.cfg.bench, engine, ctx, warm=spec.warm, finished=finished)


def _record_status(run: _Run, spec: ModelSpec, engine: Engine, n_failed: int) -> None:
    points = [r for r in run.done if isinstance(r, CalibrationPoint) and r.model == spec.raw]
    fits, why_not = fits_for(points, run.cfg.sweep.min_points)
    if not points:
        status, reason = "FAILED", "no context could be measured"
    elif not fits:
        status, reason = "NO_FIT", f"no fit: {why_not}"
    else:
        status = "OK"
        reason = f"{len(points)} points" + (f", {n_failed} step(s) failed" if n_failed else "")
    run.record(StatusRow(model=spec.raw, engine=engine.name, status=status, reason=reason))


def _one_start(
    run: _Run,
    engine: Engine,
    spec: ModelSpec,
    ctx: int,
    *,
    calibrating: bool,
    bench: BenchPlan | None,
    make_probe: Callable[[Engine], ProbeChoice],
    deadline: float | None,
) -> None:
    """One start: its calibration point (recorded as soon as it is measured), then, on the
    benchmark's start, every pending benchmark cell with the probe still sampling."""
    cfg = run.cfg

    kept: list[CalibrationPoint] = []

    def keep(point: CalibrationPoint) -> None:
        if not kept and calibrating and not run.point_done(spec.raw, ctx):
            run.record(point)
        kept.append(point)

    def during(point: CalibrationPoint, recorder: Recorder, times: StartTimes) -> None:
        keep(point)
        if bench is not None:
            _bench(run, engine, spec, ctx, bench, recorder, times, deadline)

    try:
        point, _trace, _times = measure_point(
            engine,
            spec,
            ctx,
            make_probe=make_probe,
            interval_s=cfg.probes.interval_ms / 1e3,
            settle_s=cfg.sweep.settle_s,
            warmup_tokens=cfg.bench.warmup_max_tokens,
            during=during,
        )
        keep(point)
    finally:
        engine.stop()


def _bench(
    run: _Run,
    engine: Engine,
    spec: ModelSpec,
    ctx: int,
    plan: BenchPlan,
    recorder: Recorder,
    times: StartTimes,
    deadline: float | None,
) -> None:
    """The benchmark cells on the started engine, the memory recorder still sampling."""
    cold = times.cold
    cold_fig = cold_request_facts(cold)
    facts = StartFacts(
        model=spec.raw,
        engine=engine.name,
        ctx=ctx,
        engine_version=engine.version(),
        settings=engine.settings(),
        load_s=round(times.ready_s, 3),
        cold_ttft_ms=cold_fig[0],
        cold_prompt_tokens=cold_fig[1],
        predicted_bytes=_predicted(run, spec, ctx),
        probe=recorder.probe.name,
        device=recorder.probe.device,
    )
    if cold is not None:
        run.record(cold_request(facts, cold, run.cfg.bench.warmup_max_tokens))
    run_bench(
        engine,
        run.cfg.bench,
        plan,
        facts=facts,
        memory=recorder,
        record=run.record,
        deadline=deadline,
        progress=not run.progress.disable,
    )


def cold_request_facts(cold: Completion | None) -> tuple[float | None, int | None]:
    """The cold request's TTFT (ms, rounded) and prompt tokens."""
    if cold is None or cold.ttft_ms is None:
        return None, None
    return round(cold.ttft_ms, 3), cold.usage.prompt_tokens


def _predicted(run: _Run, spec: ModelSpec, ctx: int) -> float | None:
    """The calibration's prediction for a start at `ctx`, from this run's points so far."""
    points = [r for r in run.done if isinstance(r, CalibrationPoint) and r.model == spec.raw]
    fits, _why = fits_for(points, run.cfg.sweep.min_points)
    return fits[0][1].predict(ctx) if fits else None
