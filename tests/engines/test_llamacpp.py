"""The llama.cpp engine against the real `python -m llama_cpp.server` (slow: real processes)."""

from __future__ import annotations

import socket
from pathlib import Path

import psutil
import pytest

from vramphysics.calibrate import measure_point
from vramphysics.config import LlamaCppConfig
from vramphysics.demo_models import TinyModelShape, write_tiny_gguf
from vramphysics.engines.llamacpp import LlamaCppEngine
from vramphysics.errors import EngineError
from vramphysics.probes import ProcessTreeProbe
from vramphysics.setups import parse_model_id

pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make test`")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("models")
    write_tiny_gguf(d / "tiny.gguf")
    return d


def _engine(model_dir: Path, tmp_path: Path, **kw: object) -> LlamaCppEngine:
    settings: dict[str, object] = {
        "port": _port(),
        "model_dir": model_dir,
        "start_timeout_s": 60,
        **kw,
    }
    cfg = LlamaCppConfig.model_validate(settings)
    return LlamaCppEngine(cfg, state_dir=tmp_path / "state", log_dir=tmp_path / "logs")


def test_availability_is_soft(model_dir: Path, tmp_path: Path) -> None:
    with _engine(model_dir, tmp_path) as engine:
        assert engine.check_available(parse_model_id("llamacpp:tiny.gguf")).present
        missing = engine.check_available(parse_model_id("llamacpp:nope.gguf"))
        assert not missing.present and "nope.gguf" in missing.detail


@pytest.mark.slow
def test_start_measure_benchmark_stop(model_dir: Path, tmp_path: Path) -> None:
    spec = parse_model_id("llamacpp:tiny.gguf")
    with _engine(model_dir, tmp_path) as engine:
        point, trace, _ = measure_point(
            engine,
            spec,
            2048,
            make_probe=lambda e: ProcessTreeProbe(e.root_pid),
            interval_s=0.05,
            settle_s=0.3,
            warmup_tokens=2,
        )
        root = engine.root_pid()
        assert root is not None
        tree = [root, *(c.pid for c in psutil.Process(root).children(recursive=True))]
        # bound to loopback only
        conns = [
            c for c in psutil.Process(root).net_connections() if c.status == psutil.CONN_LISTEN
        ]
        assert conns and all(c.laddr.ip == "127.0.0.1" for c in conns)
        # the engine's own log shows the context we asked for: 2048 cells x 4096 B (f16 KV)
        comp = point.engine_components
        assert comp["kv_tokens"] == 2048
        assert comp["kv_pool_bytes"] == 2048 * TinyModelShape().kv_bytes_per_token()
        assert point.probe == "process" and point.device == "cpu"
        assert trace.steady_bytes > 20 * 2**20 and point.n_samples >= 3
        completion = engine.complete("The cache grows because", 8)
        assert completion.usage.completion_tokens == 8  # the engine's own count (logprobs)
        assert completion.usage.source == "engine-logprobs"
        assert completion.usage.prompt_tokens and completion.usage.prompt_tokens > 3
        assert completion.ttft_ms is not None and completion.ttft_ms > 0
        engine.stop()
        assert not any(
            psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in tree
        )
        assert not list((tmp_path / "state" / "procs").glob("*.json"))


@pytest.mark.slow
def test_a_process_that_exits_at_once_is_classified(model_dir: Path, tmp_path: Path) -> None:
    script = tmp_path / "oom.py"
    script.write_text(
        "import sys\nprint('ggml_backend_cuda_buffer_type_alloc_buffer: allocating 900.00 MiB on device 0: cudaMalloc failed: out of memory')\nsys.exit(1)\n"
    )
    import sys

    with _engine(model_dir, tmp_path, command=[sys.executable, str(script)]) as engine:
        engine.start(parse_model_id("llamacpp:tiny.gguf"), 512)
        with pytest.raises(EngineError) as err:
            engine.wait_ready()
    assert err.value.kind == "cuda_oom"
    assert "cudaMalloc failed" in err.value.log_tail


@pytest.mark.slow
def test_a_hanging_start_times_out_and_is_killed(model_dir: Path, tmp_path: Path) -> None:
    import sys

    script = tmp_path / "hang.py"
    script.write_text("import time\nwhile True:\n    time.sleep(1)\n")
    with _engine(
        model_dir, tmp_path, command=[sys.executable, str(script)], start_timeout_s=2
    ) as engine:
        engine.start(parse_model_id("llamacpp:tiny.gguf"), 512)
        pid = engine.root_pid()
        with pytest.raises(EngineError) as err:
            engine.wait_ready()
        assert err.value.kind == "timeout"
    assert pid is not None and not psutil.pid_exists(pid)
