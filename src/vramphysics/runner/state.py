"""The state of one run, the engines it creates and the failures it records."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from vramphysics.config import Config
from vramphysics.engines import create_engine
from vramphysics.engines.base import Engine
from vramphysics.errors import EngineError, SetupError
from vramphysics.journal import Journal
from vramphysics.probes import NvmlStatus
from vramphysics.records import CalibrationPoint, Record, StatusRow
from vramphysics.redact import redact
from vramphysics.setups import ModelSpec, model_line
from vramphysics.yamlio import load_yaml

log = logging.getLogger("vramphysics.runner")


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

    def model_done(self, model: str) -> bool:
        return any(
            isinstance(r, StatusRow) and r.model == model and r.ctx is None for r in self.done
        )

    def record(self, rec: Record) -> None:
        self.journal.append(rec)
        self.done.append(rec)


def _engine(run: _Run, name: str) -> Engine:
    if name not in run.engines:
        run.engines[name] = create_engine(
            name,
            run.cfg,
            state_dir=run.cfg.paths.state_dir,
            log_dir=run.cfg.paths.state_dir / "logs" / run.run_id,
        )
    return run.engines[name]


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
                    doc = load_yaml(path, what="test setups")
                    line = model_line(doc, setup, setups[setup].index(spec))
                    raise SetupError(exc.message, path=path, line=line, key=setup) from exc
        finally:
            engine.close()
