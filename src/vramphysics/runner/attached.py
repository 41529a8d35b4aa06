"""`bench --url`: the benchmark grid against a server someone already runs.

No start and no calibration: the engine attaches to the URL (an unreachable URL or a model the
server does not serve is one line, exit 2), every cell runs as in a run, with NVML memory beside
it when a GPU answers (the whole device: the server was there before us, so no baseline), and the
journal, report and exports are written as for a run.
"""

from __future__ import annotations

import logging
import platform
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from vramphysics import __version__
from vramphysics.bench import Grid, StartFacts, bench_plan, run_bench
from vramphysics.config import BenchConfig, Config
from vramphysics.engines import create_engine
from vramphysics.engines.base import Engine
from vramphysics.hostinfo import cpu_model
from vramphysics.journal import Journal, journal_path, read_journal
from vramphysics.probes import NvmlProbe, ProbeReadError, nvml_status
from vramphysics.recorder import Recorder
from vramphysics.records import BenchCell, ModelInfo, Record, RunHeader
from vramphysics.redact import redact
from vramphysics.runner.finish import Finalized, _check_writable, finalize
from vramphysics.runner.orchestrate import _git_commit, _new_run_id, _total_ram

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
    """How `bench --url` measures memory, and what the header says about the machine."""

    recorder: Recorder | None
    devices: list[dict[str, object]]
    driver: str | None
    cuda_version: str | None
    probe: str
    why: str


def _header(run_id: str, target: Target, mem: _Memory) -> RunHeader:
    return RunHeader(
        run_id=run_id,
        started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        host=socket.gethostname(),
        platform=platform.platform(),
        python=platform.python_version(),
        git_commit=_git_commit(),
        tool_version=__version__,
        config_path="",
        setups_path="",
        setups=[f"bench --url {target.url}"],
        probe=mem.probe,
        probe_reason=mem.why,
        devices=mem.devices or [{"name": "cpu", "total_bytes": _total_ram()}],
        driver=mem.driver,
        sweep_contexts=[],
        argv=[redact(a) for a in sys.argv],
        cpu_model=cpu_model(),
        cuda_version=mem.cuda_version,
    )


def _memory() -> _Memory:
    """A recorder of NVML over every GPU when one answers; else none (said in the header)."""
    status = nvml_status()
    if not (status.available and status.gpus):
        why = (
            f"no memory figures: NVML unavailable ({status.reason}), and the server's processes "
            "are not ours to read"
        )
        return _Memory(None, [], None, None, "none", why)
    devices: list[dict[str, object]] = [
        {"index": g.index, "name": g.name, "total_bytes": g.total_bytes, "used_bytes": g.used_bytes}
        for g in status.gpus
    ]
    driver, cuda = status.gpus[0].driver, status.cuda_version
    try:
        probe = NvmlProbe(None)
    except ProbeReadError as exc:
        return _Memory(None, devices, driver, cuda, "none", f"no memory figures: {exc}")
    why = f"NVML on {probe.device}: the whole device in use (the server ran before us: no baseline)"
    return _Memory(Recorder(probe, 0.05), devices, driver, cuda, "nvml", why)


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
        record(_header(run_id, target, mem))
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
