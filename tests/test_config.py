"""`config.yaml`: defaults, unknown keys, bad values and path resolution (config.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vramphysics.config import Config, load_config
from vramphysics.errors import ConfigError

ROOT_DIR = Path(__file__).resolve().parents[1]

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_empty_file_gives_the_defaults_resolved_next_to_it(tmp_path: Path) -> None:
    path = _write(tmp_path, "# nothing set\n")
    cfg = load_config(path)
    assert cfg.source == path
    assert cfg.engines.llamacpp.host == "127.0.0.1"
    assert cfg.engines.llamacpp.port == 8400
    assert cfg.engines.llamacpp.n_gpu_layers == -1
    assert cfg.engines.vllm.port == 8300
    assert cfg.engines.vllm.mode == "native"
    assert cfg.engines.vllm.default_gpu_memory_utilization == 0.9
    assert cfg.engines.ollama.port == 11434
    assert cfg.engines.ollama.kv_cache_type == "f16"
    assert cfg.sweep.contexts == [512, 1024, 2048, 4096, 8192]
    assert cfg.sweep.min_points == 3
    assert cfg.probes.interval_ms == 50.0
    assert cfg.probes.prefer == "auto"
    assert cfg.bench.prompt_tokens == [128, 1024] and cfg.bench.output_tokens == 64
    assert (cfg.bench.repetitions, cfg.bench.warmup_requests, cfg.bench.concurrency) == (5, 2, [1])
    assert cfg.loadouts == {}
    base = tmp_path.resolve()
    assert cfg.paths.calibration_dir == base / "calibration"
    assert cfg.paths.report_dir == base / "reports"
    assert cfg.paths.state_dir == base / "run"
    assert cfg.engines.llamacpp.model_dir == base / "models"
    assert cfg.engines.vllm.model_dir is None
    assert cfg.engines.vllm.hf_cache == Path("~/.cache/huggingface").expanduser()


def test_values_are_read(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "engines:\n"
        "  llamacpp:\n"
        "    port: 9000\n"
        "    start_timeout_s: 30\n"
        "  vllm:\n"
        "    gpus: [0, 1]\n"
        "sweep:\n"
        "  contexts: [4096, 512, 1024]\n"
        "probes:\n"
        "  interval_ms: 25\n",
    )
    cfg = load_config(path)
    assert cfg.engines.llamacpp.port == 9000
    assert cfg.engines.llamacpp.start_timeout_s == 30.0
    assert cfg.engines.vllm.gpus == [0, 1]
    assert cfg.sweep.contexts == [512, 1024, 4096]  # sorted
    assert cfg.probes.interval_ms == 25.0


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, ""))
    with pytest.raises(ValueError):
        cfg.sweep.min_points = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "key", "line", "needle"),
    [
        ("engines:\n  llamacpp:\n    prot: 8400\n", "engines.llamacpp.prot", 3, "unknown key"),
        ("sweep:\n  contexts: [512]\n  setle_s: 1\n", "sweep.setle_s", 3, "unknown key"),
        ("# c\n\nenigne: {}\n", "enigne", 3, "unknown key"),
        (
            "engines:\n  vllm:\n    mode: native\n    gpu_util: 0.5\n",
            "engines.vllm.gpu_util",
            4,
            "unknown key",
        ),
    ],
)
def test_unknown_key_names_file_key_and_line(
    tmp_path: Path, text: str, key: str, line: int, needle: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert (err.path, err.key, err.line) == (path, key, line)
    assert str(err) == f"{path}:{line}: {key}: {needle}"


@pytest.mark.parametrize(
    ("text", "key", "line", "needle"),
    [
        ('engines:\n  llamacpp:\n    port: "abc"\n', "engines.llamacpp.port", 3, "'abc'"),
        ("engines:\n  llamacpp:\n    port: 70000\n", "engines.llamacpp.port", 3, "65535"),
        (
            "engines:\n  ollama:\n    port: 0\n",
            "engines.ollama.port",
            3,
            "greater than or equal to 1",
        ),
        ("sweep:\n  contexts: []\n", "sweep.contexts", 2, "at least one context"),
        ("sweep:\n  contexts: [512, 8]\n", "sweep.contexts", 2, ">= 16"),
        ("sweep:\n  contexts: [512, 512]\n", "sweep.contexts", 2, "distinct"),
        ("sweep:\n  contexts:\n    - 512\n    - big\n", "sweep.contexts.1", 4, "'big'"),
        ("sweep:\n  min_points: 1\n", "sweep.min_points", 2, "greater than or equal to 2"),
        ("probes:\n  interval_ms: -1\n", "probes.interval_ms", 2, "greater than 0"),
        ("probes:\n  interval_ms: 0\n", "probes.interval_ms", 2, "greater than 0"),
        ("probes:\n  prefer: gpu\n", "probes.prefer", 2, "'gpu'"),
        ("engines:\n  vllm:\n    mode: podman\n", "engines.vllm.mode", 3, "'podman'"),
        (
            "engines:\n  vllm:\n    default_gpu_memory_utilization: 1.5\n",
            "engines.vllm.default_gpu_memory_utilization",
            3,
            "less than or equal to 1",
        ),
        ("bench:\n  output_tokens: 1.5\n", "bench.output_tokens", 2, "fractional"),
        ("engines:\n  ollama:\n    keep_alive: 5\n", "engines.ollama.keep_alive", 3, "string"),
        ("engines: 3\n", "engines", 1, "dictionary"),
        ("loadouts: null\n", "loadouts", 1, "dictionary"),
    ],
)
def test_bad_value_names_file_key_and_line(
    tmp_path: Path, text: str, key: str, line: int, needle: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert (err.path, err.key, err.line) == (path, key, line)
    assert str(err).startswith(f"{path}:{line}: {key}: ")
    assert needle in str(err)
    assert "\n" not in str(err)


def test_several_errors_say_how_many_more(tmp_path: Path) -> None:
    path = _write(tmp_path, "probes:\n  interval_ms: -1\n  gpu_index: -2\n")
    with pytest.raises(ConfigError, match=r"\(and 1 more\)"):
        load_config(path)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = _write(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.line == 1
    assert "mapping at the top level" in str(info.value)


def test_broken_yaml(tmp_path: Path) -> None:
    path = _write(tmp_path, "engines:\n  llamacpp: {port: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.path == path
    assert info.value.line == 3
    assert "invalid YAML" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "config.yaml")


def test_relative_paths_are_relative_to_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc" / "vp"
    conf_dir.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    (conf_dir / "config.yaml").write_text(
        "paths:\n"
        "  calibration_dir: cal\n"
        "  report_dir: ../reports\n"
        "  state_dir: /abs/state\n"
        "engines:\n"
        "  llamacpp:\n"
        "    model_dir: m/gguf\n"
        "  vllm:\n"
        "    model_dir: hf\n",
        encoding="utf-8",
    )
    # a relative --config path, seen from another working folder
    cfg = load_config(Path("../etc/vp/config.yaml"))
    base = conf_dir.resolve()
    assert cfg.paths.calibration_dir == base / "cal"
    assert cfg.paths.report_dir.resolve() == (tmp_path / "etc" / "reports").resolve()
    assert cfg.paths.state_dir == Path("/abs/state")
    assert cfg.engines.llamacpp.model_dir == base / "m" / "gguf"
    assert cfg.engines.vllm.model_dir == base / "hf"
    for p in (cfg.paths.calibration_dir, cfg.paths.report_dir, cfg.engines.llamacpp.model_dir):
        assert p.is_absolute()


def test_tilde_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    path = _write(
        tmp_path,
        "paths:\n  report_dir: ~/reports\nengines:\n  vllm:\n    hf_cache: ~/hf\n    model_dir: ~/m\n",
    )
    cfg = load_config(path)
    assert cfg.paths.report_dir == home / "reports"
    assert cfg.engines.vllm.hf_cache == home / "hf"
    assert cfg.engines.vllm.model_dir == home / "m"


def test_the_repos_own_config_loads() -> None:
    cfg = load_config(REPO / "config.yaml")
    assert isinstance(cfg, Config)
    assert cfg.engines.llamacpp.port == 8400
    assert cfg.engines.vllm.start_timeout_s == 600.0
    assert cfg.sweep.contexts == [512, 1024, 2048, 4096, 8192]
    assert cfg.paths.calibration_dir == REPO / "calibration"
    assert cfg.engines.llamacpp.model_dir == REPO / "models"
    for engine in (cfg.engines.llamacpp, cfg.engines.vllm, cfg.engines.ollama):
        assert engine.host == "127.0.0.1"  # loopback unless said otherwise


def test_boolean_port_is_a_type_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "engines:\n  llamacpp:\n    port: true\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "engines.llamacpp.port"


def test_source_is_not_a_config_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "source: /etc/passwd\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "source"


def test_bad_gpus_names_the_plain_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "engines:\n  vllm:\n    gpus: [a]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.line == 3
    assert info.value.key == "engines.vllm.gpus"


def test_gpus_for_every_engine(tmp_path: Path) -> None:
    """`gpus` has one meaning for each engine: all (default), none, or a list of indices."""
    assert Config().engines.llamacpp.gpus == "all"
    assert Config().engines.ollama.gpus == "all"
    assert Config().engines.vllm.gpus == "all"
    path = _write(
        tmp_path,
        "engines:\n  llamacpp:\n    gpus: [1]\n  ollama:\n    gpus: none\n  vllm:\n    gpus: [2, 0]\n",
    )
    cfg = load_config(path)
    assert cfg.engines.llamacpp.gpus == [1]
    assert cfg.engines.ollama.gpus == "none"
    assert cfg.engines.vllm.gpus == [2, 0]


@pytest.mark.parametrize(
    ("engine", "value", "words"),
    [
        ("vllm", "[]", "write `none`"),
        ("llamacpp", "[0, 0]", "appears twice"),
        ("ollama", "[-1]", ">= 0"),
        ("vllm", "[true]", "whole numbers"),
        ("llamacpp", "some", "all"),
    ],
)
def test_bad_gpu_lists_are_refused(tmp_path: Path, engine: str, value: str, words: str) -> None:
    path = _write(tmp_path, f"engines:\n  {engine}:\n    gpus: {value}\n")
    with pytest.raises(ConfigError, match=words) as info:
        load_config(path)
    assert (info.value.key, info.value.line) == (f"engines.{engine}.gpus", 3)


def test_vllm_gpus_are_chosen_by_gpus_not_env(tmp_path: Path) -> None:
    path = _write(tmp_path, "engines:\n  vllm:\n    env:\n      CUDA_VISIBLE_DEVICES: '1'\n")
    with pytest.raises(ConfigError, match="set gpus instead") as info:
        load_config(path)
    assert info.value.key == "engines.vllm.env"


def test_default_vllm_container_name_holds_the_model() -> None:
    assert Config().engines.vllm.container_name == "vram-physics-vllm-{model}"


@pytest.mark.parametrize("name", sorted(p.name for p in ROOT_DIR.glob("config*.yaml")))
def test_every_shipped_config_is_valid(name: str) -> None:
    """config.yaml, config.cpu-vllm.yaml, config.cpu-vlm.yaml: `make demo*` loads them."""
    load_config(ROOT_DIR / name)
