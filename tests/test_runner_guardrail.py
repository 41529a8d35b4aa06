"""runner._guardrail: the engine's own rule, its pinned GPUs and its settings' calibration."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from vramphysics.config import Config, GuardrailConfig, PathsConfig
from vramphysics.physics_db import PhysicsEntry, db_path, write_entries
from vramphysics.probes import GpuInfo, NvmlStatus
from vramphysics.records import Record, WarningRow
from vramphysics.runner import guardrail as runner
from vramphysics.setups import parse_model_id

GIB = 2**30
H100 = "NVIDIA H100 80GB HBM3"
SMALL = "NVIDIA GeForce RTX 4090"
SPEC = parse_model_id("vl_Qwen/Qwen2.5-7B-Instruct")
CTX = 1024


def _gpu(index: int, name: str, total_gib: int, free_gib: int) -> GpuInfo:
    total, free = total_gib * GIB, free_gib * GIB
    return GpuInfo(index, name, total, total - free, free, "550.54")


# GPU 0 (the probes' default index) is a small card with room; GPU 1 is the H100 vLLM is
# pinned to, with 70 of its 80 GiB free.
GPUS = (_gpu(0, SMALL, 24, 24), _gpu(1, H100, 80, 70))


def _entry(need_gib: float, settings: dict[str, Any], engine: str = "vllm") -> PhysicsEntry:
    cost = 131_072.0
    return PhysicsEntry(
        engine=engine,
        model=SPEC.key,
        device=H100,
        probe="vllm-metrics",
        base_bytes=need_gib * GIB - CTX * cost,
        cost_per_token_bytes=cost,
        settings=settings,
    )


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(runner, "nvml_status", lambda: NvmlStatus(True, "ok", GPUS))
    cfg = Config(paths=PathsConfig(calibration_dir=tmp_path))
    records: list[Record] = []
    return SimpleNamespace(
        cfg=cfg, nvml=NvmlStatus(True, "ok", GPUS), record=records.append, records=records
    )


def _engine(name: str, settings: dict[str, Any], gpus: tuple[int, ...] | None) -> Any:
    return SimpleNamespace(name=name, settings=lambda: settings, gpu_indices=lambda: gpus)


VLLM_SETTINGS = {"extra_args": [], "utilization_margin": 0.05, "port": 8300}


def test_vllm_is_checked_by_the_reserving_rule_on_its_pinned_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 68 GiB needed, 70 GiB free: an on-demand engine fits, but vLLM reserves
    # (68 / 80 + 0.05) x 80 GiB = 72 GiB > 70 GiB, and refuses to start
    write_entries(db_path(tmp_path), [_entry(68, VLLM_SETTINGS)])
    run = _run(tmp_path, monkeypatch)
    ok = runner._guardrail(run, _engine("vllm", VLLM_SETTINGS, (1,)), SPEC, CTX, None)
    assert ok is True  # warns; skips only when configured to
    (warning,) = [r for r in run.records if isinstance(r, WarningRow)]
    assert H100 in warning.message and "vLLM would reserve" in warning.message
    assert warning.free_bytes == 70 * GIB


def test_on_demand_engine_with_the_same_need_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = {"n_gpu_layers": -1, "extra_args": []}
    write_entries(db_path(tmp_path), [_entry(68, settings, engine="llamacpp")])
    run = _run(tmp_path, monkeypatch)
    engine = _engine("llamacpp", settings, (1,))
    assert runner._guardrail(run, engine, SPEC, CTX, None) is True
    assert run.records == []


def test_the_calibration_with_the_engines_settings_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    q8 = {**VLLM_SETTINGS, "extra_args": ["--kv-cache-dtype", "fp8"]}
    # the default-KV calibration needs 76 GiB, the fp8 one 40 GiB
    write_entries(db_path(tmp_path), [_entry(76, VLLM_SETTINGS), _entry(40, q8)])
    run = _run(tmp_path, monkeypatch)
    assert runner._guardrail(run, _engine("vllm", q8, (1,)), SPEC, CTX, None) is True
    assert run.records == []
    runner._guardrail(run, _engine("vllm", VLLM_SETTINGS, (1,)), SPEC, CTX, None)
    assert len([r for r in run.records if isinstance(r, WarningRow)]) == 1


H200 = "NVIDIA H200"


def test_a_start_over_two_alike_gpus_finds_its_calibration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the NVML probe of a start over GPUs 0 and 1 keys its points by "2x NVIDIA H200" and sums
    # their memory; the guardrail must look the physics up by the same key and summed figures
    two = (_gpu(0, H200, 141, 130), _gpu(1, H200, 141, 130))
    # 250 GiB needed over both: vLLM reserves (250 / 282 + 0.05) x 282 GiB = 264 GiB > 260 free
    entry = dataclasses.replace(_entry(250, VLLM_SETTINGS), device=f"2x {H200}")
    write_entries(db_path(tmp_path), [entry])
    run = _run(tmp_path, monkeypatch)
    monkeypatch.setattr(runner, "nvml_status", lambda: NvmlStatus(True, "ok", two))
    # no theory: without the calibration there would be no prediction and no warning
    assert runner._guardrail(run, _engine("vllm", VLLM_SETTINGS, (0, 1)), SPEC, CTX, None)
    (warning,) = [r for r in run.records if isinstance(r, WarningRow)]
    assert f"on 2x {H200}" in warning.message and "(calibrated)" in warning.message
    assert "vLLM would reserve" in warning.message
    assert warning.free_bytes == 260 * GIB  # 130 GiB free on each


def _no_nvml() -> NvmlStatus:
    raise AssertionError("a start without a GPU must not be checked against NVML")


def test_a_start_without_a_gpu_is_not_checked_against_gpu_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # llama.cpp with `gpus: none`: its calibration would not fit the 24 GiB free on GPU 0, but
    # it runs in host memory, so NVML's free GPU memory says nothing about it
    settings = {"n_gpu_layers": -1, "extra_args": []}
    cpu = dataclasses.replace(_entry(68, settings, engine="llamacpp"), device="cpu")
    write_entries(db_path(tmp_path), [_entry(68, settings, engine="llamacpp"), cpu])
    run = _run(tmp_path, monkeypatch)
    run.cfg = run.cfg.model_copy(update={"guardrail": GuardrailConfig(skip_if_no_fit=True)})
    monkeypatch.setattr(runner, "nvml_status", _no_nvml)
    engine = _engine("llamacpp", settings, ())
    assert runner._guardrail(run, engine, SPEC, CTX, None) is True
    assert run.records == []
    # with an assumed free figure the start is checked against it, on the device "cpu"
    guard = GuardrailConfig(assume_free_gib=32, skip_if_no_fit=True)
    run.cfg = run.cfg.model_copy(update={"guardrail": guard})
    assert runner._guardrail(run, engine, SPEC, CTX, None) is False
    (warning,) = [r for r in run.records if isinstance(r, WarningRow)]
    assert "on cpu" in warning.message and warning.free_bytes == 32 * GIB
