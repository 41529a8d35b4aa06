"""The registry: lookups, lazy imports, and plugins that are broken."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vramphysics.engines import registry
from vramphysics.errors import ConfigError


def test_reading_the_registry_imports_no_engine_code() -> None:
    """A llama.cpp run never imports our vLLM or Ollama engine modules (nor theirs)."""
    code = (
        "import sys\n"
        "from vramphysics.engines import registry\n"
        "from vramphysics.setups import parse_model_id\n"
        "registry.engines(); parse_model_id('llamacpp:m.gguf')\n"
        "loaded = [m for m in sys.modules if m.endswith(('.engine', '.launcher', '.server'))]\n"
        "print(sorted(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_lookups() -> None:
    assert registry.names() == ("llamacpp", "ollama", "vllm")
    assert registry.get("vllm").memory_kind == "preallocated"
    assert registry.get("ollama").bare_names
    matched = registry.match_prefix("VLLM:org/m")
    assert matched is not None and (matched[0].name, matched[1]) == ("vllm", "VLLM:")
    with pytest.raises(ConfigError, match=r"unknown engine 'sglang' \(known: llamacpp, ollama"):
        registry.get("sglang")


def _plugin(tmp: Path, module: str, body: str) -> Path:
    (tmp / f"{module}.py").write_text(body)
    info = tmp / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[vramphysics.engines]\nbroken = {module}:ENGINE\n")
    return tmp


def test_a_plugin_that_fails_to_import_is_one_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(_plugin(tmp_path, "broken_plugin", "import no_such_module\n")))
    with pytest.raises(ConfigError, match=r"plugin 'broken'.*broken_plugin:ENGINE.*no_such_module"):
        registry.engines()


def test_a_plugin_that_is_not_an_engine_info_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(_plugin(tmp_path, "odd_plugin", "ENGINE = 42\n")))
    with pytest.raises(ConfigError, match="is not an EngineInfo"):
        registry.engines()
