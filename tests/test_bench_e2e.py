"""The benchmark end to end on the real llama.cpp server (slow: real processes): the demo's
cells, and `bench --url` against a server started by hand."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from vramphysics.demo_models import write_tiny_gguf

pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make test`")

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [128, 1024]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("models") / "tiny.gguf")


def _config(ws: Path, **extra: object) -> Path:
    cfg = {
        "sweep": {"contexts": [512, 1024, 2048], "settle_s": 0.3},
        "bench": {"prompt_tokens": PROMPTS, "output_tokens": 16, "repetitions": 5},
        "paths": {"calibration_dir": "cal", "report_dir": "rep", "state_dir": "state"},
        **extra,
    }
    path = ws / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _records(ws: Path, kind: str) -> list[dict]:
    (path,) = (ws / "rep").glob("*.journal.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def _check_cells(cells: list[dict]) -> None:
    """Two prompt lengths, R >= 5, percentiles, prompt tokens within 2 % by the engine's count,
    exact output, TTFT p50 growing with the prompt."""
    assert [c["prompt_tokens_target"] for c in cells] == PROMPTS
    for c in cells:
        assert c["n_measured"] == 5 and c["n_failed"] == 0
        for figure in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
            s = c[figure]
            assert None not in (s["p50"], s["p90"], s["p99"]), figure
            assert s["min"] <= s["p50"] <= s["p90"] <= s["p99"] <= s["max"]
        assert abs(c["prompt_tokens"] / c["prompt_tokens_target"] - 1) <= 0.02
        assert c["output_tokens"] == 16
        assert c["token_source"], c
    assert cells[1]["ttft_ms"]["p50"] > cells[0]["ttft_ms"]["p50"]


@pytest.mark.slow
def test_a_run_benchmarks_a_grid_with_memory_during_the_requests(
    tmp_path: Path, model: Path
) -> None:
    engines = {"llamacpp": {"port": _port(), "model_dir": str(model.parent)}}
    cfg = _config(tmp_path, engines=engines)
    (tmp_path / "setups.yaml").write_text(yaml.safe_dump({"demo": [f"llamacpp:{model.name}"]}))
    argv = [sys.executable, str(ROOT / "runner.py"), "--config", str(cfg), "--setups",
            str(tmp_path / "setups.yaml"), "--no-progress"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    cells = _records(tmp_path, "bench_cell")
    _check_cells(cells)
    for c in cells:
        assert c["ctx"] == 2048 and c["cell"] == f"p{c['prompt_tokens_target']}-o16-c1"
        assert c["peak_bytes"] and c["steady_bytes"] and c["peak_bytes"] >= c["steady_bytes"]
        assert c["predicted_bytes"] and 0.5 < c["peak_bytes"] / c["predicted_bytes"] < 2
        assert c["load_s"] > 0 and c["cold_ttft_ms"] > 0
        assert c["engine_version"].startswith("llama-cpp-python")
    requests = _records(tmp_path, "request")
    phases = [r["phase"] for r in requests]
    assert phases.count("cold") == 1
    assert phases.count("warmup") == 2 * 2 and phases.count("measured") == 5 * 2
    assert all(r["ok"] and r["finish_reason"] == "length" for r in requests if r["phase"] != "cold")
    assert list((tmp_path / "rep").glob("*.bench.json"))


@pytest.fixture
def server(model: Path, tmp_path: Path) -> Iterator[str]:
    """llama-cpp-python's server, started by hand (not by vram-physics)."""
    port = _port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host",
            "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield url
        assert proc.poll() is None, "bench --url stopped a server it did not start"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _bench(ws: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "vramphysics", "bench", "--config", str(_config(ws)), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=ws)


@pytest.mark.slow
def test_bench_url_against_a_server_started_by_hand(
    tmp_path: Path, model: Path, server: str
) -> None:
    done = _bench(
        tmp_path, "--url", server, "--engine", "llamacpp", "--model", str(model), "--ctx", "2048",
        "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    _check_cells(out["cells"])
    # the same columns as a run's cells and its JSON export
    (export,) = (tmp_path / "rep").glob("*.bench.json")
    exported = json.loads(export.read_text())
    assert set(exported["cells"][0]) == set(out["cells"][0])
    assert {c["cell"] for c in _records(tmp_path, "bench_cell")} == {"p128-o16-c1", "p1024-o16-c1"}


@pytest.mark.slow
def test_bench_url_unreachable_or_wrong_model_is_one_line_and_exit_2(
    tmp_path: Path, model: Path, server: str
) -> None:
    dead = f"http://127.0.0.1:{_port()}"
    for args, words in (
        (["--url", dead, "--model", str(model)], dead),
        (["--url", server, "--model", "no-such-model"], "no-such-model"),
    ):
        done = _bench(tmp_path, "--engine", "llamacpp", *args)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("vramphysics: error:"), done.stderr
        assert words in lines[0]
