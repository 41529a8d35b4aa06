"""A full disk: the report folder, the calibration folder, or the journal itself.

The runner is driven in process on a journal whose model is already finished (so no engine
starts and these tests are fast): a write that fails with ENOSPC must cost only what it could not
write, say in one line which folder is full, keep the journal, and name the command that rebuilds
the rest; that command must then work. One test uses a real full filesystem (a 64 KiB tmpfs) where
mounting is allowed (root), and is skipped elsewhere.
"""

from __future__ import annotations

import errno
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from vramphysics import physics_db
from vramphysics.cli import main
from vramphysics.journal import Journal, journal_path
from vramphysics.records import CalibrationPoint, ModelInfo, RunHeader, StatusRow
from vramphysics.runner import EXIT_NOT_WRITTEN, remove_stale_proc_temps

pytestmark = [pytest.mark.faults]

RUNNER = Path(__file__).resolve().parents[2] / "runner.py"
RUN_ID = "20250101-000000"
MODEL = "llamacpp:tiny.gguf"


def _header() -> RunHeader:
    return RunHeader(
        run_id=RUN_ID,
        started_at="2025-01-01T00:00:00+00:00",
        host="h",
        platform="p",
        python="3",
        git_commit="x",
        tool_version="0",
        config_path="c",
        setups_path="s",
        setups=["disk"],
        probe="process",
        probe_reason="test",
        devices=[{"name": "cpu"}],
        driver=None,
        sweep_contexts=[512, 1024, 2048],
        argv=[],
    )


def _point(ctx: int) -> CalibrationPoint:
    return CalibrationPoint(
        model=MODEL,
        engine="llamacpp",
        ctx=ctx,
        probe="process",
        device="cpu",
        measured_bytes=100_000_000 + ctx * 4096,
        peak_bytes=100_000_000 + ctx * 4096,
        baseline_bytes=0,
        n_samples=10,
        ready_s=1.0,
        engine_version="test",
    )


class Ws:
    """A config, a setups file and the journal of a finished run."""

    def __init__(self, root: Path, report_dir: Path | None = None) -> None:
        self.root = root
        self.rep = report_dir or root / "rep"
        self.cal = root / "cal"
        self.state = root / "state"
        (root / "models").mkdir()  # empty: the journal's model is finished, nothing starts
        self.config = root / "disk.config.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "engines": {"llamacpp": {"model_dir": str(root / "models")}},
                    "sweep": {"contexts": [512, 1024, 2048], "min_points": 3},
                    "probes": {"prefer": "process"},
                    "paths": {
                        "calibration_dir": str(self.cal),
                        "report_dir": str(self.rep),
                        "state_dir": str(self.state),
                    },
                }
            )
        )
        self.setups = root / "disk.setups.yaml"
        self.setups.write_text(yaml.safe_dump({"disk": [MODEL]}))
        self.journal = journal_path(self.rep, RUN_ID)

    def write_journal(self) -> bytes:
        journal = Journal(self.journal)
        journal.append(_header())
        journal.append(ModelInfo(MODEL, "disk", "llamacpp", "test", True, "x", None, {}))
        for ctx in (512, 1024, 2048):
            journal.append(_point(ctx))
        journal.append(StatusRow(model=MODEL, engine="llamacpp", status="OK", reason="3 points"))
        journal.close()
        return self.journal.read_bytes()

    def run(self, *args: str) -> int:
        return main(["run", "--config", str(self.config), "--setups", str(self.setups), *args])


@pytest.fixture
def ws(tmp_path: Path) -> Ws:
    return Ws(tmp_path)


def _enospc(*_a: Any, **_k: Any) -> Any:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _one_line(err: str) -> str:
    assert "Traceback" not in err, err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("vramphysics:")]
    return line


def _rebuild_argv(line: str) -> list[str]:
    """The arguments of the command the line names (after `python -m vramphysics`)."""
    command = shlex.split(line.split("once there is room: ", 1)[1])
    assert command[:3] == ["python", "-m", "vramphysics"], command
    return command[3:]


def test_report_folder_full_keeps_journal_writes_database_and_names_the_rebuild(
    ws: Ws, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    before = ws.write_journal()
    monkeypatch.setattr("vramphysics.report.xlsx.write_atomically", _enospc)

    code = ws.run("--resume", RUN_ID, "--no-progress")

    out, err = capsys.readouterr()
    line = _one_line(err)
    assert code == EXIT_NOT_WRITTEN == 4
    assert f"the report folder {ws.rep} is full (No space left on device)" in line
    assert "the report not written" in line and "the database entry" not in line
    assert f"journal kept at {ws.journal}" in line
    assert "report:" in out and "(NOT written)" in out
    (entry,) = physics_db.load(physics_db.db_path(ws.cal))  # the database went first
    assert entry.model == MODEL and entry.n_points == 3
    assert ws.journal.read_bytes() == before
    assert not list(ws.rep.glob("*.xlsx")) and not list(ws.rep.glob("*.tmp"))

    monkeypatch.undo()  # room again: the command the line names rebuilds the rest
    argv = _rebuild_argv(line)
    assert argv == ["run", "--report-only", RUN_ID, "--config", str(ws.config)]
    assert main(argv) == 0
    assert (ws.rep / f"{RUN_ID}.xlsx").stat().st_size > 0
    assert ws.journal.read_bytes() == before


def test_calibration_folder_full_still_writes_the_report(
    ws: Ws, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ws.write_journal()
    monkeypatch.setattr("vramphysics.physics_db._atomic_write", _enospc)

    code = ws.run("--report-only", RUN_ID)

    line = _one_line(capsys.readouterr().err)
    assert code == 4
    assert f"the calibration folder {ws.cal} is full" in line
    assert "the database entry not written" in line and "--report-only" in line
    assert (ws.rep / f"{RUN_ID}.xlsx").is_file()
    assert physics_db.load(physics_db.db_path(ws.cal)) == []


def test_other_write_error_says_what_failed(
    ws: Ws, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ws.write_journal()

    def denied(*_a: Any, **_k: Any) -> Any:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr("vramphysics.report.xlsx.write_atomically", denied)
    assert ws.run("--report-only", RUN_ID) == 4
    line = _one_line(capsys.readouterr().err)
    assert f"could not write the report in {ws.rep}: Input/output error" in line


def test_journal_write_failing_mid_run_stops_with_the_resume_command(
    ws: Ws, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The disk fills during the sweep: the journal append raises; the run stops cleanly."""
    real_append = Journal.append
    calls = {"n": 0}

    def append(self: Journal, record: Any) -> None:
        calls["n"] += 1
        if calls["n"] > 1:  # the header lands, the next record finds the disk full
            _enospc()
        real_append(self, record)

    monkeypatch.setattr(Journal, "append", append)
    code = ws.run("--no-progress")

    line = _one_line(capsys.readouterr().err)
    assert code == 4
    assert "no space left on device" in line and "the run stopped early" in line
    (journal,) = ws.rep.glob("*.journal.jsonl")
    run_id = journal.name.removesuffix(".journal.jsonl")
    argv = _rebuild_argv(line)
    assert argv[:3] == ["run", "--resume", run_id]
    assert argv[3:] == ["--config", str(ws.config), "--setups", str(ws.setups)]


def test_stale_empty_proc_temp_files_are_removed(tmp_path: Path) -> None:
    procs = tmp_path / "procs"
    procs.mkdir()
    old, fresh, full = procs / "101.tmp", procs / "102.tmp", procs / "103.tmp"
    old.touch()
    fresh.touch()
    full.write_text("{}")
    past = time.time() - 60
    os.utime(old, (past, past))
    os.utime(full, (past, past))
    record = procs / "104.json"
    record.write_text("{}")

    assert remove_stale_proc_temps(tmp_path) == [old]
    # a fresh one may be another runner's write in flight; a record is never touched
    assert not old.exists() and fresh.exists() and full.exists() and record.exists()


def test_runner_start_removes_a_stale_proc_temp_file(
    ws: Ws, capsys: pytest.CaptureFixture[str]
) -> None:
    ws.write_journal()
    (ws.state / "procs").mkdir(parents=True)
    stale = ws.state / "procs" / "4242.tmp"
    stale.touch()
    os.utime(stale, (time.time() - 60, time.time() - 60))
    assert ws.run("--resume", RUN_ID, "--no-progress") == 0
    assert not stale.exists()
    assert "report:" in capsys.readouterr().out


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (root only); skipped where mounting is not allowed."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as f:  # unbuffered: close has nothing left to flush
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_real_full_report_filesystem(tmp_path: Path, tiny_fs: Path) -> None:
    """The real runner, a real full filesystem: one line on stderr and no traceback at all
    (not even the one zipfile prints when it is collected with its file half written)."""
    (tmp_path / "ws").mkdir()
    w = Ws(tmp_path / "ws", report_dir=tiny_fs)
    before = w.write_journal()
    filler = _fill(tiny_fs)

    def runner(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args], capture_output=True, text=True, timeout=120, check=False
        )

    result = runner(str(RUNNER), "--report-only", RUN_ID, "--config", str(w.config))

    assert result.returncode == 4, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr  # exactly one line
    line = _one_line(result.stderr)
    assert f"the report folder {tiny_fs} is full (No space left on device)" in line
    assert len(physics_db.load(physics_db.db_path(w.cal))) == 1
    assert w.journal.read_bytes() == before
    assert not list(tiny_fs.glob("*.xlsx")) and not list(tiny_fs.glob("*.tmp"))

    filler.unlink()
    command = shlex.split(line.split("once there is room: ", 1)[1])
    assert command[:2] == ["python", str(RUNNER)], command
    again = runner(*command[1:])
    assert again.returncode == 0, again.stderr
    assert (tiny_fs / f"{RUN_ID}.xlsx").stat().st_size > 0
