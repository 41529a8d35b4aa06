"""The runner: test setups -> availability -> calibration sweep -> benchmark -> database -> report.

Every finished step goes to the journal first; the physics database and the Excel report are
derived from the journal at the end (or by `--report-only RUN_ID`), so an interrupted night keeps
every finished row and `--resume` redoes nothing.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from vramphysics import __version__, physics_db
from vramphysics.allocate import (
    DeviceMemory,
    device_memory,
    memory_kind,
    plan_for,
    resolve_physics,
)
from vramphysics.bench import throughput
from vramphysics.calibrate import measure_point
from vramphysics.config import Config, load_config
from vramphysics.engines import create_engine
from vramphysics.engines.base import Engine
from vramphysics.engines.process import kill_leftovers
from vramphysics.errors import ConfigError, EngineError, Interrupted, SetupError
from vramphysics.journal import Journal, journal_path, latest_run_id, read_journal
from vramphysics.outcome import Outcome, build_outcome, fits_for
from vramphysics.probes import NvmlStatus, ProbeChoice, choose_probe, nvml_status, probes_for
from vramphysics.records import (
    BenchResult,
    CalibrationPoint,
    ModelInfo,
    Record,
    RunHeader,
    StatusRow,
    WarningRow,
)
from vramphysics.redact import add_redacting_filter, install_log_redaction, redact
from vramphysics.report import ReportFiles, run_end_text, write_reports
from vramphysics.setups import ModelSpec, load_setups, select_setups
from vramphysics.yamlio import load_yaml

if TYPE_CHECKING:
    from vramphysics.theory import Theory

log = logging.getLogger(__name__)
GIB = 2**30
# the run finished (or stopped on a full disk) but the database or the report was not written;
# the journal holds everything: `--report-only RUN_ID` (or `--resume RUN_ID`) once there is room
EXIT_NOT_WRITTEN = 4
_FULL = (errno.ENOSPC, errno.EDQUOT)
_TMP_GRACE_S = 1.0  # a process record is written in microseconds: an older temp file is stale


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--setups", type=Path, default=Path("test_setups.yaml"), help="test setups file")
    p.add_argument("--config", type=Path, default=Path("config.yaml"), help="configuration file")
    p.add_argument(
        "--setup",
        action="append",
        dest="setup_names",
        metavar="NAME",
        help="run this setup (repeatable; default: all)",
    )
    p.add_argument("--force-download", action="store_true", help="download missing models")
    p.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="RUN_ID",
        help="finish an interrupted run (default: latest)",
    )
    p.add_argument(
        "--report-only", metavar="RUN_ID", help="rebuild the database and report from a journal"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


@dataclass
class _SignalState:
    signum: int | None = None
    skip_report: bool = False
    finishing: bool = False  # writing the report: a signal is noted, not raised


@contextmanager
def _signals_raise() -> Iterator[_SignalState]:
    """First SIGINT/SIGTERM raises Interrupted (the step in flight stops, engines are stopped in
    `finally`); a second one only sets `skip_report` so clean-up still completes."""
    state = _SignalState()

    def handler(signum: int, _frame: FrameType | None) -> None:
        if state.finishing:
            state.signum = state.signum or signum
            log.warning("signal %d: finishing the report first (a second or so)", signum)
            return
        if state.signum is None:
            state.signum = signum
            raise Interrupted(signum)
        state.skip_report = True
        log.warning("second signal: the report will be skipped; still cleaning up")

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _check_writable(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("ok", encoding="utf-8")
        probe.unlink()
    except OSError as exc:
        state = "full" if exc.errno in _FULL else "not writable"
        raise ConfigError(f"{what} folder is {state}: {exc.strerror}", path=folder) from exc


def _write_failure(exc: OSError, folder: Path, what: str) -> str:
    """One clause saying which folder is full, or what failed while writing `what`."""
    if exc.errno in _FULL:
        return f"the {what} folder {folder} is full ({exc.strerror})"
    return f"could not write the {what} in {folder}: {exc.strerror or exc}"


def remove_stale_proc_temps(state_dir: Path) -> list[Path]:
    """Remove the empty `procs/*.tmp` files that a process record write cut short by a full disk
    leaves behind; a temp file younger than a second may be another runner's write in flight."""
    removed = []
    now = time.time()
    for tmp in (state_dir / "procs").glob("*.tmp"):  # the folder of engines/process.py records
        try:
            st = tmp.stat()
            if st.st_size == 0 and now - st.st_mtime >= _TMP_GRACE_S:
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:
            continue  # its writer finished it meanwhile
    if removed:
        log.info("removed %d empty process-record temp file(s) in %s", len(removed), tmp.parent)
    return removed


@dataclass
class _Run:
    """The state of one run (lives only inside `execute`)."""

    cfg: Config
    run_id: str
    journal: Journal
    done: list[Record]
    nvml: NvmlStatus
    probe_prefer: str
    force_download: bool
    progress: tqdm
    engines: dict[str, Engine] = field(default_factory=dict)

    def point_done(self, model: str, ctx: int) -> bool:
        return any(
            isinstance(r, CalibrationPoint) and r.model == model and r.ctx == ctx for r in self.done
        )

    def bench_done(self, model: str) -> bool:
        return any(isinstance(r, BenchResult) and r.model == model for r in self.done)

    def model_done(self, model: str) -> bool:
        return any(
            isinstance(r, StatusRow) and r.model == model and r.ctx is None for r in self.done
        )

    def record(self, rec: Record) -> None:
        self.journal.append(rec)
        self.done.append(rec)


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


def _engine(run: _Run, name: str) -> Engine:
    if name not in run.engines:
        run.engines[name] = create_engine(
            name,
            run.cfg,
            state_dir=run.cfg.paths.state_dir,
            log_dir=run.cfg.paths.state_dir / "logs" / run.run_id,
        )
    return run.engines[name]


def _model_step(run: _Run, setup: str, spec: ModelSpec) -> None:
    """Availability, the calibration sweep and the benchmark of one model."""
    contexts = list(run.cfg.sweep.contexts)
    if run.model_done(spec.raw):
        run.progress.update(len(contexts))
        return
    try:
        engine = _engine(run, spec.engine)
        contexts = engine.calibration_contexts(run.cfg.sweep.contexts)
        run.progress.total += len(contexts) - len(run.cfg.sweep.contexts)
        avail = engine.check_available(spec)
    except EngineError as exc:
        _fail(run, spec, spec.engine, exc, ctx=None)
        run.progress.update(len(contexts))
        return
    if not avail.present and run.force_download:
        try:
            engine.download(spec)
            avail = engine.check_available(spec)
        except EngineError as exc:
            _fail(run, spec, engine.name, exc, ctx=None)
            run.progress.update(len(contexts))
            return
    theory_obj: Theory | None = None
    if avail.present:
        try:
            theory_obj = engine.theory(spec)
        except (ConfigError, EngineError, OSError, ValueError, KeyError) as exc:
            log.warning("%s: no theory: %s", spec.raw, exc)
    theory = theory_obj.to_dict() if theory_obj is not None else None
    if not any(isinstance(r, ModelInfo) and r.model == spec.raw for r in run.done):
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
    if not avail.present:
        run.record(
            StatusRow(model=spec.raw, engine=engine.name, status="MISSING", reason=avail.detail)
        )
        run.progress.update(len(contexts))
        return

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
    finally:
        engine.stop()


def _device_memory(run: _Run, gpus: tuple[int, ...] | None) -> DeviceMemory | None:
    """Name, total and free memory of the GPUs a start is pinned to (`gpus`; None: all
    visible), if known; `guardrail.assume_free_gib` stands in for NVML's free figure."""
    g = run.cfg.guardrail
    visible = nvml_status().gpus if run.nvml.available else ()
    assume = int(g.assume_free_gib * GIB) if g.assume_free_gib is not None else None
    return device_memory(visible, gpus, assume_free_bytes=assume)


def _guardrail(run: _Run, engine: Engine, spec: ModelSpec, ctx: int, theory: Theory | None) -> bool:
    """Warn (and skip, when configured) before a start predicted not to fit in free memory,
    by the engine's rule: vLLM reserves utilization x total up front, the others allocate
    what they need. The prediction comes from the calibration with the engine's settings."""
    if not run.cfg.guardrail.enabled:
        return True
    memory = _device_memory(run, _probe_gpus(run, engine))
    if memory is None:
        return True  # no device memory figure: nothing to compare with
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
        return True
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
        return True
    if plan.fits:
        return True
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


def _fail(run: _Run, spec: ModelSpec, engine: str, exc: EngineError, *, ctx: int | None) -> None:
    log.warning("%s%s: %s", spec.raw, f" ctx={ctx}" if ctx else "", exc)
    run.record(
        StatusRow(
            model=spec.raw,
            engine=engine,
            status="FAILED",
            reason=exc.message,
            failure_kind=exc.kind,
            ctx=ctx,
            log_tail=redact(exc.log_tail[-4000:]),
            max_context=exc.max_context,
        )
    )


@dataclass(frozen=True)
class Finalized:
    """What `finalize` wrote; an error says which folder was full (or what failed)."""

    outcome: Outcome
    db: Path
    report: Path
    files: ReportFiles | None = None  # what the report wrote, None when it failed
    db_error: str | None = None
    report_error: str | None = None

    @property
    def errors(self) -> list[str]:
        return [e for e in (self.db_error, self.report_error) if e]


def finalize(cfg: Config, run_id: str, records: list[Record]) -> Finalized:
    """Derive the database entries, then the report (xlsx and html), from the journal's records.

    The database goes first: a report folder without room costs the report, not the entries.
    An OSError while writing either (a full disk, a quota) is returned, not raised, so that the
    other still gets written and the caller can say how to rebuild the rest.
    """
    remove_stale_proc_temps(cfg.paths.state_dir)
    outcome = build_outcome(records, min_points=cfg.sweep.min_points)
    db = physics_db.db_path(cfg.paths.calibration_dir)
    db_error: str | None = None
    try:
        entries = (
            physics_db.write_entries(db, outcome.entries)
            if outcome.entries
            else physics_db.load(db)
        )
    except OSError as exc:
        db_error = _write_failure(exc, db.parent, "calibration")
        entries = physics_db.merge(physics_db.load(db), outcome.entries)
    report = cfg.paths.report_dir / f"{run_id}.xlsx"
    report_error: str | None = None
    files: ReportFiles | None = None
    try:
        files = write_reports(report, outcome, entries)
    except OSError as exc:
        report_error = _write_failure(exc, report.parent, "report")
    return Finalized(outcome, db, report, files, db_error, report_error)


def _rebuild_command(args: argparse.Namespace, run_id: str, *, resume: bool) -> str:
    """The command that finishes (`--resume`) or rebuilds (`--report-only`) this run."""
    if Path(sys.argv[0]).name == "runner.py":
        argv = ["python", sys.argv[0]]
    else:
        argv = ["python", "-m", "vramphysics", "run"]
    argv += ["--resume" if resume else "--report-only", run_id]
    if args.config != Path("config.yaml"):
        argv += ["--config", str(args.config)]
    if resume and args.setups != Path("test_setups.yaml"):
        argv += ["--setups", str(args.setups)]
    return shlex.join(argv)


def _not_written(
    done: Finalized, args: argparse.Namespace, run_id: str, journal: Path, stopped: str | None
) -> int:
    """Say in one line what could not be written and how to rebuild it; EXIT_NOT_WRITTEN."""
    errors = ([stopped] if stopped else []) + done.errors
    lost = [
        name
        for name, err in (("the database entry", done.db_error), ("the report", done.report_error))
        if err
    ]
    what = (" and ".join(lost) + " not written; ") if lost else ""
    if stopped:
        what += "the run stopped early; "
    fix = _rebuild_command(args, run_id, resume=stopped is not None)
    print(
        f"vramphysics: {'; '.join(errors)}: {what}journal kept at {journal}; "
        f"once there is room: {fix}",
        file=sys.stderr,
    )
    return EXIT_NOT_WRITTEN


def _print_done(run_id: str, done: Finalized, journal: Path) -> None:
    """The counts, the answer table and where everything is (or what was not written)."""
    counts = done.outcome.status_counts()
    print(f"run {run_id}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if done.files is not None and not done.db_error:
        f = done.files
        print(run_end_text(f.answers, xlsx=f.xlsx, html=f.html, database=done.db, journal=journal))
        return
    print(f"physics database: {done.db}" + (" (NOT written)" if done.db_error else ""))
    print(f"report: {done.report}" + (" (NOT written)" if done.report_error else ""))
    print(f"journal: {journal}")


def _close(engine: Engine) -> None:
    """Close an engine even when a signal cuts into its stop: the first signal raises
    Interrupted once (the handler raises only the first); the second attempt completes."""
    for _attempt in range(2):
        try:
            engine.close()
            return
        except Interrupted:
            log.warning("signal during the stop of %s: stopping it again", engine.name)
    engine.close()


def _new_run_id(report_dir: Path) -> str:
    """A fresh run ID; its journal is created here, exclusively, so two runners started in the
    same second never share one."""
    base = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_id, n = base, 1
    while True:
        try:
            os.close(os.open(journal_path(report_dir, run_id), os.O_CREAT | os.O_EXCL, 0o644))
            return run_id
        except FileExistsError:
            n += 1
            run_id = f"{base}-{n}"


def _header(
    run: _Run, args: argparse.Namespace, setups: list[str], probe_reason: str, probe: str
) -> RunHeader:
    gpus = [
        {"index": g.index, "name": g.name, "total_bytes": g.total_bytes, "used_bytes": g.used_bytes}
        for g in run.nvml.gpus
    ]
    return RunHeader(
        run_id=run.run_id,
        started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        host=socket.gethostname(),
        platform=platform.platform(),
        python=platform.python_version(),
        git_commit=_git_commit(),
        tool_version=__version__,
        config_path=str(args.config),
        setups_path=str(args.setups),
        setups=setups,
        probe=probe,
        probe_reason=probe_reason,
        devices=gpus or [{"name": "cpu", "total_bytes": _total_ram()}],
        driver=run.nvml.gpus[0].driver if run.nvml.gpus else None,
        sweep_contexts=list(run.cfg.sweep.contexts),
        argv=[redact(a) for a in sys.argv],
    )


def _total_ram() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


def _validate_models(
    cfg: Config, setups: dict[str, list[ModelSpec]], chosen: list[tuple[str, ModelSpec]], path: Path
) -> None:
    """Every model ID its engine can never serve fails here, before any engine starts; the
    error names the setups file and the line of the ID."""
    by_engine: dict[str, list[tuple[str, ModelSpec]]] = {}
    for setup, spec in chosen:
        by_engine.setdefault(spec.engine, []).append((setup, spec))
    for name, items in by_engine.items():
        engine = create_engine(
            name, cfg, state_dir=cfg.paths.state_dir, log_dir=cfg.paths.state_dir / "logs"
        )
        try:
            for setup, spec in items:
                try:
                    engine.validate(spec)
                except SetupError as exc:
                    line = load_yaml(path, what="test setups").line_of(
                        setup, setups[setup].index(spec)
                    )
                    raise SetupError(exc.message, path=path, line=line, key=setup) from exc
        finally:
            engine.close()


@contextmanager
def console_through_tqdm() -> Iterator[None]:
    """During the sweep, console log lines go through `tqdm.write` (above the progress bar).

    tqdm swaps the console handler for its own, without our filters: every record is already
    masked where it is made (`install_log_redaction`), and the swapped-in handler gets the
    redacting filter as well."""
    with logging_redirect_tqdm():
        add_redacting_filter(logging.getLogger().handlers)
        yield


def run_from_args(args: argparse.Namespace) -> int:
    """Entry point of `runner.py` and `python -m vramphysics run`."""
    install_log_redaction()
    cfg = load_config(args.config)
    if args.report_only:
        kept = journal_path(cfg.paths.report_dir, args.report_only)
        result = finalize(cfg, args.report_only, read_journal(kept))
        _print_done(args.report_only, result, kept)
        return _not_written(result, args, args.report_only, kept, None) if result.errors else 0
    setups = load_setups(args.setups)
    chosen = select_setups(setups, args.setup_names, path=args.setups)
    _validate_models(cfg, setups, chosen, args.setups)
    # a corrupt database stops us now, before any engine starts
    physics_db.load(physics_db.db_path(cfg.paths.calibration_dir))
    for folder, what in (
        (cfg.paths.calibration_dir, "calibration"),
        (cfg.paths.report_dir, "report"),
        (cfg.paths.state_dir, "state"),
    ):
        _check_writable(folder, what)
    for rec in kill_leftovers(cfg.paths.state_dir):
        print(
            f"stopped a leftover engine from an earlier run: {rec.label} (pid {rec.pid})",
            file=sys.stderr,
        )
    remove_stale_proc_temps(cfg.paths.state_dir)

    done: list[Record] = []
    if args.resume:
        run_id = latest_run_id(cfg.paths.report_dir) if args.resume == "latest" else args.resume
        if run_id is None:
            raise ConfigError("no run to resume", path=cfg.paths.report_dir)
        done = read_journal(journal_path(cfg.paths.report_dir, run_id))
    else:
        run_id = _new_run_id(cfg.paths.report_dir)
    journal = Journal(journal_path(cfg.paths.report_dir, run_id))
    nvml = nvml_status()
    total = len(chosen) * len(cfg.sweep.contexts)
    exit_code = 0
    with (
        _signals_raise() as sig,
        console_through_tqdm(),
        tqdm(total=total, unit="start", disable=args.no_progress, dynamic_ncols=True) as bar,
    ):
        run = _Run(
            cfg=cfg,
            run_id=run_id,
            journal=journal,
            done=done,
            nvml=nvml,
            probe_prefer=cfg.probes.prefer,
            force_download=args.force_download,
            progress=bar,
        )
        probe, why = choose_probe(cfg.probes.prefer, lambda: None, cfg.probes.gpu_index, nvml)
        probe_name = probe.name
        probe.close()
        stopped: str | None = None  # why the sweep stopped early: a full disk
        try:
            if not any(isinstance(r, RunHeader) for r in done):
                names = list(dict.fromkeys(n for n, _ in chosen))
                run.record(_header(run, args, names, why, probe_name))
            log.info("run %s: %d model(s), probe: %s", run_id, len(chosen), why)
            for setup, spec in chosen:
                _model_step(run, setup, spec)
        except Interrupted as exc:
            log.warning("interrupted by signal %d: stopping engines", exc.signum)
        except OSError as exc:
            if exc.errno not in _FULL:
                raise
            where = f" at {exc.filename}" if exc.filename else ""
            stopped = f"no space left on device{where} (journal, engine log or process record)"
            log.warning("%s: the run stops here; engines stopped, journal kept", stopped)
        finally:
            for engine in run.engines.values():
                _close(engine)
            journal.close()
        exit_code = 128 + sig.signum if sig.signum else 0
        if sig.skip_report:
            print(
                "second signal: report skipped; journal kept at " + str(journal.path),
                file=sys.stderr,
            )
            return exit_code
        sig.finishing = True
        records = read_journal(journal.path)
        result = finalize(cfg, run_id, records)
    _print_done(run_id, result, journal.path)
    if result.errors or stopped:
        code = _not_written(result, args, run_id, journal.path, stopped)
        return 128 + sig.signum if sig.signum else code
    return 128 + sig.signum if sig.signum else 0
