"""Fault injection against the real runner: a workspace per test, our processes, four invariants.

Each test gets a `Workspace` (its own config.yaml, setups, free port, paths inside tmp_path, and a
`models/` folder holding a hard link to a tiny GGUF generated once per module). "Our" processes
are those whose command line names that `models/` folder, so llama.cpp servers of other tests
running at the same time are never counted (nor touched).

`Workspace.invariants()` checks what every fault must leave true: no row lost between the journal,
the report and the database; no duplicate (model, ctx) point; no process left (and no process
record in <state_dir>/procs); a valid database. Each test hands its figures to the `figures`
fixture; `pytest tests/faults` prints them as a table at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml
from filelock import FileLock
from openpyxl import load_workbook

from vramphysics import physics_db
from vramphysics.demo_models import write_tiny_gguf

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "runner.py"
FAKE_ENGINES = Path(__file__).resolve().parent / "fake_engines"
CONTEXTS = [512, 1024, 2048, 4096]
MODEL = "llamacpp:tiny.gguf"

_FIGURES = pytest.StashKey[list[dict[str, Any]]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults: fault injection against the real runner")
    config.stash[_FIGURES] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)


def cmdline_processes(marker: str) -> list[psutil.Process]:
    """Live (non-zombie) processes with `marker` in one of their arguments."""
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if any(marker in arg for arg in p.info["cmdline"] or ()):
            out.append(p)
    return out


def running(p: psutil.Process) -> bool:
    """Still running (a zombie waiting for its parent to reap it does not count)."""
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def ctx_of(p: psutil.Process) -> int | None:
    """The `--n_ctx` an engine process was started with (None when it has none or is gone)."""
    try:
        cmd = p.cmdline()
    except psutil.Error:
        return None
    return int(cmd[cmd.index("--n_ctx") + 1]) if "--n_ctx" in cmd else None


def answers(port: int) -> bool:
    """Does something answer llama.cpp's /v1/models on this port?"""
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def sheet_rows(sheet: Any) -> list[dict[str, Any]]:
    """The rows of a report sheet as {header: value}."""
    rows = list(sheet.iter_rows(values_only=True))
    if not rows:
        return []
    header = rows[0]
    return [dict(zip(header, r, strict=False)) for r in rows[1:] if any(v is not None for v in r)]


def link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def one_line_error(stderr: str) -> str:
    """The runner's error: one line `vramphysics: ...` besides log lines, and no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [
        line
        for line in stderr.splitlines()
        if line.strip() and not line.startswith(("DEBUG ", "INFO ", "WARNING "))
    ]
    assert len(lines) == 1 and lines[0].startswith("vramphysics: "), lines
    return lines[0]


class Workspace:
    """A folder with its own config.yaml and setups, where the real runner is driven."""

    def __init__(self, root: Path, gguf: Path) -> None:
        self.root = root
        self.models = root / "models"
        self.models.mkdir()
        link(gguf, self.models / "tiny.gguf")
        self.port = free_port()
        self.cfg: dict[str, Any] = {
            "engines": {
                "llamacpp": {
                    "port": self.port,
                    "model_dir": "models",
                    "start_timeout_s": 60,
                    "stop_timeout_s": 5,
                }
            },
            "sweep": {"contexts": CONTEXTS, "settle_s": 0.3, "min_points": 3},
            "bench": {
                "prompt_tokens": [32],
                "output_tokens": 8,
                "repetitions": 1,
                "warmup_requests": 0,
            },
            "probes": {"prefer": "process", "interval_ms": 50},
            "paths": {"calibration_dir": "cal", "report_dir": "rep", "state_dir": "state"},
        }
        self.setups: list[str] = [MODEL]
        self.runners: list[subprocess.Popen[str]] = []

    # -- files ---------------------------------------------------------------------------------
    def configure(self, **sections: Any) -> None:
        """Deep-merge sections into config.yaml (e.g. sweep={"settle_s": 1.0})."""
        self.cfg = _merge(self.cfg, sections)

    def new_port(self) -> None:
        """Another free port for the runners started from now on."""
        self.port = free_port()
        self.configure(engines={"llamacpp": {"port": self.port}})

    def path(self, key: str) -> Path:
        p = Path(self.cfg["paths"][key])
        return p if p.is_absolute() else self.root / p

    @property
    def cal(self) -> Path:
        return self.path("calibration_dir")

    @property
    def rep(self) -> Path:
        return self.path("report_dir")

    @property
    def state(self) -> Path:
        return self.path("state_dir")

    @property
    def db_path(self) -> Path:
        return physics_db.db_path(self.cal)

    def _write_inputs(self, name: str) -> tuple[Path, Path]:
        config = self.root / f"{name}.config.yaml"
        setups = self.root / f"{name}.setups.yaml"
        config.write_text(yaml.safe_dump(self.cfg, sort_keys=False), encoding="utf-8")
        setups.write_text(yaml.safe_dump({"faults": self.setups}), encoding="utf-8")
        return config, setups

    # -- the runner ------------------------------------------------------------------------------
    def argv(self, *args: str, name: str = "run") -> list[str]:
        config, setups = self._write_inputs(name)
        return [
            sys.executable,
            str(RUNNER),
            "--config",
            str(config),
            "--setups",
            str(setups),
            "--no-progress",
            *args,
        ]

    def run(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def start(self, *args: str, name: str = "run") -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            self.argv(*args, name=name),
            cwd=self.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.runners.append(proc)
        return proc

    def close(self) -> None:
        """Kill what a failed test left behind (only processes this workspace started)."""
        for proc in self.runners:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        for p in self.engines():
            try:
                p.kill()
            except psutil.Error:
                pass

    # -- helpers for the tests (no imports from conftest: pytest owns that module) ---------------
    wait_until = staticmethod(wait_until)
    one_line_error = staticmethod(one_line_error)
    ctx_of = staticmethod(ctx_of)
    running = staticmethod(running)

    def fake_engine(self, script: str, *args: str) -> list[str]:
        """`engines.llamacpp.command` running one of fake_engines/ (see each script's doc)."""
        return [sys.executable, str(FAKE_ENGINES / script), *args]

    def answers(self) -> bool:
        return answers(self.port)

    def answers_on(self, port: int) -> bool:
        return answers(port)

    def sheet(self, xlsx: Path, name: str) -> list[dict[str, Any]]:
        wb = load_workbook(xlsx, read_only=True)
        try:
            return sheet_rows(wb[name])
        finally:
            wb.close()

    # -- what happened ---------------------------------------------------------------------------
    def engines(self) -> list[psutil.Process]:
        """Our engine processes: their command line names this workspace's models/ folder."""
        return cmdline_processes(str(self.models))

    def engines_gone(self, timeout_s: float = 10) -> list[psutil.Process]:
        """Wait for our engines to go; returns those still running after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while (left := self.engines()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return left

    def engine_log(self, ctx: int) -> str:
        """The llama.cpp log of this workspace's start at `ctx` (empty until it exists)."""
        text = ""
        for path in self.state.glob(f"logs/*/llamacpp-*-ctx{ctx}.log"):
            text += path.read_text(encoding="utf-8", errors="replace")
        return text

    def proc_records(self) -> list[Path]:
        return sorted((self.state / "procs").glob("*.json"))

    def journals(self) -> list[Path]:
        return sorted(self.rep.glob("*.journal.jsonl")) if self.rep.is_dir() else []

    def journal(self) -> list[dict[str, Any]]:
        """Every record of every journal in the report folder (each line must be valid JSON)."""
        out = []
        for path in self.journals():
            out += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        return out

    def wait_journal(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout_s: float, what: str
    ) -> None:
        def ok() -> bool:
            try:
                return predicate(self.journal())
            except (json.JSONDecodeError, OSError):
                return False  # a line being written

        wait_until(ok, timeout_s, what)

    def reports(self) -> list[Path]:
        return sorted(self.rep.glob("*.xlsx")) if self.rep.is_dir() else []

    def db_entries(self) -> list[physics_db.PhysicsEntry]:
        return physics_db.load(self.db_path)

    # -- the invariants --------------------------------------------------------------------------
    def invariants(self, *, complete: bool = True, report: bool = True) -> dict[str, int]:
        """Assert: rows lost 0, duplicate points 0, processes left 0, database valid.

        `complete`: the run finished, so every context of the sweep of every available model
        has a point or a status row. `report`: a report must exist (else it may be absent).
        """
        records = self.journal()
        points = [(r["model"], r["ctx"]) for r in records if r["kind"] == "point"]
        benches = [(r["model"], r["ctx"], r["cell"]) for r in records if r["kind"] == "bench_cell"]
        duplicates = (len(points) - len(set(points))) + (len(benches) - len(set(benches)))
        failed = [r for r in records if r["kind"] == "status" and r["status"] == "FAILED"]

        lost: list[str] = []
        if complete:
            sweep = sorted(self.cfg["sweep"]["contexts"])
            for info in (r for r in records if r["kind"] == "model" and r["available"]):
                for ctx in sweep:
                    if not any(
                        r.get("model") == info["model"]
                        and r.get("ctx") == ctx
                        and r["kind"] in ("point", "status")
                        for r in records
                    ):
                        lost.append(f"{info['model']} ctx {ctx}: neither a point nor a status")
        if report:
            assert self.reports(), "no report written"
        for journal in self.journals():
            lost += _report_vs_journal(journal)

        entries = self.valid_db_entries()
        for entry in entries:
            mine = sorted(c for m, c in points if _key(m) == entry.model)
            if mine and [c for c, _ in entry.points] != mine:
                lost.append(f"database {entry.model}: {entry.points} vs journal {mine}")

        left = self.engines_gone()
        records_left = self.proc_records()
        figures = {
            "journal_rows": len(records),
            "points": len(set(points)),
            "failed_rows": len(failed),
            "rows_lost": len(lost),
            "duplicates": duplicates,
            "procs_left": len(left),
            "proc_records_left": len(records_left),
            "db_entries": len(entries),
        }
        assert not lost, lost
        assert duplicates == 0, points
        assert not left, [p.info for p in left]
        assert not records_left, records_left
        return figures

    def valid_db_entries(self) -> list[physics_db.PhysicsEntry]:
        """Assert the database is valid (absent, or read by plain YAML and by the product; its
        lock free; no temp file left) and return its entries."""
        if self.cal.is_dir():
            assert not list(self.cal.glob("physics.yaml.*.tmp")), "a temp file was left"
            with FileLock(str(self.db_path) + ".lock").acquire(timeout=0):  # Timeout if held
                pass
        if not self.db_path.exists():
            return []
        doc = yaml.safe_load(self.db_path.read_text(encoding="utf-8"))
        assert doc["schema_version"] == physics_db.SCHEMA_VERSION
        return physics_db.load(self.db_path)


def _key(model_id: str) -> str:
    return model_id.split("#", 1)[0]


def _report_vs_journal(journal: Path) -> list[str]:
    """What the run's report (`<run>.xlsx` beside `<run>.journal.jsonl`) lacks of its journal."""
    xlsx = journal.with_name(journal.name.removesuffix(".journal.jsonl") + ".xlsx")
    if not xlsx.exists():
        return []
    records = [json.loads(line) for line in journal.read_text(encoding="utf-8").splitlines()]
    points = {(r["model"], r["ctx"]) for r in records if r["kind"] == "point"}
    failed = [r for r in records if r["kind"] == "status" and r["status"] == "FAILED"]
    wb = load_workbook(xlsx, read_only=True)
    try:
        shown = {(r["Model"], r["Context (tokens)"]) for r in sheet_rows(wb["Points"])}
        n_failures = len(sheet_rows(wb["Failures"]))
    finally:
        wb.close()
    lost = [f"point {p} not in {xlsx.name}" for p in sorted(points - shown)]
    if n_failures != len(failed):
        lost.append(f"{len(failed)} FAILED rows in the journal, {n_failures} in {xlsx.name}")
    return lost


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random llama GGUF, written once per module."""
    return write_tiny_gguf(tmp_path_factory.mktemp("fault-models") / "tiny.gguf")


@pytest.fixture
def ws(tmp_path: Path, gguf: Path) -> Iterator[Workspace]:
    (tmp_path / "ws").mkdir()
    w = Workspace(tmp_path / "ws", gguf)
    try:
        yield w
    finally:
        w.close()


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """What a scenario measured; printed in the table at the end of the session."""
    row: dict[str, Any] = {}
    t0 = time.monotonic()
    yield row
    row["wall_s"] = round(time.monotonic() - t0, 1)
    row.setdefault("scenario", request.node.name)
    request.config.stash[_FIGURES].append(row)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    rows = config.stash.get(_FIGURES, [])
    if not rows:
        return
    terminalreporter.section("what survives what (fault figures)")
    for row in rows:
        name = row.pop("scenario")
        rest = " ".join(f"{k}={v}" for k, v in row.items())
        terminalreporter.write_line(f"{name}: {rest}")
