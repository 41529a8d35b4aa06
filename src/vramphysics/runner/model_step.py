"""One model: availability -> calibration sweep -> benchmark, and its final status row."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from vramphysics.bench import throughput
from vramphysics.calibrate import measure_point
from vramphysics.engines.base import Availability, Engine
from vramphysics.errors import ConfigError, EngineError
from vramphysics.outcome import fits_for
from vramphysics.probes import ProbeChoice
from vramphysics.records import BenchResult, CalibrationPoint, ModelInfo, StatusRow
from vramphysics.runner.guardrail import _guardrail, _make_probe_factory
from vramphysics.runner.state import _engine, _fail, _Run
from vramphysics.setups import ModelSpec

if TYPE_CHECKING:
    from vramphysics.probes import MemoryTrace
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
    for ctx in sweep:
        calibrating = ctx in contexts
        need_bench = ctx == bench_ctx and not run.bench_done(spec.raw)
        if calibrating:
            run.progress.set_description(f"{spec.raw} ctx={ctx}")
        if (not calibrating or run.point_done(spec.raw, ctx)) and not need_bench:
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
                bench=need_bench,
                make_probe=make_probe,
            )
        except EngineError as exc:
            n_failed += 1
            _fail(run, spec, engine.name, exc, ctx=ctx)
        finally:
            if calibrating:
                run.progress.update(1)
    return n_failed


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
    bench: bool,
    make_probe: Callable[[Engine], ProbeChoice],
) -> None:
    cfg = run.cfg
    t_start = time.monotonic()
    try:
        point, trace, _times = measure_point(
            engine,
            spec,
            ctx,
            make_probe=make_probe,
            interval_s=cfg.probes.interval_ms / 1e3,
            settle_s=cfg.sweep.settle_s,
            warmup_tokens=cfg.bench.warmup_max_tokens,
        )
        if calibrating and not run.point_done(spec.raw, ctx):
            run.record(point)
        if bench:
            _bench(run, engine, spec, ctx, trace, t_start)
    finally:
        engine.stop()


def _bench(
    run: _Run, engine: Engine, spec: ModelSpec, ctx: int, trace: MemoryTrace, t_start: float
) -> None:
    """One completion on the started engine, timed, then the stop, timed: a BenchResult."""
    cfg = run.cfg
    setup_s = time.monotonic() - t_start
    completion = engine.complete(cfg.bench.prompt, cfg.bench.max_tokens)
    engine.check_alive()
    tp = throughput(completion)
    t_stop = time.monotonic()
    engine.stop()
    cleanup_s = time.monotonic() - t_stop
    run.record(
        BenchResult(
            model=spec.raw,
            engine=engine.name,
            ctx=ctx,
            ttft_ms=tp.ttft_ms,
            output_tokens=tp.output_tokens,
            prompt_tokens=tp.prompt_tokens,
            token_source=completion.usage.source,
            decode_tokens_per_s=tp.decode_tokens_per_s,
            e2e_tokens_per_s=tp.e2e_tokens_per_s,
            prefill_tokens_per_s=tp.prefill_tokens_per_s,
            setup_s=round(setup_s, 3),
            exec_s=round(tp.exec_s, 3),
            cleanup_s=round(cleanup_s, 3),
            peak_bytes=trace.attributed_peak_bytes,
            probe=trace.probe,
            device=trace.device,
            engine_version=engine.version(),
            load_s=completion.engine_timings.get("load_s"),
        )
    )
