"""The llama.cpp engine against the real `python -m llama_cpp.server` (slow: real processes)."""

from __future__ import annotations

import re
import socket
import sys
from pathlib import Path

import psutil
import pytest

from vramphysics.calibrate import fit_linear, measure_point
from vramphysics.config import SweepConfig
from vramphysics.demo_models import TinyModelShape, write_tiny_gguf
from vramphysics.engines.llamacpp import LlamaCppEngine
from vramphysics.engines.llamacpp.config import LlamaCppConfig
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
        # stopped at max_tokens: the engine's own count, without logprobs
        assert completion.usage.completion_tokens == 8
        assert completion.usage.source == "engine-length"
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

    with _engine(model_dir, tmp_path, command=[sys.executable, str(script)]) as engine:
        engine.start(parse_model_id("llamacpp:tiny.gguf"), 512)
        with pytest.raises(EngineError) as err:
            engine.wait_ready()
    assert err.value.kind == "cuda_oom"
    assert "cudaMalloc failed" in err.value.log_tail


@pytest.mark.slow
def test_a_hanging_start_times_out_and_is_killed(model_dir: Path, tmp_path: Path) -> None:

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


# -- a sliding-window model: two KV caches, every context of the default sweep --------------------

SWA_WINDOW = 256
# llama-cpp-python keeps llama.cpp's library default, a full-size window cache (swa_full); the
# `llama-server` binary makes the small one (window + micro-batch, padded to 256): this launcher
# runs llama-cpp-python's server as llama-server would size the caches.
_SMALL_WINDOW_SERVER = """\
import functools, runpy
import llama_cpp

_init = llama_cpp.Llama.__init__


@functools.wraps(_init)
def _small_window(self, *args, **kwargs):
    kwargs.setdefault("swa_full", False)
    _init(self, *args, **kwargs)


llama_cpp.Llama.__init__ = _small_window
runpy.run_module("llama_cpp.server", run_name="__main__")
"""
_SIZE_LINE = re.compile(r"kv_cache: size = +([0-9.]+) MiB \( *([0-9]+) cells")


@pytest.mark.slow
@pytest.mark.parametrize("window_cache", ["full", "small"])
def test_sliding_window_model_calibrates_at_every_default_context(
    tmp_path: Path, window_cache: str
) -> None:
    models = tmp_path / "models"
    write_tiny_gguf(models / "swa.gguf", sliding_window=SWA_WINDOW)
    kw: dict[str, object] = {}
    if window_cache == "small":
        launcher = tmp_path / "small_window_server.py"
        launcher.write_text(_SMALL_WINDOW_SERVER)
        kw["command"] = [sys.executable, str(launcher)]
    spec = parse_model_id("llamacpp:swa.gguf")
    per_cell_layer = TinyModelShape().kv_bytes_per_token() // TinyModelShape().n_layers
    points = []
    with _engine(models, tmp_path, **kw) as engine:
        for ctx in SweepConfig().contexts:  # 512 ... 8192; each start passes the context check
            point, _trace, _ = measure_point(
                engine,
                spec,
                ctx,
                make_probe=lambda e: ProcessTreeProbe(e.root_pid),
                interval_s=0.05,
                settle_s=0.2,
                warmup_tokens=2,
            )
            log = (tmp_path / "logs" / f"llamacpp-swa-ctx{ctx}.log").read_text()
            sizes = [(float(mib), int(cells)) for mib, cells in _SIZE_LINE.findall(log)]
            assert len(sizes) == 2, sizes  # llama.cpp made two caches: full and window
            full_cells, window_cells = sizes[0][1], sizes[1][1]
            expected_window = ctx if window_cache == "full" else min(ctx, 768)
            assert (full_cells, window_cells) == (ctx, expected_window)
            comp = point.engine_components
            # the KV figure is both caches, as printed, and as the shape says (4 + 4 layers)
            assert comp["kv_pool_bytes"] == round(sum(mib for mib, _ in sizes) * 2**20)
            assert comp["kv_pool_bytes"] == 4 * per_cell_layer * (full_cells + window_cells)
            assert comp["kv_tokens"] == ctx and comp["kv_cells"] == ctx
            assert comp["device_resident"] is False
            points.append((ctx, float(point.measured_bytes)))
            engine.stop()
    fit = fit_linear(points)
    assert fit.n_points == 5 and fit.cost_per_token_bytes > 0
