"""Bad input through the CLI: one line naming the file, a non-zero exit, no traceback, and
nothing started or overwritten (cli.main `run`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vramphysics import cli
from vramphysics.errors import ConfigError, EngineError, SetupError

PHYSICS = """\
schema_version: 1
units: bytes; bytes = base_bytes + ctx * cost_per_token_bytes
entries:
- engine: llamacpp
  model: llamacpp:tiny-llama.gguf
  device: cpu
  probe: process
  base_bytes: 68720469.3
  cost_per_token_bytes: 4243.022
  r2: 0.999036
  n_points: 3
  points:
  - [512, 70246400.0]
  - [1024, 73420800.0]
  - [2048, 77725696.0]
  engine_starts: 3
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tmp folder with its own config.yaml (every path inside it) and an existing database."""
    # Engines may be created (to validate IDs) but never started.
    import vramphysics.runner.state as runner

    real_create = runner.create_engine

    def create_without_start(*args: Any, **kwargs: Any) -> Any:
        engine = real_create(*args, **kwargs)

        def no_start(*_a: Any, **_k: Any) -> None:
            raise AssertionError(f"{engine.name} was started")

        engine.start = no_start  # type: ignore[method-assign]
        return engine

    monkeypatch.setattr(runner, "create_engine", create_without_start)
    (tmp_path / "config.yaml").write_text(
        "engines:\n"
        "  llamacpp:\n"
        "    model_dir: models\n"
        "paths:\n"
        "  calibration_dir: calibration\n"
        "  report_dir: reports\n"
        "  state_dir: run\n",
        encoding="utf-8",
    )
    (tmp_path / "calibration").mkdir()
    (tmp_path / "calibration" / "physics.yaml").write_text(PHYSICS, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run(
    home: Path, setups_text: str, capsys: pytest.CaptureFixture[str], *, config: Path | None = None
) -> tuple[int, str, Path]:
    setups = home / "test_setups.yaml"
    setups.write_text(setups_text, encoding="utf-8")
    before = (home / "calibration" / "physics.yaml").read_bytes()
    rc = cli.main(
        [
            "run",
            "--config",
            str(config or home / "config.yaml"),
            "--setups",
            str(setups),
            "--no-progress",
        ]
    )
    captured = capsys.readouterr()
    assert (home / "calibration" / "physics.yaml").read_bytes() == before
    assert not (home / "reports").exists() or not list((home / "reports").iterdir())
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    return rc, captured.err, setups


def _one_error_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("vramphysics: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("setups_text", "line", "needles"),
    [
        pytest.param("demo:\n  - ol_a:1\n  bad: [\n", 3, ["invalid YAML"], id="broken-yaml"),
        pytest.param(
            "demo:\n  - llamacpp:tiny-llama.gguf\n  - qwen\n",
            3,
            ["model ID 'qwen'", "cannot tell the engine"],
            id="engine-cannot-be-told",
        ),
        pytest.param(
            "demo:\n  - ol_qwen2.5:7b#ctx=abc\n",
            2,
            ["model ID 'ol_qwen2.5:7b#ctx=abc'", "whole number"],
            id="bad-ctx",
        ),
        pytest.param("demo:\n  - ol_qwen2.5:7b#ctx=0\n", 2, ["#ctx=0", ">= 1"], id="zero-ctx"),
        pytest.param(
            "demo:\n  - llamacpp:tiny-llama.gguf#turbo\n",
            2,
            ["model ID 'llamacpp:tiny-llama.gguf#turbo'", "unknown flag #turbo"],
            id="unknown-flag",
        ),
        pytest.param("demo:\n  - ol_a:1#stream#stream\n", 2, ["given twice"], id="duplicate-flag"),
        pytest.param(
            "demo:\n  - ol_a:1\nother: ol_b:2\n",
            3,
            ["setup 'other' must be a list"],
            id="setup-not-a-list",
        ),
        pytest.param("demo:\n  - 42\n", 2, ["must be a model ID string"], id="non-string-item"),
    ],
)
def test_bad_setups(
    home: Path,
    capsys: pytest.CaptureFixture[str],
    setups_text: str,
    line: int,
    needles: list[str],
) -> None:
    rc, err, setups = _run(home, setups_text, capsys)
    assert rc == cli.EXIT_BAD_INPUT
    message = _one_error_line(err)
    assert f"{setups}:{line}: " in message
    for needle in needles:
        assert needle in message


def test_unknown_setup_name(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    setups = home / "test_setups.yaml"
    setups.write_text("demo: [ol_a:1]\n", encoding="utf-8")
    rc = cli.main(["run", "--setups", str(setups), "--setup", "nightly", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == cli.EXIT_BAD_INPUT
    message = _one_error_line(err)
    assert str(setups) in message and "'nightly'" in message


@pytest.mark.parametrize(
    ("config_text", "line", "needle"),
    [
        pytest.param(
            "engines:\n  llamacpp:\n    prot: 8400\n",
            3,
            "engines.llamacpp.prot: unknown key",
            id="unknown-key",
        ),
        pytest.param(
            'engines:\n  ollama:\n    port: "abc"\n', 3, "engines.ollama.port: ", id="bad-port"
        ),
        pytest.param("sweep:\n  contexts: []\n", 2, "sweep.contexts: ", id="no-contexts"),
        pytest.param("probes: [\n", 2, "invalid YAML", id="broken-yaml"),
    ],
)
def test_bad_config(
    home: Path, capsys: pytest.CaptureFixture[str], config_text: str, line: int, needle: str
) -> None:
    bad = home / "bad-config.yaml"
    bad.write_text(config_text, encoding="utf-8")
    rc, err, _ = _run(home, "demo: [ol_a:1]\n", capsys, config=bad)
    assert rc == cli.EXIT_BAD_INPUT
    message = _one_error_line(err)
    assert f"{bad}:{line}: " in message
    assert needle in message


def test_missing_config(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err, _ = _run(home, "demo: [ol_a:1]\n", capsys, config=home / "nope.yaml")
    assert rc == cli.EXIT_BAD_INPUT
    assert "nope.yaml: config file not found" in _one_error_line(err)


def test_corrupt_physics_database_stops_the_run_and_is_kept(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = home / "calibration" / "physics.yaml"
    db.write_text("schema_version: 1\nentries:\n  - engine: [\n", encoding="utf-8")
    rc, err, _ = _run(home, "demo: [llamacpp:tiny-llama.gguf]\n", capsys)
    assert rc == cli.EXIT_BAD_INPUT
    message = _one_error_line(err)
    assert f"{db}:4: corrupt physics database" in message


def test_debug_shows_the_traceback(home: Path) -> None:
    setups = home / "test_setups.yaml"
    setups.write_text("demo: [qwen]\n", encoding="utf-8")
    with pytest.raises(SetupError):
        cli.main(["run", "--setups", str(setups), "--debug", "--no-progress"])


def test_run_main_turns_package_errors_into_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    def fail(_args: argparse.Namespace) -> int:
        raise EngineError("cuda_oom", "CUDA out of memory\nat line 2", model_id="vl_x/y")

    rc = cli.run_main(fail, argparse.Namespace(debug=False))
    err = capsys.readouterr().err
    assert rc == cli.EXIT_BAD_INPUT
    assert err.startswith("vramphysics: error: vl_x/y: cuda_oom: CUDA out of memory")

    def bad_key(_args: argparse.Namespace) -> int:
        raise ConfigError("must be >= 0", key="--margin")

    assert cli.run_main(bad_key, argparse.Namespace(debug=False)) == cli.EXIT_BAD_INPUT
    assert capsys.readouterr().err == "vramphysics: error: --margin: must be >= 0\n"
