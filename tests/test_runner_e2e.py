"""`runner.py` end to end against the real llama.cpp server (slow: real processes)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from openpyxl import load_workbook

from vramphysics.demo_models import TinyModelShape, write_tiny_gguf

pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make test`")

ROOT = Path(__file__).resolve().parents[1]
CONTEXTS = [512, 1024, 2048, 4096, 8192]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("models")
    write_tiny_gguf(d / "tiny.gguf")
    return d


def _workspace(tmp: Path, models: Path, setups: dict[str, list[str]], **sweep: object) -> Path:
    cfg = {
        "engines": {"llamacpp": {"port": _port(), "model_dir": str(models), "start_timeout_s": 60}},
        "sweep": {"contexts": CONTEXTS, "settle_s": 0.5, **sweep},
        "bench": {
            "prompt_tokens": [32, 256],
            "output_tokens": 16,
            "repetitions": 5,
            "warmup_requests": 1,
        },
        "paths": {"calibration_dir": "cal", "report_dir": "rep", "state_dir": "state"},
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg))
    (tmp / "setups.yaml").write_text(yaml.safe_dump(setups))
    return tmp


def _run(ws: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "runner.py"),
            "--config",
            str(ws / "config.yaml"),
            "--setups",
            str(ws / "setups.yaml"),
            "--no-progress",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ws,
        check=False,
    )


def _journal(ws: Path) -> list[dict]:
    (path,) = (ws / "rep").glob("*.journal.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def _our_engines(models: Path) -> list[psutil.Process]:
    """llama.cpp servers of this test module's model (other tests may run their own)."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "llama_cpp.server" in cmd and str(models / "tiny.gguf") in cmd:
            out.append(p)
    return out


@pytest.mark.slow
def test_demo_calibrates_within_theory_and_reports(tmp_path: Path, models: Path) -> None:
    ws = _workspace(tmp_path, models, {"demo": ["llamacpp:tiny.gguf", "llamacpp:absent.gguf"]})
    result = _run(ws)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr

    db = yaml.safe_load((ws / "cal" / "physics.yaml").read_text())
    (entry,) = db["entries"]
    assert (
        entry["engine"] == "llamacpp" and entry["probe"] == "process" and entry["device"] == "cpu"
    )
    assert entry["n_points"] == len(CONTEXTS) >= 4
    assert entry["r2"] >= 0.98
    theory = entry["theory"]["kv_bytes_per_token"]
    assert theory == TinyModelShape().kv_bytes_per_token() == 4096
    assert abs(entry["cost_per_token_bytes"] / theory - 1) < 0.25
    assert entry["engine_version"].startswith("llama-cpp-python")

    statuses = {
        r["model"]: r["status"] for r in _journal(ws) if r["kind"] == "status" and r["ctx"] is None
    }
    assert statuses == {"llamacpp:tiny.gguf": "OK", "llamacpp:absent.gguf": "MISSING"}

    (xlsx,) = (ws / "rep").glob("*.xlsx")
    wb = load_workbook(xlsx)
    assert {"Summary", "Calibration", "Points", "Benchmarks"} <= set(wb.sheetnames)
    bench = wb["Benchmarks"]
    headers = [c.value for c in bench[1]]
    row = {h: c.value for h, c in zip(headers, bench[2], strict=True)}
    assert row["Model"] == "llamacpp:tiny.gguf"
    assert isinstance(row["TTFT p50 (ms)"], float) and row["TTFT p50 (ms)"] > 0
    assert row["Output (tokens)"] == 16
    cal = wb["Calibration"]
    status_col = [c.value for c in cal[1]].index("Status")
    missing = [r for r in cal.iter_rows(min_row=2) if r[status_col].value == "MISSING"]
    assert missing and missing[0][0].fill.start_color.rgb.endswith("FFF2CC")
    assert not _our_engines(models)


@pytest.mark.slow
def test_sigint_mid_sweep_stops_quickly_and_leaves_no_engine(tmp_path: Path, models: Path) -> None:
    ws = _workspace(tmp_path, models, {"demo": ["llamacpp:tiny.gguf"]}, settle_s=3.0)
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "runner.py"),
            "--config",
            str(ws / "config.yaml"),
            "--setups",
            str(ws / "setups.yaml"),
            "--no-progress",
        ],
        cwd=ws,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not _our_engines(models) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _our_engines(models), "the engine never started"
    time.sleep(1.0)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 10
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    time.sleep(0.5)
    assert not _our_engines(models)
    assert list((ws / "rep").glob("*.xlsx")), "the report of what finished is written"
    assert not list((ws / "state" / "procs").glob("*.json"))


@pytest.mark.slow
def test_resume_after_sigkill_finishes_without_duplicates(tmp_path: Path, models: Path) -> None:
    ws = _workspace(tmp_path, models, {"demo": ["llamacpp:tiny.gguf"]})
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "runner.py"),
            "--config",
            str(ws / "config.yaml"),
            "--setups",
            str(ws / "setups.yaml"),
            "--no-progress",
        ],
        cwd=ws,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 90
    journal = None
    while time.monotonic() < deadline:
        found = list((ws / "rep").glob("*.journal.jsonl"))
        if (
            found
            and sum('"kind": "point"' in line for line in found[0].read_text().splitlines()) >= 2
        ):
            journal = found[0]
            break
        time.sleep(0.1)
    assert journal is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    result = _run(ws, "--resume", "latest")
    assert result.returncode == 0, result.stderr
    points = [(r["model"], r["ctx"]) for r in _journal(ws) if r["kind"] == "point"]
    assert sorted(points) == sorted(set(points)), "no duplicate point"
    assert {c for _m, c in points} == set(CONTEXTS)
    (entry,) = yaml.safe_load((ws / "cal" / "physics.yaml").read_text())["entries"]
    assert [c for c, _ in entry["points"]] == CONTEXTS
    time.sleep(0.5)
    assert not _our_engines(models), "the engine the killed runner orphaned was stopped"


@pytest.mark.slow
def test_guardrail_warns_and_skips_a_context_that_cannot_fit(tmp_path: Path, models: Path) -> None:
    ws = _workspace(
        tmp_path, models, {"demo": ["llamacpp:tiny.gguf"]}, contexts=[512, 1024, 2048, 8192]
    )
    cfg = yaml.safe_load((ws / "config.yaml").read_text())
    cfg["guardrail"] = {"assume_free_gib": 0.03, "skip_if_no_fit": True}
    (ws / "config.yaml").write_text(yaml.safe_dump(cfg))
    result = _run(ws)
    assert result.returncode == 0, result.stderr
    records = _journal(ws)
    (info,) = [r for r in records if r["kind"] == "model"]
    weights = info["theory"]["weights_bytes"]
    (warning,) = [r for r in records if r["kind"] == "warning"]
    free = int(0.03 * 2**30)
    assert warning["ctx"] == 8192 and warning["free_bytes"] == free
    assert warning["predicted_bytes"] == weights + 8192 * 4096  # theory: no calibration yet
    assert warning["max_context"] == (free - weights) // 4096
    assert "guardrail" in result.stderr
    assert sorted(r["ctx"] for r in records if r["kind"] == "point") == [512, 1024, 2048]
    skipped = [r for r in records if r["kind"] == "status" and r["status"] == "SKIPPED"]
    assert [r["ctx"] for r in skipped] == [8192]
    (xlsx,) = (ws / "rep").glob("*.xlsx")
    cal = load_workbook(xlsx)["Calibration"]
    headers = [c.value for c in cal[1]]
    assert "guardrail" in cal.cell(row=2, column=headers.index("Warnings") + 1).value
