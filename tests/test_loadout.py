"""manage_loadout.py: status with nothing running, refusal before any start, apply and kill."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from vramphysics import loadout
from vramphysics.config import load_config
from vramphysics.demo_models import write_tiny_gguf
from vramphysics.errors import ConfigError
from vramphysics.loadout import LoadoutItem, apply, check_fits, plan_loadout
from vramphysics.loadout import plan as loadout_plan
from vramphysics.physics_db import PhysicsEntry, write_entries
from vramphysics.probes import GpuInfo, NvmlStatus
from vramphysics.setups import parse_model_id

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(tmp: Path, **extra: object) -> Path:
    cfg: dict[str, object] = {
        "engines": {
            "llamacpp": {"port": _port(), "model_dir": str(tmp / "models"), "start_timeout_s": 60},
            "vllm": {"port": _port()},
            "ollama": {"port": _port(), "start_server": False},
        },
        "paths": {"calibration_dir": "cal", "report_dir": "rep", "state_dir": "state"},
    }
    for key, value in extra.items():  # engines: merged per engine
        if key == "engines" and isinstance(value, dict):
            engines: dict[str, dict[str, object]] = cfg["engines"]  # type: ignore[assignment]
            for name, over in value.items():
                engines[name] = {**engines[name], **over}
        else:
            cfg[key] = value
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _manage(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "manage_loadout.py"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def test_status_with_no_gpu_and_no_engine_lists_all_down(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    result = _manage("--status", "--json", "--config", str(cfg), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert {e["name"] for e in status["engines"]} == {"llamacpp", "vllm", "ollama"}
    assert all(e["up"] is False for e in status["engines"])
    assert status["gpus"] == []


def _entry(
    model: str, base_gib: float, cost: float, engine: str = "llamacpp", device: str = "cpu"
) -> PhysicsEntry:
    return PhysicsEntry(
        engine=engine,
        model=model,
        device=device,
        probe="process",
        base_bytes=base_gib * GIB,
        cost_per_token_bytes=cost,
        r2=0.999,
        n_points=5,
        points=(),
        engine_starts=5,
    )


def test_check_fits_names_the_biggest_consumers() -> None:
    items = [
        LoadoutItem(parse_model_id("llamacpp:a.gguf#ctx=1000"), 1000, 6 * GIB, "calibrated"),
        LoadoutItem(parse_model_id("llamacpp:b.gguf#ctx=1000"), 1000, 1 * GIB, "calibrated"),
        LoadoutItem(parse_model_id("llamacpp:c.gguf#ctx=1000"), 1000, 3 * GIB, "theory"),
    ]
    assert check_fits(items, 10 * GIB, "cpu") == []
    (reason,) = check_fits(items, 9 * GIB, "cpu")
    assert "10.00 GiB" in reason and "9.00 GiB" in reason
    assert reason.index("a.gguf") < reason.index("c.gguf") < reason.index("b.gguf")
    # no free-memory figure: refused, saying why, unless --force
    (reason,) = check_fits(items, None, "cpu", free_why="NVML: no driver")
    assert "no free-memory figure for cpu (NVML: no driver)" in reason and "--force" in reason
    assert check_fits(items, None, "cpu", force=True) == []


def test_check_fits_refuses_a_model_without_prediction_unless_forced() -> None:
    items = [
        LoadoutItem(parse_model_id("llamacpp:a.gguf#ctx=1000"), 1000, 1 * GIB, "calibrated"),
        LoadoutItem(parse_model_id("llamacpp:x.gguf#ctx=1000"), 1000, None, None, "no GGUF"),
    ]
    (reason,) = check_fits(items, 10 * GIB, "cpu")
    assert reason.startswith("llamacpp:x.gguf#ctx=1000 has no prediction (no GGUF)")
    assert check_fits(items, 10 * GIB, "cpu", force=True) == []
    # --force waives what cannot be checked, never a known sum that does not fit
    (reason,) = check_fits(items, GIB // 2, "cpu", force=True)
    assert "needs 1.00 GiB but 0.50 GiB is free" in reason


def test_apply_refuses_before_starting_anything(tmp_path: Path) -> None:
    cfg_path = _config(
        tmp_path,
        loadouts={"pair": ["llamacpp:a.gguf#ctx=4096", "llamacpp:b.gguf#ctx=4096"]},
        guardrail={"assume_free_gib": 2.0},
    )
    cfg = load_config(cfg_path)
    write_entries(
        cfg.paths.calibration_dir / "physics.yaml",
        [_entry("llamacpp:a.gguf", 1.5, 65536), _entry("llamacpp:b.gguf", 0.25, 4096)],
    )
    result = _manage("--apply", "pair", "--config", str(cfg_path), cwd=tmp_path)
    assert result.returncode == 2
    # a: 1.5 GiB + 4096 x 64 KiB = 1.75 GiB; b: 0.25 GiB + 16 MiB; together 2.02 GiB > 2 GiB
    assert "refused" in result.stderr and "llamacpp:a.gguf#ctx=4096 1.75 GiB" in result.stderr
    assert not list((tmp_path / "state" / "procs").glob("*.json"))


NO_NVML = NvmlStatus(False, "no NVIDIA driver")


@pytest.fixture
def no_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loadout_plan, "nvml_status", lambda: NO_NVML)


def test_a_model_without_physics_is_counted_by_its_theory_and_labelled(
    tmp_path: Path, no_nvml: None
) -> None:
    write_tiny_gguf(tmp_path / "models" / "tiny.gguf")
    cfg = load_config(
        _config(
            tmp_path,
            loadouts={"one": ["llamacpp:tiny.gguf#ctx=1024"]},
            guardrail={"assume_free_gib": 0.001},
        )
    )
    (item,) = plan_loadout(cfg, "one").items
    assert item.source == "theory" and item.required_bytes is not None
    assert item.required_bytes > 0.001 * GIB  # weights + 1024 tokens of KV
    with pytest.raises(ConfigError) as refused:
        apply(cfg, "one")
    assert "biggest consumers: llamacpp:tiny.gguf#ctx=1024" in str(refused.value)
    assert "GiB (theory)" in str(refused.value)
    assert not list((tmp_path / "state" / "procs").glob("*.json"))


def test_a_model_with_neither_physics_nor_theory_is_refused_unless_forced(
    tmp_path: Path, no_nvml: None
) -> None:
    cfg = load_config(
        _config(
            tmp_path,
            loadouts={"pair": ["llamacpp:a.gguf#ctx=1024", "llamacpp:absent.gguf#ctx=1024"]},
            guardrail={"assume_free_gib": 8.0},
        )
    )
    write_entries(cfg.paths.calibration_dir / "physics.yaml", [_entry("llamacpp:a.gguf", 1, 1)])
    with pytest.raises(ConfigError) as refused:
        apply(cfg, "pair")
    message = str(refused.value)
    assert "refused: llamacpp:absent.gguf#ctx=1024 has no prediction" in message
    assert "llamacpp:a.gguf#ctx=1024 has" not in message
    # --force passes the check: what stops it now is the next step (the file is missing)
    with pytest.raises(ConfigError) as missing:
        apply(cfg, "pair", force=True)
    assert "refused" not in str(missing.value)
    assert "llamacpp:a.gguf#ctx=1024 is missing" in str(missing.value)


def test_an_ollama_model_is_not_asked_of_a_server_that_is_not_running(
    tmp_path: Path, no_nvml: None
) -> None:
    cfg = load_config(
        _config(tmp_path, loadouts={"o": ["ol_llama3:8b"]}, guardrail={"assume_free_gib": 8.0})
    )
    (item,) = plan_loadout(cfg, "o").items
    assert item.required_bytes is None
    assert "ollama is not running, so its metadata cannot be read" in item.note


def test_no_free_memory_figure_is_refused_unless_forced(
    tmp_path: Path, no_nvml: None, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg_path = _config(tmp_path, loadouts={"one": ["llamacpp:a.gguf#ctx=1024"]})
    cfg = load_config(cfg_path)
    write_entries(cfg.paths.calibration_dir / "physics.yaml", [_entry("llamacpp:a.gguf", 1, 1)])
    code = loadout.main(["--apply", "one", "--config", str(cfg_path)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "refused: no free-memory figure for cpu (NVML: no NVIDIA driver)" in err
    assert "guardrail.assume_free_gib" in err and "--force" in err
    with pytest.raises(ConfigError) as missing:  # forced: past the check, to the next step
        apply(cfg, "one", force=True)
    assert "llamacpp:a.gguf#ctx=1024 is missing" in str(missing.value)


def test_vllm_is_counted_at_what_it_reserves_with_the_margin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpu = GpuInfo(0, "Fake GPU", 24 * GIB, 4 * GIB, 20 * GIB, "550")
    monkeypatch.setattr(loadout_plan, "nvml_status", lambda: NvmlStatus(True, "ok", (gpu,)))
    cfg = load_config(
        _config(
            tmp_path,
            loadouts={"v": ["vllm:org/model#ctx=4096"]},
            engines={"vllm": {"utilization_margin": 0.05}},
        )
    )
    # 18 GiB + 4096 x 256 KiB = 19 GiB: fits in 20 GiB free as a bare sum, but vLLM reserves
    # ceil3(19/24 + 0.05) = 0.842 of the 24 GiB total = 20.21 GiB
    write_entries(
        cfg.paths.calibration_dir / "physics.yaml",
        [_entry("vllm:org/model", 18, 256 * 1024, engine="vllm", device="Fake GPU")],
    )
    (item,) = plan_loadout(cfg, "v").items
    assert item.source == "calibrated"
    assert item.required_bytes == pytest.approx(0.842 * 24 * GIB)
    assert "vLLM reserves 0.842 x 24.00 GiB, margin 0.05" in item.note
    with pytest.raises(ConfigError) as refused:
        apply(cfg, "v")
    assert "needs 20.21 GiB but 20.00 GiB is free on Fake GPU" in str(refused.value)


def test_unknown_preset_is_named(tmp_path: Path) -> None:
    result = _manage("--apply", "nope", "--config", str(_config(tmp_path)), cwd=tmp_path)
    assert result.returncode == 2 and "nope" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_apply_leaves_it_running_and_kill_stops_only_ours(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    write_tiny_gguf(tmp_path / "models" / "tiny.gguf")
    cfg_path = _config(
        tmp_path,
        loadouts={"one": ["llamacpp:tiny.gguf#ctx=1024"]},
        guardrail={"assume_free_gib": 64.0},  # without NVML, no free figure is refused
    )
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        result = _manage("--apply", "one", "--config", str(cfg_path), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "started at ctx 1024" in result.stdout and "GiB (theory)" in result.stdout
        status = json.loads(
            _manage("--status", "--json", "--config", str(cfg_path), cwd=tmp_path).stdout
        )
        (llama,) = [e for e in status["engines"] if e["name"] == "llamacpp"]
        assert llama["up"] is True
        (record,) = [
            json.loads(p.read_text()) for p in (tmp_path / "state" / "procs").glob("*.json")
        ]
        assert record["keep"] is True and psutil.pid_exists(record["pid"])
        # a new runner must not take it for a leftover of a killed run
        again = _manage("--apply", "one", "--config", str(cfg_path), cwd=tmp_path)
        assert "already running" in again.stdout
        killed = _manage("--kill", "all", "--config", str(cfg_path), cwd=tmp_path)
        assert killed.returncode == 0 and "tiny.gguf" in killed.stdout
        time.sleep(0.3)
        assert not psutil.pid_exists(record["pid"])
        assert bystander.poll() is None, "a process that is not ours is left alone"
    finally:
        bystander.kill()
        _manage("--kill", "all", "--config", str(cfg_path), cwd=tmp_path)
