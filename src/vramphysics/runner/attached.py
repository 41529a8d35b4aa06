"""`bench --url`: the benchmark grid against a server someone already runs.

No start and no calibration: the engine attaches to the URL (an unreachable URL or a model the
server does not serve is one line, exit 2), every cell runs as in a run, with NVML memory beside
it when a GPU answers (the whole device: the server was there before us, so no baseline), and the
journal, report and exports are written as for a run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from vramphysics.bench import Grid, StartFacts, bench_plan, run_bench
from vramphysics.config import BenchConfig, Config
from vramphysics.engines import create_engine
from vramphysics.engines.base import Engine
from vramphysics.journal import Journal, journal_path, read_journal
from vramphysics.probes import NvmlProbe, NvmlStatus, ProbeReadError, nvml_status
from vramphysics.recorder import Recorder
from vramphysics.records import BenchCell, ModelInfo, Record
from vramphysics.runner.finish import Finalized, _check_writable, finalize
from vramphysics.runner.header import run_header
from vramphysics.runner.orchestrate import _new_run_id

log = logging.getLogger("vramphysics.bench")


@dataclass(frozen=True)
class Target:
    """The server to benchmark: its URL, engine and model, and the context it serves."""

    url: str
    engine: str
    model: str
    ctx: int | None = None


@dataclass(frozen=True)
class AttachedRun:
    run_id: str
    cells: tuple[BenchCell, ...]
    records: tuple[Record, ...]
    done: Finalized


@dataclass(frozen=True)
class _Memory:
    """How `bench --url` measures memory, and the GPUs the header names."""

    recorder: Recorder | None
    nvml: NvmlStatus
    probe: str
    why: str


def _memory() -> _Memory:
    """A recorder of NVML over every GPU when one answers; else none (said in the header)."""
    status = nvml_status()
    if not (status.available and status.gpus):
        why = (
            f"no memory figures: NVML unavailable ({status.reason}), and the server's processes "
            "are not ours to read"
        )
        return _Memory(None, status, "none", why)
    try:
        probe = NvmlProbe(None)
    except ProbeReadError as exc:
        return _Memory(None, status, "none", f"no memory figures: {exc}")
    why = f"NVML on {probe.device}: the whole device in use (the server ran before us: no baseline)"
    return _Memory(Recorder(probe, 0.05), status, "nvml", why)


def bench_attached(
    cfg: Config, target: Target, grid: Grid, *, record_hook: Callable[[Record], None] | None = None
) -> AttachedRun:
    """Attach, run the grid, write the journal and the report; the server is left running."""
    bench_cfg = grid.apply(cfg.bench)
    engine = create_engine(
        target.engine, cfg, state_dir=cfg.paths.state_dir, log_dir=cfg.paths.state_dir / "logs"
    )
    try:
        engine.attach(target.url, target.model)
        return _run(cfg, engine, target, bench_cfg, record_hook)
    finally:
        engine.close()


def _run(
    cfg: Config,
    engine: Engine,
    target: Target,
    bench_cfg: BenchConfig,
    record_hook: Callable[[Record], None] | None,
) -> AttachedRun:
    for folder, what in (
        (cfg.paths.calibration_dir, "calibration"),
        (cfg.paths.report_dir, "report"),
    ):
        _check_writable(folder, what)
    run_id = _new_run_id(cfg.paths.report_dir)
    journal = Journal(journal_path(cfg.paths.report_dir, run_id))
    mem = _memory()
    recorder = mem.recorder
    model_id = f"{target.engine}:{target.model}@{target.url}"

    def record(rec: Record) -> None:
        journal.append(rec)
        if record_hook is not None:
            record_hook(rec)

    cells: list[BenchCell] = []
    try:
        record(
            run_header(
                run_id,
                mem.nvml,
                setups=[f"bench --url {target.url}"],
                probe=mem.probe,
                probe_reason=mem.why,
            )
        )
        version = engine.version()
        record(
            ModelInfo(
                model=model_id,
                setup="bench --url",
                engine=engine.name,
                engine_version=version,
                available=True,
                location=target.url,
                theory=None,
                settings={"url": target.url, **engine.settings()},
            )
        )
        facts = StartFacts(
            model=model_id,
            engine=engine.name,
            ctx=target.ctx or 0,
            engine_version=version,
            settings={"url": target.url},
            probe=mem.probe,
            device=recorder.probe.device if recorder else "",
        )
        if recorder is not None:
            recorder.start()
        plan = bench_plan(bench_cfg, engine, target.ctx, warm=False)
        cells = run_bench(engine, bench_cfg, plan, facts=facts, memory=recorder, record=record)
    finally:
        if recorder is not None:
            recorder.stop()
            recorder.probe.close()
        journal.close()
    records = read_journal(journal.path)
    return AttachedRun(run_id, tuple(cells), tuple(records), finalize(cfg, run_id, records))
