"""The Ollama engine against `tests/doubles/ollama_server.py`, a double of Ollama's HTTP API whose
loaded models are real llama.cpp servers (children of the double, like Ollama's runners).

Fast tests exercise the pure parts (name matching, timings, log breakdown, launch environment);
`slow` tests start the double as a subprocess and drive the engine (and the whole runner) through
its API.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import httpx
import psutil
import pytest
import yaml
from pydantic import ValidationError

from vramphysics.bench import request_figures
from vramphysics.demo_models import TinyModelShape, write_tiny_gguf
from vramphysics.engines.llamacpp.log import components_from_log
from vramphysics.engines.ollama import (
    OllamaEngine,
    engine_timings,
    normalize_model_name,
)
from vramphysics.engines.ollama.config import OllamaConfig
from vramphysics.errors import EngineError
from vramphysics.probes import ProcessTreeProbe
from vramphysics.setups import ModelSpec, parse_model_id

SERVER = Path(__file__).resolve().parents[1] / "doubles" / "ollama_server.py"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ollama"
SHAPE = TinyModelShape()
KV_F16 = SHAPE.kv_bytes_per_token()  # 2 * 8 layers * 2 KV heads * 64 * 2 bytes = 4096
KV_Q8_0 = 2 * 8 * 2 * 64 * 34 / 32  # q8_0: blocks of 32 values in 34 bytes = 2176 per token


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/version", timeout=1.0).status_code == 200
    except httpx.TransportError:
        return False


@dataclass
class Double:
    """One running test double, started (and stopped) by the test."""

    proc: subprocess.Popen[bytes]
    port: int
    store: Path
    library: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def post(self, path: str, body: dict[str, Any]) -> Any:
        r = httpx.post(f"{self.url}{path}", json=body, timeout=60.0)
        r.raise_for_status()
        return r.json()

    def get(self, path: str) -> Any:
        r = httpx.get(f"{self.url}{path}", timeout=10.0)
        r.raise_for_status()
        return r.json()

    def pull(self, name: str) -> None:
        assert self.post("/api/pull", {"model": name, "stream": False}) == {"status": "success"}

    def names(self) -> list[str]:
        return [m["name"] for m in self.get("/api/tags")["models"]]

    def reset(self) -> None:
        self.post("/_test/reset", {})
        for name in self.names():
            httpx.request("DELETE", f"{self.url}/api/delete", json={"model": name}, timeout=10.0)


def start_double(folder: Path, library: Path, env: dict[str, str] | None = None) -> Double:
    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    log_path = folder / "double.log"
    argv = [sys.executable, str(SERVER), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--store", str(folder / "store"), "--library", str(library)]
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    double = Double(proc, port, folder / "store", library, log_path)
    deadline = time.monotonic() + 60
    while not _answers(double.url):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_double(double)
            pytest.fail(f"the Ollama double did not start:\n{log_path.read_text()[-2000:]}")
        time.sleep(0.1)
    return double


def stop_double(double: Double) -> None:
    """SIGTERM the double's process group (it and its runners), SIGKILL what is left."""
    if double.proc.poll() is None:
        os.killpg(double.proc.pid, signal.SIGTERM)
        try:
            double.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(double.proc.pid, signal.SIGKILL)
            double.proc.wait(timeout=5)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the double can pull: tiny:latest, tiny:7b-instruct and shortctx (trained on 1024)."""
    lib = tmp_path_factory.mktemp("ollama-library")
    write_tiny_gguf(lib / "tiny" / "latest.gguf", SHAPE)
    shutil.copy(lib / "tiny" / "latest.gguf", lib / "tiny" / "7b-instruct.gguf")
    write_tiny_gguf(lib / "shortctx" / "latest.gguf", TinyModelShape(n_ctx_train=1024), seed=1)
    return lib


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, library: Path) -> Iterator[Double]:
    """A double that no engine started (like an `ollama serve` already running)."""
    double = start_double(tmp_path_factory.mktemp("ollama-shared"), library)
    yield double
    stop_double(double)


@pytest.fixture
def double(shared: Double) -> Double:
    """The shared double with an empty store, no faults, nothing loaded."""
    shared.reset()
    return shared


def make_engine(tmp_path: Path, port: int, **overrides: Any) -> OllamaEngine:
    settings: dict[str, Any] = {
        "port": port,
        "start_server": False,
        "start_timeout_s": 60,
        "request_timeout_s": 60,
        "unload_timeout_s": 20,
        "stop_timeout_s": 10,
    }
    settings.update(overrides)
    return OllamaEngine(
        OllamaConfig(**settings), state_dir=tmp_path / "state", log_dir=tmp_path / "logs"
    )


def owned_engine(tmp_path: Path, library: Path, **overrides: Any) -> OllamaEngine:
    """An engine that starts the double itself through `command`, as it starts `ollama serve`."""
    command = [
        sys.executable,
        str(SERVER),
        "--store",
        str(tmp_path / "store"),
        "--library",
        str(library),
    ]
    return make_engine(tmp_path, _free_port(), start_server=True, command=command, **overrides)


def spec(model_id: str) -> ModelSpec:
    return parse_model_id(model_id)


# --------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("qwen2.5", "qwen2.5:latest", True),
        ("Qwen2.5:Latest", "qwen2.5", True),
        ("qwen2.5:7b", "qwen2.5:7b-instruct", False),
        ("qwen2.5:7b", "qwen2.5", False),
        ("qwen2", "qwen2.5", False),
        ("user/model", "user/model:latest", True),
        ("hf.co/org/repo:Q4_K_M", "hf.co/org/repo:q4_k_m", True),
        ("localhost:5000/model", "localhost:5000/model:latest", True),
    ],
)
def test_model_names_match_exactly_with_latest_as_default_tag(a: str, b: str, same: bool) -> None:
    assert (normalize_model_name(a) == normalize_model_name(b)) is same


def test_engine_timings_divide_counts_by_nanosecond_durations() -> None:
    final = {
        "eval_count": 282,
        "eval_duration": 4_535_599_000,
        "prompt_eval_count": 26,
        "prompt_eval_duration": 342_546_000,
        "load_duration": 1_334_875,
    }
    t = engine_timings(final)
    assert t["decode_tokens_per_s"] == pytest.approx(282 / 4.535599)
    assert t["prefill_tokens_per_s"] == pytest.approx(26 / 0.342546)
    assert t["load_s"] == pytest.approx(0.001334875)
    assert engine_timings({"eval_count": 3, "eval_duration": 0}) == {}


def test_gpu_log_breakdown_counts_only_vram_buffers() -> None:
    mem = components_from_log((FIXTURES / "gpu_offload.log").read_text(), "ollama-log")
    assert mem is not None
    mib = 2**20
    assert mem.weights_bytes == round(4403.49 * mib)  # CUDA0 only; CPU_Mapped is host memory
    assert mem.kv_pool_bytes == 1024 * mib
    assert mem.kv_tokens == 8192
    assert mem.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2  # 131072: f16, 32 layers, 8 KV heads
    assert mem.compute_bytes == 560 * mib  # CUDA_Host compute is pinned host memory
    assert mem.device_resident
    assert mem.extra["host_buffers_bytes"]["weights"] == round(281.81 * mib)
    assert components_from_log("no buffer lines here\n", "ollama-log") is None


def test_launch_environment_follows_the_config(tmp_path: Path) -> None:
    f16 = make_engine(tmp_path, 1)._launch_env()
    assert f16["OLLAMA_HOST"] == "127.0.0.1:1"
    assert f16["OLLAMA_KV_CACHE_TYPE"] == "f16"
    assert "OLLAMA_FLASH_ATTENTION" not in f16 and "OLLAMA_NUM_PARALLEL" not in f16
    q8 = make_engine(
        tmp_path, 1, kv_cache_type="q8_0", num_parallel=2, env={"OLLAMA_MODELS": "/m"}
    )._launch_env()
    assert q8["OLLAMA_KV_CACHE_TYPE"] == "q8_0"
    assert q8["OLLAMA_FLASH_ATTENTION"] == "1"  # Ollama ignores a quantized cache without it
    assert q8["OLLAMA_NUM_PARALLEL"] == "2"
    assert q8["OLLAMA_MODELS"] == "/m"


def test_a_server_we_start_is_pinned_to_the_chosen_gpus(tmp_path: Path) -> None:
    """engines.ollama.gpus reaches `ollama serve` as CUDA_VISIBLE_DEVICES; `all` leaves it alone."""
    pinned = make_engine(tmp_path, 1, gpus=[1, 3])
    assert pinned._launch_env()["CUDA_VISIBLE_DEVICES"] == "1,3"
    assert pinned.gpu_indices() is None  # not our server (yet): it may use any GPU
    assert "CUDA_VISIBLE_DEVICES" not in make_engine(tmp_path, 1)._launch_env()


def test_quantized_cache_without_flash_attention_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="needs flash_attention"):
        OllamaConfig(kv_cache_type="q4_0", flash_attention=False)


def test_server_down_and_not_startable_is_start_failed(tmp_path: Path) -> None:
    with make_engine(tmp_path, _free_port()) as engine:
        with pytest.raises(EngineError) as err:
            engine.check_available(spec("ol_tiny"))
    assert err.value.kind == "start_failed"
    assert "start_server is false" in err.value.message


def test_missing_ollama_binary_is_start_failed(tmp_path: Path) -> None:
    engine = make_engine(
        tmp_path,
        _free_port(),
        start_server=True,
        command=[str(tmp_path / "no-such-ollama"), "serve"],
    )
    with engine, pytest.raises(EngineError) as err:
        engine.check_available(spec("ol_tiny"))
    assert err.value.kind == "start_failed"
    assert "install Ollama or set engines.ollama.command" in err.value.message


def test_server_that_exits_at_start_is_start_failed_with_its_log(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-c",
        "print('Error: listen tcp: address already in use'); raise SystemExit(1)",
    ]
    with make_engine(tmp_path, _free_port(), start_server=True, command=command) as engine:
        with pytest.raises(EngineError) as err:
            engine.check_available(spec("ol_tiny"))
    assert err.value.kind == "start_failed"
    assert "exited with code 1" in err.value.message
    assert "address already in use" in err.value.log_tail


@pytest.mark.slow
def test_something_else_on_the_port_is_start_failed(tmp_path: Path) -> None:
    port = _free_port()
    other = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1.0)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "http.server did not start"
                time.sleep(0.1)
        with make_engine(
            tmp_path, port, start_server=True, command=["ollama-must-not-start"]
        ) as engine:
            with pytest.raises(EngineError) as err:
                engine.check_available(spec("ol_tiny"))
        assert err.value.kind == "start_failed"
        assert "not Ollama" in err.value.message
    finally:
        other.terminate()
        other.wait(timeout=10)


# --------------------------------------------------------------------------- availability, pull


@pytest.mark.slow
def test_availability_is_exact_and_never_downloads(tmp_path: Path, double: Double) -> None:
    double.pull("tiny")
    double.pull("tiny:7b-instruct")
    with make_engine(tmp_path, double.port) as engine:
        for model_id in (
            "ol_tiny",
            "ol_tiny:latest",
            "ol_TINY",
            "tiny:7b-instruct",
            "ol_tiny:7b-instruct",
        ):
            avail = engine.check_available(spec(model_id))
            assert avail.present, model_id
            assert avail.location is not None and avail.location.startswith("ollama:tiny:")
        for model_id in ("tiny:7b", "ol_tin", "ol_shortctx", "ol_tiny:7b-instruct-q8_0"):
            avail = engine.check_available(spec(model_id))
            assert not avail.present, model_id
            assert "--force-download" in avail.detail
        assert sorted(double.names()) == ["tiny:7b-instruct", "tiny:latest"]  # nothing pulled


class _RecordingBar:
    """Stands in for tqdm: records each layer's total and the bytes reported done."""

    bars: list[_RecordingBar] = []

    def __init__(self, *, total: int, desc: str, **_kw: Any) -> None:
        self.total, self.desc, self.n, self.closed = total, desc, 0, False
        _RecordingBar.bars.append(self)

    def update(self, n: int) -> None:
        self.n += n

    def close(self) -> None:
        self.closed = True


@pytest.mark.slow
def test_pull_reports_byte_progress_per_layer(
    tmp_path: Path, double: Double, library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _RecordingBar.bars = []
    monkeypatch.setattr("vramphysics.engines.ollama.api.tqdm", _RecordingBar)
    with make_engine(tmp_path, double.port) as engine:
        engine.download(spec("ol_tiny"))
        assert engine.check_available(spec("ol_tiny")).present
    sizes = sorted(bar.total for bar in _RecordingBar.bars)
    assert len(sizes) == 2  # the GGUF layer and the params layer, each with its digest
    assert (library / "tiny" / "latest.gguf").stat().st_size in sizes
    assert all(bar.n == bar.total and bar.closed for bar in _RecordingBar.bars)
    assert all(bar.desc.startswith("tiny ") for bar in _RecordingBar.bars)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "kind", "words"),
    [
        ({"mode": "error", "after_bytes": 3_000_000}, "download_failed", "max retries exceeded"),
        ({"mode": "malformed", "after_bytes": 1_000_000}, "download_failed", "malformed line"),
        ({"mode": "disconnect", "after_bytes": 1_000_000}, "download_failed", "stream"),
    ],
)
def test_pull_failing_mid_stream_is_download_failed(
    tmp_path: Path, double: Double, fault: dict[str, Any], kind: str, words: str
) -> None:
    double.post("/_test/faults", {"pull": fault})
    with make_engine(tmp_path, double.port) as engine:
        with pytest.raises(EngineError) as err:
            engine.download(spec("ol_tiny"))
        assert err.value.kind == kind
        assert words in err.value.message
        assert not engine.check_available(spec("ol_tiny")).present


@pytest.mark.slow
def test_pull_of_an_unknown_model_is_download_failed(tmp_path: Path, double: Double) -> None:
    with make_engine(tmp_path, double.port) as engine, pytest.raises(EngineError) as err:
        engine.download(spec("ol_no-such-model"))
    assert err.value.kind == "download_failed"
    assert "file does not exist" in err.value.message


@pytest.mark.slow
def test_pull_silent_too_long_is_a_timeout(tmp_path: Path, double: Double) -> None:
    double.post(
        "/_test/faults", {"pull": {"mode": "stall", "after_bytes": 1_000_000, "stall_s": 4}}
    )
    with make_engine(tmp_path, double.port, pull_silence_timeout_s=1.0) as engine:
        t0 = time.monotonic()
        with pytest.raises(EngineError) as err:
            engine.download(spec("ol_tiny"))
    assert err.value.kind == "timeout"
    assert "no progress" in err.value.message
    assert time.monotonic() - t0 < 3.5


# --------------------------------------------------------------------------- the server's life


@pytest.mark.slow
def test_engine_starts_the_server_and_stops_only_what_it_started(
    tmp_path: Path, library: Path, shared: Double
) -> None:
    engine = owned_engine(tmp_path, library)
    avail = engine.check_available(spec("ol_tiny"))  # starts the double through `command`
    assert not avail.present
    assert engine.owns_server
    pid = engine.root_pid()
    assert pid is not None and psutil.Process(pid).cmdline()[1] == str(SERVER)
    assert engine.version() == "ollama 0.0.0-testdouble"
    assert engine.settings()["server"].startswith("started by us")
    engine.close()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not _answers(engine.base_url)
    assert not list((tmp_path / "state" / "procs").glob("*.json"))  # its record is gone too

    # A server we did not start: used as it is, found by its port, and left running.
    other = make_engine(
        tmp_path / "other", shared.port, start_server=True, command=["must-not-run"]
    )
    assert not other.check_available(spec("ol_tiny")).present
    assert not other.owns_server
    assert other.root_pid() == shared.proc.pid
    assert other.settings()["server"] == "already running (not ours)"
    other.close()
    assert _answers(shared.url)


@pytest.mark.slow
def test_a_crash_of_our_server_fails_the_start_and_the_next_check_restarts_it(
    tmp_path: Path, library: Path
) -> None:
    engine = owned_engine(tmp_path, library)
    model = spec("ol_tiny")
    try:
        engine.download(model)
        engine.start(model, 512)
        engine.wait_ready()
        first = engine.root_pid()
        assert first is not None
        os.killpg(first, signal.SIGKILL)  # the server we started (it leads its process group)
        deadline = time.monotonic() + 10
        while engine.root_pid() is not None:  # None once the server we started has exited
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(EngineError) as err:
            engine.check_alive()
        assert err.value.kind == "engine_crashed"
        with pytest.raises(EngineError) as err:
            engine.complete("Hello", 4)
        assert err.value.kind == "engine_crashed"
        engine.stop()
        assert engine.check_available(model).present  # a fresh server, the same store
        second = engine.root_pid()
        assert second is not None and second != first
    finally:
        engine.close()


# --------------------------------------------------------------------------- loading, memory


@pytest.mark.slow
def test_contexts_load_as_asked_and_memory_grows_with_them(tmp_path: Path, library: Path) -> None:
    engine = owned_engine(tmp_path, library)
    model = spec("ol_tiny")
    try:
        engine.download(model)
        probe = ProcessTreeProbe(engine.root_pid)
        reports, tree = {}, {}
        for ctx in (512, 2048):
            engine.start(model, ctx)
            engine.wait_ready()
            engine.warm_up(2)
            time.sleep(0.3)
            ps = httpx.get(f"{engine.base_url}/api/ps").json()["models"]
            assert [(m["name"], m["context_length"]) for m in ps] == [("tiny:latest", ctx)]
            reports[ctx] = engine.memory_report()
            tree[ctx] = probe.read()
            engine.stop()
            # stop() returned only once /api/ps no longer lists the model (the double unloads
            # it 0.5 s after keep_alive 0, like Ollama's asynchronous expiry)
            assert httpx.get(f"{engine.base_url}/api/ps").json()["models"] == []
        for ctx, mem in reports.items():
            assert mem is not None and mem.source == "ollama-ps"
            assert mem.extra["context_length"] == ctx
            assert mem.extra["size_vram"] == 0 and mem.extra["spilled_to_cpu"] is True
            assert not mem.device_resident
            assert mem.kv_tokens == ctx  # from the llama.cpp lines in the server's log
            assert mem.kv_pool_bytes == ctx * KV_F16
            assert mem.kv_bytes_per_token == KV_F16
        small, large = reports[512], reports[2048]
        assert small.total_bytes is not None and large.total_bytes is not None
        assert large.total_bytes - small.total_bytes >= (2048 - 512) * KV_F16
        # real memory: the server's process tree (it and its runner) grew by about the KV cache
        assert tree[2048] - tree[512] >= 0.5 * (2048 - 512) * KV_F16
        engine.stop()  # a second stop, with nothing loaded, is a no-op
    finally:
        engine.close()


@pytest.mark.slow
def test_model_removed_between_check_and_load_is_model_not_found(
    tmp_path: Path, double: Double
) -> None:
    double.pull("tiny")
    with make_engine(tmp_path, double.port) as engine:
        assert engine.check_available(spec("ol_tiny")).present
        httpx.request(
            "DELETE", f"{double.url}/api/delete", json={"model": "tiny"}, timeout=10
        ).raise_for_status()
        engine.start(spec("ol_tiny"), 512)
        with pytest.raises(EngineError) as err:
            engine.wait_ready()
    assert err.value.kind == "model_not_found"
    assert "model 'tiny' not found" in err.value.message


@pytest.mark.slow
def test_a_context_never_applied_is_an_error_not_a_silent_lie(
    tmp_path: Path, double: Double
) -> None:
    double.pull("shortctx")  # trained on 1024 tokens: Ollama caps num_ctx there
    with make_engine(tmp_path, double.port) as engine:
        engine.start(spec("ol_shortctx"), 2048)
        with pytest.raises(EngineError) as err:
            engine.wait_ready()
        assert err.value.kind == "other"
        assert "num_ctx 2048" in err.value.message and "context_length 1024" in err.value.message
        engine.stop()
        assert double.get("/api/ps")["models"] == []


@pytest.mark.slow
def test_without_context_length_in_ps_the_engine_says_so(
    tmp_path: Path, double: Double, caplog: pytest.LogCaptureFixture
) -> None:
    double.pull("tiny")
    double.post("/_test/config", {"ps_context_length": False})
    with make_engine(tmp_path, double.port) as engine, caplog.at_level(logging.WARNING):
        engine.start(spec("ol_tiny"), 512)
        engine.wait_ready()
        mem = engine.memory_report()
        assert mem is not None and mem.extra["context_length"] is None
        assert mem.extra["breakdown"].startswith("none: the server's log is not ours")
        assert engine.root_pid() == double.proc.pid  # not ours: the pid listening on the port
    assert "does not report context_length" in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize(("size_vram", "spilled"), [("half", True), ("size", False)])
def test_a_model_spilled_to_cpu_is_visible(
    tmp_path: Path, double: Double, caplog: pytest.LogCaptureFixture, size_vram: str, spilled: bool
) -> None:
    double.pull("tiny")
    double.post("/_test/config", {"size_vram": size_vram})
    with make_engine(tmp_path, double.port) as engine, caplog.at_level(logging.WARNING):
        engine.start(spec("ol_tiny"), 512)
        engine.wait_ready()
        mem = engine.memory_report()
    assert mem is not None and mem.total_bytes
    assert mem.extra["spilled_to_cpu"] is spilled
    assert mem.extra["size_vram"] == (mem.total_bytes // 2 if spilled else mem.total_bytes)
    assert mem.device_resident
    assert ("in system memory" in caplog.text) is spilled


# --------------------------------------------------------------------------- requests


@pytest.mark.slow
def test_benchmark_figures_come_from_ollamas_final_object(tmp_path: Path, double: Double) -> None:
    double.pull("tiny")
    with make_engine(tmp_path, double.port) as engine:
        engine.start(spec("ol_tiny"), 1024)
        engine.wait_ready()
        engine.warm_up(2)
        # three empty chunks at once, then 0.4 s of silence before the real stream: TTFT must be
        # taken at the first chunk WITH text, not at the first chunk
        double.post("/_test/faults", {"chat": {"mode": "empty_prefix", "n": 3, "delay_s": 0.4}})
        c = engine.complete(
            "Explain in two sentences why the KV cache grows with the context length.", 16
        )
        sent = double.get("/_test/state")["last_chat"]
        assert double.get("/_test/state")["runners"][0]["num_ctx"] == 1024  # no reload
    final = sent["final"]
    assert c.usage.source == "engine-usage"
    assert c.usage.completion_tokens == final["eval_count"] == 16
    assert c.usage.prompt_tokens == final["prompt_eval_count"] > 0
    assert c.n_chunks == sum(1 for text in sent["contents"] if text)
    assert c.ttft_ms is not None and c.ttft_ms >= 400
    assert c.engine_timings["decode_tokens_per_s"] == pytest.approx(
        final["eval_count"] / (final["eval_duration"] / 1e9)
    )
    assert c.engine_timings["prefill_tokens_per_s"] == pytest.approx(
        final["prompt_eval_count"] / (final["prompt_eval_duration"] / 1e9)
    )
    assert c.engine_timings["load_s"] == pytest.approx(final["load_duration"] / 1e9)
    assert request_figures(c).output_tokens == 16


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "words"), [("error", "Ollama: an error was encountered"), ("malformed", "malformed")]
)
def test_a_broken_chat_stream_is_request_failed(
    tmp_path: Path, double: Double, mode: str, words: str
) -> None:
    double.pull("tiny")
    with make_engine(tmp_path, double.port) as engine:
        engine.start(spec("ol_tiny"), 512)
        engine.wait_ready()
        double.post("/_test/faults", {"chat": {"mode": mode, "after_chunks": 2}})
        with pytest.raises(EngineError) as err:
            engine.complete("Hello", 8)
    assert err.value.kind == "request_failed"
    assert words in err.value.message


@pytest.mark.slow
def test_theory_comes_from_api_show(tmp_path: Path, double: Double, library: Path) -> None:
    double.pull("tiny")
    with make_engine(tmp_path, double.port) as engine:
        theory = engine.theory(spec("ol_tiny"))
        assert engine.theory(spec("ol_not-pulled")) is None
    assert theory is not None
    assert theory.source == "ollama-show"
    assert theory.kv_bytes_per_token == KV_F16 == 4096
    assert theory.n_seq == 1
    assert theory.weights_bytes == sum(
        int(t.n_bytes) for t in gguf.GGUFReader(library / "tiny" / "latest.gguf").tensors
    )


@pytest.mark.slow
def test_quantized_cache_and_parallel_slots_reach_the_server(tmp_path: Path, library: Path) -> None:
    """q8_0 and OLLAMA_NUM_PARALLEL=2 on a server we start: theory and the server's own log agree."""
    engine = owned_engine(tmp_path, library, kv_cache_type="q8_0", num_parallel=2)
    model = spec("ol_tiny")
    try:
        engine.download(model)
        theory = engine.theory(model)
        assert theory is not None
        assert theory.kv_bytes_per_token == pytest.approx(KV_Q8_0) == 2176
        assert theory.n_seq == 2
        settings = engine.settings()
        assert (
            settings["kv_cache_type"],
            settings["num_parallel"],
            settings["num_parallel_source"],
        ) == (
            "q8_0",
            2,
            "config",
        )
        assert settings["flash_attention"] == "1"
        engine.start(model, 512)
        engine.wait_ready()
        mem = engine.memory_report()
        assert mem is not None
        assert mem.extra["kv_type"] == "q8_0"
        assert mem.kv_tokens == 2 * 512  # Ollama caches num_ctx x num_parallel cells
        assert mem.kv_bytes_per_token == pytest.approx(theory.kv_bytes_per_token, rel=0.01)
        assert mem.extra["context_length"] == 512
    finally:
        engine.close()


# --------------------------------------------------------------------------- the whole runner


def _runner_files(tmp_path: Path, library: Path) -> tuple[Path, Path, int]:
    port = _free_port()
    config = {
        "engines": {
            "ollama": {
                "host": "127.0.0.1",
                "port": port,
                "command": [
                    sys.executable,
                    str(SERVER),
                    "--store",
                    str(tmp_path / "store"),
                    "--library",
                    str(library),
                ],
                "start_server": True,
                "start_timeout_s": 60,
                "request_timeout_s": 60,
                "unload_timeout_s": 20,
            }
        },
        "sweep": {"contexts": [512, 1024, 2048], "settle_s": 0.2, "min_points": 3},
        "probes": {"prefer": "process", "interval_ms": 50},
        "bench": {
            "prompt_tokens": [32],
            "output_tokens": 8,
            "repetitions": 1,
            "warmup_requests": 0,
            "warmup_max_tokens": 2,
        },
        "paths": {"calibration_dir": "calibration", "report_dir": "reports", "state_dir": "run"},
    }
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    setups = tmp_path / "test_setups.yaml"
    setups.write_text(yaml.safe_dump({"ollama_tiny": ["ol_tiny:latest"]}), encoding="utf-8")
    return cfg_path, setups, port


def _journal(tmp_path: Path) -> list[dict[str, Any]]:
    journals = sorted((tmp_path / "reports").glob("*.journal.jsonl"))
    assert journals, "no journal written"
    return [json.loads(line) for line in journals[-1].read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_runner_reports_missing_without_download_then_calibrates_with_it(
    tmp_path: Path, library: Path
) -> None:
    from vramphysics.cli import main
    from vramphysics.physics_db import db_path, load

    cfg, setups, port = _runner_files(tmp_path, library)
    args = ["run", "--config", str(cfg), "--setups", str(setups), "--no-progress"]

    assert main(args) == 0
    records = _journal(tmp_path)
    statuses = [(r["model"], r["status"]) for r in records if r["kind"] == "status"]
    assert statuses == [("ol_tiny:latest", "MISSING")]
    assert not list((tmp_path / "store").rglob("sha256-*"))  # nothing pulled
    assert not _answers(f"http://127.0.0.1:{port}")  # the server it started is stopped

    assert main([*args, "--force-download"]) == 0
    records = _journal(tmp_path)
    info = next(r for r in records if r["kind"] == "model")
    assert info["available"] and info["engine"] == "ollama"
    assert info["engine_version"] == "ollama 0.0.0-testdouble"
    assert info["theory"]["kv_bytes_per_token"] == KV_F16
    assert info["settings"]["num_parallel"] == 1
    points = sorted((r for r in records if r["kind"] == "point"), key=lambda r: r["ctx"])
    assert [p["ctx"] for p in points] == [512, 1024, 2048]
    comps = [p["engine_components"] for p in points]
    assert all(c["source"] == "ollama-ps" for c in comps)
    assert [c["context_length"] for c in comps] == [512, 1024, 2048]
    assert [c["kv_tokens"] for c in comps] == [512, 1024, 2048]
    totals = [c["total_bytes"] for c in comps]
    assert totals == sorted(totals) and totals[-1] - totals[0] >= (2048 - 512) * KV_F16
    measured = [p["measured_bytes"] for p in points]  # the server's process tree
    assert measured[-1] - measured[0] >= 0.5 * (2048 - 512) * KV_F16
    cell = next(r for r in records if r["kind"] == "bench_cell")
    assert cell["ctx"] == 2048 and cell["output_tokens"] == 8 and cell["n_measured"] == 1
    assert cell["token_source"] == "engine-usage"
    assert cell["decode_tokens_per_s"] and cell["decode_tokens_per_s"] > 0
    assert cell["load_s"] is not None
    # the first request after ready is its own row (2 warm-up tokens may carry no text: then
    # the cold TTFT is empty rather than made up)
    (cold,) = [r for r in records if r["kind"] == "request" and r["phase"] == "cold"]
    assert cold["ok"] and cold["ttft_ms"] == cell["cold_ttft_ms"]
    final = [r for r in records if r["kind"] == "status" and r["ctx"] is None]
    assert [(r["status"], r["failure_kind"]) for r in final] == [("OK", None)]
    assert not _answers(f"http://127.0.0.1:{port}")

    # the database: one entry from the process tree, one from Ollama's own /api/ps size
    entries = load(db_path(tmp_path / "calibration"))
    by_probe = {e.probe: e for e in entries if e.engine == "ollama" and e.model == "ol_tiny:latest"}
    assert set(by_probe) == {"process", "ollama-ps"}
    ps = by_probe["ollama-ps"]
    assert ps.points == tuple((p["ctx"], float(t)) for p, t in zip(points, totals, strict=True))
    assert ps.cost_per_token_bytes >= KV_F16  # KV cache plus the compute buffer that grows with it
    assert ps.r2 is not None and ps.r2 > 0.99
    assert ps.settings["num_parallel"] == 1 and ps.settings["kv_cache_type"] == "f16"

    # the guardrail, now from the calibration: with only what ctx 2048 needs free, a sweep up to
    # 4096 is warned about (and skipped) at 4096, before anything is loaded at that context
    free_gib = ps.required_bytes(2048) / 2**30
    config = yaml.safe_load(cfg.read_text())
    config["sweep"]["contexts"] = [512, 1024, 4096]
    config["guardrail"] = {"assume_free_gib": free_gib, "skip_if_no_fit": True}
    cfg.write_text(yaml.safe_dump(config))
    assert main(args) == 0
    records = _journal(tmp_path)
    (warning,) = [r for r in records if r["kind"] == "warning"]
    assert warning["ctx"] == 4096 and "(calibrated)" in warning["message"]
    assert warning["predicted_bytes"] == pytest.approx(ps.required_bytes(4096))
    assert abs(warning["max_context"] - 2048) <= 1
    assert sorted(r["ctx"] for r in records if r["kind"] == "point") == [512, 1024]


@pytest.mark.slow
def test_status_lists_loaded_models_and_detach_keeps_them_loaded(
    tmp_path: Path, double: Double
) -> None:
    double.pull("tiny")
    with make_engine(tmp_path, double.port) as engine:
        with make_engine(tmp_path / "other", _free_port()) as other:
            down = other.status()
        assert down.up is False and down.models == ()
        engine.start(spec("ol_tiny"), 1024)
        engine.wait_ready()
        st = engine.status()
        assert st.up and st.version and st.version.startswith("ollama ")
        (model,) = st.models
        assert model.name == "tiny:latest" and model.ctx == 1024
        assert model.size_bytes and model.size_bytes > 0 and model.vram_bytes == 0
        engine.detach()  # a loadout: leave it loaded
    (still,) = double.get("/api/ps")["models"]
    assert still["name"] == "tiny:latest" and still["context_length"] == 1024
