"""The end of a run: the database and the report from the journal, a full disk said in one line,
and the command that rebuilds what could not be written."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from vramphysics import physics_db
from vramphysics.config import Config
from vramphysics.errors import ConfigError
from vramphysics.outcome import Outcome, build_outcome, model_key
from vramphysics.physics_db import PhysicsEntry
from vramphysics.provenance import Provenance
from vramphysics.records import Record, RunHeader
from vramphysics.report import ReportFiles, run_end_text, write_reports

log = logging.getLogger("vramphysics.runner")
# the run finished (or stopped on a full disk) but the database or the report was not written;
# the journal holds everything: `--report-only RUN_ID` (or `--resume RUN_ID`) once there is room
EXIT_NOT_WRITTEN = 4
_FULL = (errno.ENOSPC, errno.EDQUOT)
_TMP_GRACE_S = 1.0  # a process record is written in microseconds: an older temp file is stale


def _check_writable(folder: Path, what: str) -> None:
    probe = folder / f".write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            probe.write_text("ok", encoding="utf-8")
        finally:  # created but not written (a full disk): not left behind
            probe.unlink(missing_ok=True)
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


def run_entries(outcome: Outcome, run_id: str) -> tuple[PhysicsEntry, ...]:
    """The run's database entries, each with its provenance: the host its points were measured
    on (a Ray node; older points: the run header's host), the tool version from the run header,
    this run's ID (the engine version and driver are in the entry already)."""
    header: RunHeader | None = outcome.header
    out: list[PhysicsEntry] = []
    for entry in outcome.entries:
        hosts = {
            p.host
            for p in outcome.points
            if p.host and model_key(p.model) == entry.model and p.device == entry.device
        }
        host = hosts.pop() if len(hosts) == 1 else (header.host if header else None)
        provenance = Provenance(
            host=host,
            run_id=run_id,
            tool_version=header.tool_version if header else None,
        )
        out.extend(physics_db.with_provenance((entry,), provenance))
    return tuple(out)


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
    new = run_entries(outcome, run_id)
    try:
        entries = physics_db.write_entries(db, new) if new else physics_db.load(db)
    except OSError as exc:
        db_error = _write_failure(exc, db.parent, "calibration")
        entries = physics_db.merge(physics_db.load(db), new)
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
        print(
            run_end_text(
                f.answers,
                xlsx=f.xlsx,
                html=f.html,
                database=done.db,
                journal=journal,
                bench=f.bench,
            )
        )
        return
    print(f"physics database: {done.db}" + (" (NOT written)" if done.db_error else ""))
    print(f"report: {done.report}" + (" (NOT written)" if done.report_error else ""))
    print(f"journal: {journal}")
