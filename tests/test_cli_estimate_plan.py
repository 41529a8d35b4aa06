"""`python -m vramphysics estimate` and `plan`, run through `main([...])`."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pynvml
import pytest
from safetensors.numpy import save_file

from vramphysics.cli import main
from vramphysics.cli.plan import INSTALLED_VERSION_FACT
from vramphysics.demo_models import write_tiny_gguf
from vramphysics.engines import registry
from vramphysics.physics_db import PhysicsEntry, load, write_entries

FIXTURES = Path(__file__).parent / "fixtures" / "theory"
GIB = 2**30
H100 = "NVIDIA H100 80GB HBM3"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, Any]:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def no_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", fail)


@pytest.fixture
def physics(tmp_path: Path) -> Path:
    path = tmp_path / "calibration" / "physics.yaml"
    write_entries(
        path,
        [
            PhysicsEntry(
                engine="vllm",
                model=MODEL,
                device=H100,
                probe="vllm-metrics",
                base_bytes=8 * GIB,
                cost_per_token_bytes=131_072,
                r2=0.9999,
                n_points=5,
                points=(),
                engine_starts=5,
                device_total_bytes=80 * GIB,
            ),
            PhysicsEntry(
                engine="ollama",
                model="llama3.1:8b",
                device=H100,
                probe="ollama-ps",
                base_bytes=5 * GIB,
                cost_per_token_bytes=131_072,
                r2=0.999,
                n_points=5,
                points=(),
                engine_starts=5,
            ),
        ],
    )
    return path


# --------------------------------------------------------------------------- estimate


def test_estimate_hf_config_without_weights(capsys: pytest.CaptureFixture[str]) -> None:
    doc = run_json(
        capsys,
        ["estimate", "--hf-config", str(FIXTURES / "llama-3.1-8b.config.json"), "--ctx", "8192"],
    )
    assert doc["kv_bytes_per_token"] == 131_072
    assert doc["kv_bytes"] == 8192 * 131_072 == GIB
    assert doc["weights_bytes"] is None and doc["total_bytes"] is None
    assert (doc["ctx"], doc["kv_dtype"], doc["source"], doc["upper_bound"]) == (
        8192,
        "bf16",
        "hf-config",
        False,
    )
    assert (doc["n_layers"], doc["n_kv_heads"], doc["k_head_dim"], doc["v_head_dim"]) == (
        32,
        8,
        128,
        128,
    )


def test_estimate_hf_config_takes_the_safetensors_beside_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(FIXTURES / "qwen2.5-7b.config.json", tmp_path / "config.json")
    save_file({"w": np.zeros((1000, 1000), dtype=np.float16)}, str(tmp_path / "model.safetensors"))
    doc = run_json(
        capsys,
        [
            "estimate",
            "--hf-config",
            str(tmp_path / "config.json"),
            "--ctx",
            "1000",
            "--kv-dtype",
            "fp8",
        ],
    )
    # weights 1000 x 1000 x 2; KV 28 x 4 x 256 values x 1 byte (fp8)
    assert doc["weights_bytes"] == 2_000_000
    assert doc["kv_bytes_per_token"] == 28_672
    assert doc["total_bytes"] == 2_000_000 + 1000 * 28_672


def test_estimate_gguf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    doc = run_json(capsys, ["estimate", "--gguf", str(path), "--ctx", "2048"])
    assert doc["kv_bytes_per_token"] == 4096
    assert doc["total_bytes"] == 9_978_880 + 2048 * 4096


def test_estimate_ollama_show_num_parallel(capsys: pytest.CaptureFixture[str]) -> None:
    show = FIXTURES / "ollama-show-llama3.1-dolphin3.json"
    doc = run_json(
        capsys, ["estimate", "--ollama-show", str(show), "--ctx", "4096", "--num-parallel", "2"]
    )
    assert doc["kv_bytes_per_token"] == 131_072  # one sequence
    assert doc["n_seq"] == 2
    assert doc["total_bytes"] == 573_379_328 + 4096 * 2 * 131_072


def test_estimate_text_says_upper_bound(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = FIXTURES / "mistral-7b-v0.1.config.json"
    assert main(["estimate", "--hf-config", str(cfg), "--ctx", "32768"]) == 0
    out = capsys.readouterr().out
    assert "128.00 KiB per token per sequence (upper bound)" in out
    assert "at ctx 32768: KV 4.00 GiB" in out
    assert "weights:  unknown" in out


def test_estimate_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = FIXTURES / "llama-3.1-8b.config.json"
    assert main(["estimate", "--hf-config", str(cfg), "--kv-dtype", "int3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'int3'" in err and "q8_0" in err
    assert main(["estimate", "--gguf", str(tmp_path / "absent.gguf")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "absent.gguf") in err and err.count("\n") == 1


# --------------------------------------------------------------------------- plan


def test_plan_preallocated_forward(physics: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["plan", "--physics", str(physics), "--engine", "vllm", "--model", MODEL]
    args += ["--device", H100, "--total-gib", "80", "--used-gib", "0", "--ctx", "32768"]
    doc = run_json(capsys, args)
    assert doc["gpu_memory_utilization"] == 0.2
    assert doc["required_bytes"] == 12 * GIB
    assert doc["kv_cache_memory_bytes"] == 4 * GIB
    assert (doc["fits"], doc["source"]) == (True, "calibrated")
    assert doc["command"] == [
        "vllm",
        "serve",
        MODEL,
        "--max-model-len",
        "32768",
        "--gpu-memory-utilization",
        "0.2",
        "--port",
        "8000",
    ]
    assert doc["docker_command"][:6] == [
        "docker",
        "run",
        "--gpus",
        "all",
        "-p",
        "127.0.0.1:8300:8000",
    ]
    doc = run_json(capsys, [*args, "--kv-cache-bytes"])
    assert doc["command"][5:7] == ["--kv-cache-memory-bytes", str(4 * GIB)]


def test_plan_preallocated_inverse(physics: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["plan", "--physics", str(physics), "--engine", "vllm", "--model", MODEL]
    args += ["--device", H100, "--total-gib", "80", "--used-gib", "0"]
    doc = run_json(capsys, [*args, "--budget-gib", "72", "--margin", "0"])
    assert doc["max_context"] == 524_288 and doc["gpu_memory_utilization"] == 0.9


def test_plan_refused_exits_0_with_fits_false(
    physics: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["plan", "--physics", str(physics), "--engine", "vllm", "--model", MODEL]
    args += ["--device", H100, "--total-gib", "80", "--used-gib", "70", "--ctx", "32768"]
    doc = run_json(capsys, args)
    assert doc["fits"] is False and doc["command"] is None
    assert doc["used_by_others_bytes"] == 70 * GIB
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("REFUSED: vllm")
    assert "command:" not in out


def test_plan_device_total_from_calibration_and_nvml_unavailable(
    physics: Path, capsys: pytest.CaptureFixture[str], no_nvml: None
) -> None:
    args = ["plan", "--physics", str(physics), "--engine", "vllm", "--model", MODEL]
    doc = run_json(capsys, [*args, "--device", H100, "--ctx", "32768"])
    assert doc["total_bytes"] == 80 * GIB and doc["used_by_others_bytes"] == 0
    assert any("NVML unavailable" in m for m in doc["messages"])
    assert any("taken as 0" in m for m in doc["messages"])


def test_plan_used_memory_from_nvml(
    physics: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = {
        "nvmlInit": lambda: None,
        "nvmlShutdown": lambda: None,
        "nvmlDeviceGetCount": lambda: 2,
        "nvmlDeviceGetHandleByIndex": lambda i: i,
        "nvmlDeviceGetName": lambda h: ["NVIDIA RTX 4090", H100][h],
        "nvmlDeviceGetMemoryInfo": lambda h: SimpleNamespace(total=80 * GIB, used=70 * GIB),
    }
    for name, fn in fake.items():
        monkeypatch.setattr(pynvml, name, fn)
    args = ["plan", "--physics", str(physics), "--engine", "vllm", "--model", MODEL]
    doc = run_json(capsys, [*args, "--device", H100, "--ctx", "32768"])
    assert doc["used_by_others_bytes"] == 70 * GIB and doc["fits"] is False
    assert any("GPU 1" in m for m in doc["messages"])


def test_plan_other_device_falls_back_to_theory(
    physics: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    args = ["plan", "--physics", str(physics), "--engine", "vllm", "--model", MODEL]
    args += ["--device", "NVIDIA L4", "--total-gib", "24", "--used-gib", "0", "--ctx", "2048"]
    doc = run_json(capsys, [*args, "--gguf", str(gguf)])
    assert doc["source"] == "theory"
    assert doc["required_bytes"] == 9_978_880 + 2048 * 4096
    assert any(f"calibrated on {H100}, not NVIDIA L4; using theory" in m for m in doc["messages"])
    # without metadata: a one-line error naming the database and the flags
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(physics) in err and "--gguf" in err and err.count("\n") == 1


def test_plan_on_demand_guardrail(physics: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["plan", "--physics", str(physics), "--engine", "ollama", "--model", "llama3.1:8b"]
    args += ["--device", H100, "--total-gib", "24", "--used-gib", "16", "--ctx", "8192"]
    doc = run_json(capsys, args)
    # 5 GiB + 8192 x 128 KiB = 6 GiB; + 1.2 GiB margin <= 8 GiB free
    assert (doc["fits"], doc["required_bytes"], doc["max_context"]) == (True, 6 * GIB, 14_745)
    assert doc["gpu_memory_utilization"] is None and doc["command"] is None


@pytest.mark.parametrize(
    ("base", "cost", "total_gib", "ctx", "budget_gib"),
    [
        (7_340_032_000.0, 131_072.0, 80.0, 32_768, 40.0),
        (1_234_567_890.5, 57_344.0, 24.0, 100_000, 20.0),
        (16_106_127_360.0, 196_608.25, 141.0, 131_072, 120.5),
    ],
)
def test_plan_reproduces_the_formula_and_its_inverse_with_the_default_margin(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    base: float,
    cost: float,
    total_gib: float,
    ctx: int,
    budget_gib: float,
) -> None:
    db = tmp_path / "physics.yaml"
    write_entries(
        db,
        [
            PhysicsEntry(
                engine="vllm",
                model="vl_org/m",
                device="GPU X",
                probe="nvml",
                base_bytes=base,
                cost_per_token_bytes=cost,
                r2=0.999,
                n_points=5,
                points=(),
                engine_starts=3,
            )
        ],
    )
    args = ["plan", "--physics", str(db), "--engine", "vllm", "--model", "vl_org/m"]
    args += ["--device", "GPU X", "--total-gib", str(total_gib), "--used-gib", "0"]
    total = total_gib * GIB
    doc = run_json(capsys, [*args, "--ctx", str(ctx)])
    expected = (base + ctx * cost) / total + 0.05
    assert abs(doc["gpu_memory_utilization"] - expected) <= 0.005
    assert doc["gpu_memory_utilization"] >= expected  # rounded up, never under-allocated
    doc = run_json(capsys, [*args, "--budget-gib", str(budget_gib)])
    assert abs(doc["max_context"] - (budget_gib * GIB - base) / cost) <= 256


# --------------------------------------------------------------------------- settings (item 3)


def test_two_kv_dtypes_both_stay_and_plan_picks_the_one_asked_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two calibrations of one model, f16 and q8_0 KV cache, through the runner's own path:
    journal records -> outcome -> physics.yaml."""
    from vramphysics.outcome import build_outcome
    from vramphysics.records import CalibrationPoint, ModelInfo

    db = tmp_path / "physics.yaml"
    for kv, cost in (("f16", 131_072), ("q8_0", 69_632)):
        settings = {"kv_cache_type": kv, "num_parallel": 1, "host": "127.0.0.1"}
        info = ModelInfo("ol_llama3.1:8b", "s", "ollama", "0.9", True, None, None, settings)
        points = [
            CalibrationPoint(
                "ol_llama3.1:8b", "ollama", c, "nvml", H100, 5 * GIB + c * cost, 0, 0, 5, 1.0, "0.9"
            )
            for c in (2048, 4096, 8192)
        ]
        write_entries(db, build_outcome([info, *points]).entries)
    entries = load(db)
    assert sorted(e.settings_tag.split("#")[0] for e in entries) == [
        "kv=f16,np=1",
        "kv=q8_0,np=1",
    ]
    args = ["plan", "--physics", str(db), "--engine", "ollama", "--model", "ol_llama3.1:8b"]
    args += ["--device", H100, "--total-gib", "80", "--used-gib", "0", "--ctx", "8192"]
    doc = run_json(capsys, [*args, "--settings", "kv=q8_0"])
    assert doc["cost_per_token_bytes"] == pytest.approx(69_632)
    assert doc["settings_tag"].startswith("kv=q8_0,np=1#")
    doc = run_json(capsys, [*args, "--settings", "kv=f16"])
    assert doc["cost_per_token_bytes"] == pytest.approx(131_072)
    # without --settings: never one picked silently; a line listing both tags
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "kv=f16,np=1#" in err and "kv=q8_0,np=1#" in err
    # settings that match none: the tags that exist
    assert main([*args, "--settings", "kv=q4_0"]) == 2
    err = capsys.readouterr().err
    assert "kv=q4_0" in err and "kv=q8_0,np=1#" in err


# --------------------------------------------------------------------------- edge cases (item 10)


def test_total_zero_and_no_cost_are_clear_errors(
    tmp_path: Path, physics: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["plan", "--physics", str(physics), "--engine", "vllm", "--model", MODEL]
    args += ["--device", H100, "--used-gib", "0", "--ctx", "1024"]
    assert main([*args, "--total-gib", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--total-gib" in err and "internal error" not in err
    db = tmp_path / "flat.yaml"
    flat = PhysicsEntry(
        engine="vllm", model=MODEL, device=H100, base_bytes=GIB, cost_per_token_bytes=0.0
    )
    write_entries(db, [flat])
    bad = ["plan", "--physics", str(db), "--engine", "vllm", "--model", MODEL, "--device", H100]
    assert main([*bad, "--total-gib", "80", "--used-gib", "0", "--ctx", "1024"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(db) in err and "cost per token" in err


def test_engine_must_be_one_we_know(physics: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["plan", "--physics", str(physics), "--engine", "vLLM", "--model", MODEL]
    with pytest.raises(SystemExit) as info:
        main([*args, "--device", H100, "--total-gib", "80", "--ctx", "1024"])
    assert info.value.code == 2
    assert "invalid choice: 'vLLM'" in capsys.readouterr().err


def test_llamacpp_plan_gives_llama_cpp_advice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "physics.yaml"
    write_entries(
        db,
        [
            PhysicsEntry(
                engine="llamacpp",
                model="llamacpp:tiny.gguf",
                device="cpu",
                base_bytes=GIB,
                cost_per_token_bytes=4096.0,
            )
        ],
    )
    args = ["plan", "--physics", str(db), "--engine", "llamacpp", "--model", "llamacpp:tiny.gguf"]
    assert (
        main([*args, "--device", "cpu", "--total-gib", "8", "--used-gib", "0", "--ctx", "4096"])
        == 0
    )
    out = capsys.readouterr().out
    assert "llama-server: -c 4096" in out
    assert "ollama" not in out.lower() and "num_ctx" not in out


def test_inverse_is_capped_at_max_position_embeddings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "hidden_size": 256,
                "torch_dtype": "bfloat16",
                "max_position_embeddings": 4096,
            }
        )
    )
    save_file({"w": np.zeros((1024, 1024), dtype=np.float16)}, str(folder / "model.safetensors"))
    args = ["plan", "--physics", str(tmp_path / "none.yaml"), "--engine", "vllm"]
    args += ["--model", "vl_org/tiny", "--device", "GPU X", "--total-gib", "24", "--used-gib", "0"]
    doc = run_json(capsys, [*args, "--budget-gib", "20", "--hf-config", str(folder)])
    assert (doc["ctx"], doc["max_context"], doc["fits"]) == (4096, 4096, True)
    assert any("maximum context of 4096" in m for m in doc["messages"])


# --------------------------------------------------------------------------- engine version


def _installed_version(monkeypatch: pytest.MonkeyPatch, version: str | None) -> None:
    """The engine's advice tells plan which version is installed here (the fact it gives)."""
    real_get = registry.get

    def get(name: str) -> registry.EngineInfo:
        info = real_get(name)

        def advice(plan: Any, request: registry.AdviceRequest) -> registry.Advice:
            given = info.advice(plan, request)
            facts = {**given.facts, INSTALLED_VERSION_FACT: version}
            return dataclasses.replace(given, facts=facts)

        return dataclasses.replace(info, advice=advice)

    monkeypatch.setattr(registry, "get", get)


def _plan_llamacpp(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], measured_with: str, *flags: str
) -> tuple[dict[str, Any], str]:
    db = tmp_path / "physics.yaml"
    entry = PhysicsEntry(
        engine="llamacpp",
        model="llamacpp:tiny.gguf",
        device="cpu",
        base_bytes=GIB,
        cost_per_token_bytes=4096.0,
        engine_version=measured_with,
        settings={"n_gpu_layers": -1},
    )
    write_entries(db, [entry])
    args = ["plan", "--physics", str(db), "--engine", "llamacpp", "--model", "llamacpp:tiny.gguf"]
    args += ["--device", "cpu", "--total-gib", "8", "--used-gib", "0", "--ctx", "4096", *flags]
    doc = run_json(capsys, args)
    assert main(args) == 0
    return doc, capsys.readouterr().out


def test_plan_warns_when_the_calibration_was_measured_with_another_engine_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _installed_version(monkeypatch, "llama-cpp-python 0.3.16")
    doc, text = _plan_llamacpp(tmp_path, capsys, "llama-cpp-python 0.3.9")
    (warning,) = [m for m in doc["messages"] if m.startswith("warning: ")]
    assert "measured with llama-cpp-python 0.3.9" in warning
    assert "llama-cpp-python 0.3.16 is installed here" in warning
    assert f"- {warning}" in text.splitlines()


@pytest.mark.parametrize(
    ("measured", "installed"),
    [
        ("llama-cpp-python 0.3.16", "llama-cpp-python 0.3.16"),  # the same version
        ("llama-cpp-python 0.3.9", None),  # the engine cannot tell
        ("llama-cpp-python 0.3.9", "llama-cpp-python (not installed)"),
        ("unknown", "llama-cpp-python 0.3.16"),  # typed by hand, or an old entry
        ("llama-server", "llama-cpp-python 0.3.16"),  # no version in the entry
    ],
)
def test_plan_says_nothing_about_versions_when_equal_or_unknown(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    measured: str,
    installed: str | None,
) -> None:
    _installed_version(monkeypatch, installed)
    doc, text = _plan_llamacpp(tmp_path, capsys, measured)
    assert not [m for m in doc["messages"] if "installed here" in m]
    assert "installed here" not in text


def test_plan_from_theory_has_no_version_warning(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tiny_gguf: Path,
) -> None:
    _installed_version(monkeypatch, "llama-cpp-python 0.3.16")
    args = ["plan", "--physics", str(tmp_path / "none.yaml"), "--engine", "llamacpp"]
    args += ["--model", "llamacpp:tiny.gguf", "--device", "cpu", "--total-gib", "8"]
    args += ["--used-gib", "0", "--ctx", "1024", "--gguf", str(tiny_gguf)]
    doc = run_json(capsys, args)
    assert doc["source"] == "theory"
    assert not [m for m in doc["messages"] if "installed here" in m]
