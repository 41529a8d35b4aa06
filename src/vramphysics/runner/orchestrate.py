"""The run: test setups -> availability -> calibration sweep -> benchmark -> database -> report.

Every finished step goes to the journal first; the physics database and the Excel report are
derived from the journal at the end (or by `--report-only RUN_ID`), so an interrupted night keeps
every finished row and `--resume` redoes nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from vramphysics import physics_db
from vramphysics.config import Config, load_config
from vramphysics.engines.process import kill_leftovers
from vramphysics.errors import ConfigError, Interrupted
from vramphysics.journal import Journal, journal_path, latest_run_id, read_journal
from vramphysics.probes import nvml_status
from vramphysics.recorder import run_probe_rule
from vramphysics.records import Record, RunHeader
from vramphysics.redact import add_redacting_filter, install_log_redaction
from vramphysics.runner.finish import (
    _FULL,
    _check_writable,
    _not_written,
    _print_done,
    finalize,
    remove_stale_proc_temps,
)
from vramphysics.runner.header import run_header
from vramphysics.runner.model_step import _model_step
from vramphysics.runner.ray_driver import run_on_ray
from vramphysics.runner.signals import _close, _signals_raise
from vramphysics.runner.state import _Run, _validate_models
from vramphysics.setups import ModelSpec, load_device_kinds, load_setups, select_setups

log = logging.getLogger("vramphysics.runner")


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
    p.add_argument(
        "--ray",
        nargs="?",
        const="auto",
        metavar="ADDRESS",
        help="spread each (model, device kind) sweep over a Ray cluster (default address: auto, "
        "the cluster `ray start` made here; needs `pip install -e .[ray]`; docs/cluster.md)",
    )


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
    return run_header(
        run.run_id,
        run.nvml,
        setups=setups,
        probe=probe,
        probe_reason=probe_reason,
        config_path=str(args.config),
        setups_path=str(args.setups),
        sweep_contexts=run.cfg.sweep.contexts,
    )


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
        return _report_only(cfg, args)
    chosen = _prepare(cfg, args)
    run_id, done = _open_run(cfg, args)
    journal = Journal(journal_path(cfg.paths.report_dir, run_id))
    nvml = nvml_status()
    total = len(chosen) * len(cfg.sweep.contexts)
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
        stopped = _run_models(run, args, chosen)
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


def _report_only(cfg: Config, args: argparse.Namespace) -> int:
    """`--report-only RUN_ID`: the database and the report again, from the kept journal."""
    kept = journal_path(cfg.paths.report_dir, args.report_only)
    result = finalize(cfg, args.report_only, read_journal(kept))
    _print_done(args.report_only, result, kept)
    return _not_written(result, args, args.report_only, kept, None) if result.errors else 0


def _prepare(cfg: Config, args: argparse.Namespace) -> list[tuple[str, ModelSpec]]:
    """Everything that can fail before an engine starts, in this order; the chosen models."""
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
    return chosen


def _open_run(cfg: Config, args: argparse.Namespace) -> tuple[str, list[Record]]:
    """The run ID and what its journal holds already: a resumed run's records, or none."""
    if not args.resume:
        return _new_run_id(cfg.paths.report_dir), []
    run_id = latest_run_id(cfg.paths.report_dir) if args.resume == "latest" else args.resume
    if run_id is None:
        raise ConfigError("no run to resume", path=cfg.paths.report_dir)
    return run_id, read_journal(journal_path(cfg.paths.report_dir, run_id))


def _run_on_ray(run: _Run, args: argparse.Namespace, chosen: list[tuple[str, ModelSpec]]) -> None:
    """`--ray`: the sweeps as Ray tasks (Ray is imported only then)."""
    run_on_ray(run, args.ray, chosen, load_device_kinds(args.setups), args.setups)


def _run_models(
    run: _Run, args: argparse.Namespace, chosen: list[tuple[str, ModelSpec]]
) -> str | None:
    """Every chosen model in turn; engines stopped and the journal closed whatever happens.
    Returns why the sweep stopped early (a full disk), or None."""
    cfg = run.cfg
    # the header states the rule each start follows (its own probes, `guardrail._probe_gpus`)
    gpu_index = cfg.probes.gpu_index if "gpu_index" in cfg.probes.model_fields_set else None
    probe_name, why = run_probe_rule(run.probe_prefer, run.nvml, gpu_index)
    if getattr(args, "ray", None):  # the rule above is the driver's; the nodes apply their own
        why = f"--ray: each node applies the rule on its own GPUs (the driver here: {why})"
    stopped: str | None = None  # why the sweep stopped early: a full disk
    try:
        if not any(isinstance(r, RunHeader) for r in run.done):
            names = list(dict.fromkeys(n for n, _ in chosen))
            run.record(_header(run, args, names, why, probe_name))
        log.info("run %s: %d model(s), probe: %s", run.run_id, len(chosen), why)
        if getattr(args, "ray", None):
            _run_on_ray(run, args, chosen)
        else:
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
        run.journal.close()
    return stopped
