"""`runner.py --ray` against a real two-node Ray cluster on this machine (slow: real Ray nodes and
real llama.cpp servers).

The head advertises `gpu:kind-a`, the second node `gpu:kind-b`: two stand-ins for two GPU kinds.
`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` keeps every node on 127.0.0.1 (see ENGINES.md).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from vramphysics.demo_models import write_tiny_gguf

pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make test`")
pytest.importorskip("ray", reason="Ray is the `ray` extra (make test installs it)")

ROOT = Path(__file__).resolve().parents[1]
CONTEXTS = [512, 1024, 2048, 4096]
_NODE = {"num_cpus": 1, "object_store_memory": 100 * 2**20}


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={**_NODE, "resources": {"gpu:kind-a": 1}})
    c.add_node(**_NODE, resources={"gpu:kind-b": 1})
    c.wait_for_nodes()
    try:
        yield c
    finally:
        c.shutdown()


TINY, TINY2 = "llamacpp:tiny.gguf", "llamacpp:tiny2.gguf"
DEMO = {"demo": {"devices": ["kind-a", "kind-b"], "models": [TINY]}}


def _workspace(tmp: Path, setups: dict[str, Any] = DEMO, **sweep: object) -> Path:
    models = tmp / "models"
    models.mkdir()
    write_tiny_gguf(models / "tiny.gguf")
    write_tiny_gguf(models / "tiny2.gguf")
    cfg = {
        "engines": {"llamacpp": {"port": "auto", "model_dir": str(models), "start_timeout_s": 90}},
        "sweep": {"contexts": CONTEXTS, "settle_s": 0.3, **sweep},
        "bench": {
            "prompt_tokens": [32],
            "output_tokens": 8,
            "repetitions": 2,
            "warmup_requests": 0,
        },
        "paths": {"calibration_dir": "cal", "report_dir": "rep", "state_dir": "state"},
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg))
    (tmp / "setups.yaml").write_text(yaml.safe_dump(setups))
    return tmp


def _cmd(ws: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "runner.py"),
        "--config",
        str(ws / "config.yaml"),
        "--setups",
        str(ws / "setups.yaml"),
        "--no-progress",
        *args,
    ]


def _run(ws: Path, *args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _cmd(ws, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ws,
        env=os.environ.copy(),
        check=False,
    )


def _journal(ws: Path) -> list[dict[str, Any]]:
    (path,) = (ws / "rep").glob("*.journal.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _db(ws: Path) -> list[dict[str, Any]]:
    return list(yaml.safe_load((ws / "cal" / "physics.yaml").read_text())["entries"])


def _points(journal: list[dict[str, Any]], device: str, model: str = TINY) -> list[int]:
    return sorted(
        r["ctx"]
        for r in journal
        if r["kind"] == "point" and r["device"] == device and r["model"] == model
    )


def _our_engines(ws: Path) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "llama_cpp.server" in cmd and any(str(ws / "models") in c for c in cmd):
            out.append(p)
    return out


@pytest.mark.slow
def test_demo_on_two_kinds_gives_one_entry_per_kind(tmp_path: Path, cluster: Any) -> None:
    ws = _workspace(tmp_path)
    result = _run(ws, "--ray", cluster.address)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr

    journal = _journal(ws)
    assert journal[0]["kind"] == "run" and journal[0]["probe_reason"].startswith("--ray: ")
    assert _points(journal, "kind-a") == CONTEXTS
    assert _points(journal, "kind-b") == CONTEXTS
    reasons = {r["probe_reason"] for r in journal if r["kind"] == "point"}
    assert all("advertised kind" in r and "no NVML GPU" in r for r in reasons)

    entries = _db(ws)
    assert sorted(e["device"] for e in entries) == ["kind-a", "kind-b"]
    run_id = journal[0]["run_id"]
    for e in entries:
        assert e["model"] == "llamacpp:tiny.gguf" and e["n_points"] == len(CONTEXTS)
        assert e["engine_version"].startswith("llama-cpp-python")
        # provenance: the run; the host is the driver's (both nodes are this machine here)
        assert e["provenance"]["run_id"] == run_id
        assert e["provenance"]["host"] == socket.gethostname()
    cells = {r["device"] for r in journal if r["kind"] == "bench_cell"}
    assert cells == {"kind-a", "kind-b"}

    from openpyxl import load_workbook

    (xlsx,) = (ws / "rep").glob("*.xlsx")
    cal = load_workbook(xlsx)["Calibration"]
    cells = {str(c.value) for row in cal.iter_rows(min_row=2) for c in row}
    assert {"kind-a", "kind-b"} <= cells  # the report lists both
    assert not _our_engines(ws)


def _wait_for_point(ws: Path, device: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        paths = list((ws / "rep").glob("*.journal.jsonl"))
        if paths and _points(_journal(ws), device):
            return
        time.sleep(0.2)
    raise AssertionError(f"no point of {device} within {timeout_s} s")


@pytest.mark.slow
def test_lost_node_gives_node_lost_rows_and_resume_completes(tmp_path: Path, cluster: Any) -> None:
    # kind-b has two models: one runs when its node dies, the other waits for that node
    setups = {
        "a": {"devices": ["kind-a"], "models": [TINY]},
        "b": {"devices": ["kind-b"], "models": [TINY, TINY2]},
    }
    ws = _workspace(tmp_path, setups, settle_s=1.5)
    proc = subprocess.Popen(
        _cmd(ws, "--ray", cluster.address),
        cwd=ws,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_point(ws, "kind-b", timeout_s=180)
        node_b = next(iter(cluster.worker_nodes))
        cluster.remove_node(node_b)  # the second node dies mid-sweep
        _out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]

    journal = _journal(ws)
    assert _points(journal, "kind-a") == CONTEXTS  # the head's rows intact
    lost = [r for r in journal if r["kind"] == "status" and r["failure_kind"] == "node_lost"]
    assert all(r["status"] == "FAILED" and "kind-b" in r["reason"] for r in lost)
    done_b = {m: _points(journal, "kind-b", m) for m in (TINY, TINY2)}
    running, waiting = sorted(done_b, key=lambda m: -len(done_b[m]))
    assert 0 < len(done_b[running]) < len(CONTEXTS) and done_b[waiting] == []
    for model in (running, waiting):
        lost_ctx = {r["ctx"] for r in lost if r["model"] == model}
        assert lost_ctx == set(CONTEXTS) - set(done_b[model]), model
    assert all("any more" in r["reason"] for r in lost if r["model"] == waiting)
    # kind-b has an entry only once it has min_points (3) points
    expected = ["kind-a"] + (["kind-b"] if len(done_b[running]) >= 3 else [])
    assert sorted(e["device"] for e in _db(ws)) == expected

    cluster.add_node(**_NODE, resources={"gpu:kind-b": 1})
    cluster.wait_for_nodes()
    result = _run(ws, "--ray", cluster.address, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    journal = _journal(ws)
    assert _points(journal, "kind-b", TINY) == _points(journal, "kind-b", TINY2) == CONTEXTS
    assert _points(journal, "kind-a") == CONTEXTS  # nothing measured twice
    entries = sorted((e["model"], e["device"]) for e in _db(ws))
    assert entries == [(TINY, "kind-a"), (TINY, "kind-b"), (TINY2, "kind-b")]
    assert not _our_engines(ws)


@pytest.mark.slow
def test_sigint_mid_sweep_stops_the_nodes_and_keeps_the_journal(
    tmp_path: Path, cluster: Any
) -> None:
    ws = _workspace(tmp_path, settle_s=1.5)
    proc = subprocess.Popen(
        _cmd(ws, "--ray", cluster.address),
        cwd=ws,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_point(ws, "kind-a", timeout_s=180)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGINT, err[-3000:]
    assert "internal error" not in err and "Traceback" not in err
    assert _points(_journal(ws), "kind-a")  # what arrived is kept
    assert list((ws / "rep").glob("*.xlsx"))  # and reported
    deadline = time.monotonic() + 30
    while _our_engines(ws) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _our_engines(ws)
