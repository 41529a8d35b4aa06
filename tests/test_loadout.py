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

from vramphysics.config import load_config
from vramphysics.demo_models import write_tiny_gguf
from vramphysics.loadout import LoadoutItem, check_fits
from vramphysics.physics_db import PhysicsEntry, write_entries
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
        **extra,
    }
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


def _entry(model: str, base_gib: float, cost: float) -> PhysicsEntry:
    return PhysicsEntry(
        engine="llamacpp",
        model=model,
        device="cpu",
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
    assert check_fits(items, None, "cpu") == []  # no device figure: nothing to check


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


def test_unknown_preset_is_named(tmp_path: Path) -> None:
    result = _manage("--apply", "nope", "--config", str(_config(tmp_path)), cwd=tmp_path)
    assert result.returncode == 2 and "nope" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_apply_leaves_it_running_and_kill_stops_only_ours(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    write_tiny_gguf(tmp_path / "models" / "tiny.gguf")
    cfg_path = _config(tmp_path, loadouts={"one": ["llamacpp:tiny.gguf#ctx=1024"]})
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        result = _manage("--apply", "one", "--config", str(cfg_path), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "started at ctx 1024" in result.stdout
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
