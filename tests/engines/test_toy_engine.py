"""An engine registered from outside the package (tests/plugins/vramphysics_toy.py, an entry point)
is usable from a setups file, the runner, `plan` and the guardrail, and no module in src/ knows
its name. This is the walk-through of docs/adding-an-engine.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vramphysics import physics_db
from vramphysics.config import load_config
from vramphysics.engines import create_engine, registry
from vramphysics.errors import ConfigError, SetupError
from vramphysics.setups import parse_model_id

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "tests" / "plugins"
MIB = 2**20


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> registry.EngineInfo:
    """The toy plugin on the path, as `pip install` of its distribution would put it."""
    monkeypatch.syspath_prepend(str(PLUGINS))
    path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(PLUGINS), path) if p))
    return registry.get("toy")


def _workspace(tmp: Path, **extra: object) -> Path:
    cfg = {
        "engines": {"toy": {"base_bytes": 4 * MIB, "cost_per_token_bytes": 8192}},
        "sweep": {"contexts": [1024, 2048, 4096], "settle_s": 0.3},
        "bench": {
            "prompt_tokens": [32],
            "output_tokens": 4,
            "repetitions": 2,
            "warmup_requests": 0,
        },
        "paths": {"calibration_dir": "cal", "report_dir": "rep", "state_dir": "state"},
        **extra,
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg))
    (tmp / "setups.yaml").write_text(yaml.safe_dump({"toys": ["toy:m1", "TOY:missing-one"]}))
    return tmp


def _run(ws: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, str(ROOT / "runner.py"), "--config", str(ws / "config.yaml")]
    argv += ["--setups", str(ws / "setups.yaml"), "--no-progress", *args]
    return subprocess.run(argv, cwd=ws, capture_output=True, text=True, timeout=300)


def _journal(ws: Path) -> list[dict[str, object]]:
    (journal,) = (ws / "rep").glob("*.jsonl")
    return [json.loads(line) for line in journal.read_text().splitlines()]


def test_the_plugin_is_registered_and_parses_setups_and_config(
    toy: registry.EngineInfo, tmp_path: Path
) -> None:
    assert toy.label == "Toy" and "toy" in registry.names()
    spec = parse_model_id("TOY:m1#ctx=2048")
    assert (spec.engine, spec.prefix, spec.name, spec.ctx) == ("toy", "TOY:", "m1", 2048)
    cfg = load_config(_workspace(tmp_path) / "config.yaml")
    engine = create_engine("toy", cfg, state_dir=tmp_path, log_dir=tmp_path / "logs")
    assert engine.settings() == {"cost_per_token_bytes": 8192}
    (tmp_path / "bad.yaml").write_text("engines:\n  toy:\n    cost_per_tokn_bytes: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:3.*engines.toy.cost_per_tokn_bytes"):
        load_config(tmp_path / "bad.yaml")


def test_without_the_plugin_the_prefix_is_unknown(tmp_path: Path) -> None:
    assert "toy" not in registry.names()
    with pytest.raises(SetupError, match="cannot tell the engine"):
        parse_model_id("toy_m1")


def test_the_runner_calibrates_it_and_plan_uses_its_advice(
    toy: registry.EngineInfo, tmp_path: Path
) -> None:
    ws = _workspace(tmp_path)
    result = _run(ws, "--setup", "toys")
    assert result.returncode == 0, result.stderr
    rows = _journal(ws)
    statuses = {r["model"]: r["status"] for r in rows if r.get("kind") == "status"}
    assert statuses == {"toy:m1": "OK", "TOY:missing-one": "MISSING"}
    (entry,) = physics_db.load(ws / "cal" / "physics.yaml")
    assert (entry.engine, entry.model, entry.probe) == ("toy", "toy:m1", "process")
    assert entry.cost_per_token_bytes == pytest.approx(8192, rel=0.25)
    plan = subprocess.run(
        [sys.executable, "-m", "vramphysics", "plan", "--physics", str(ws / "cal" / "physics.yaml")]
        + ["--engine", "toy", "--model", "toy:m1", "--device", entry.device]
        + ["--total-gib", "1", "--ctx", "8192", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert plan.returncode == 0, plan.stderr
    doc = json.loads(plan.stdout)
    assert doc["fits"] is True
    assert doc["command"] == ["toy-serve", "toy:m1", "--ctx", "8192"]


def test_the_guardrail_applies_its_memory_rule(toy: registry.EngineInfo, tmp_path: Path) -> None:
    """With 1 MiB free, theory (4 MiB of weights + ctx x 8 KiB) fits no context: each is skipped
    with a warning naming the toy's theory, and nothing is started."""
    ws = _workspace(tmp_path, guardrail={"assume_free_gib": 1 / 1024, "skip_if_no_fit": True})
    result = _run(ws, "--setup", "toys")
    assert result.returncode == 0, result.stderr
    rows = _journal(ws)
    warnings = [r for r in rows if r.get("kind") == "warning" and r["model"] == "toy:m1"]
    assert [w["ctx"] for w in warnings] == [1024, 2048, 4096]
    assert all("theory" in str(w["message"]) for w in warnings)
    assert not [r for r in rows if r.get("kind") == "point"]
