"""allocate.py: the planner's arithmetic, worked by hand (GiB = 2**30 bytes)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from vramphysics.allocate import (
    DeviceMemory,
    Physics,
    SheetRow,
    device_memory,
    max_context,
    memory_kind,
    plan_for,
    plan_on_demand,
    plan_preallocated,
    plan_sheet_rows,
    required_bytes,
    resolve_physics,
    select_physics,
    vllm_utilization,
)
from vramphysics.engines.vllm.advice import docker_command, vllm_command
from vramphysics.errors import ConfigError
from vramphysics.physics_db import PhysicsEntry
from vramphysics.probes import GpuInfo, device_label
from vramphysics.theory import Theory

GIB = 2**30
H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-80GB"


def entry(
    *,
    device: str = H100,
    probe: str = "vllm-metrics",
    base: float = 8 * GIB,
    cost: float = 131_072,
    engine: str = "vllm",
    model: str = "meta-llama/Llama-3.1-8B-Instruct",
    r2: float | None = 0.999,
    total: int | None = None,
) -> PhysicsEntry:
    return PhysicsEntry(
        engine=engine,
        model=model,
        device=device,
        probe=probe,
        base_bytes=base,
        cost_per_token_bytes=cost,
        r2=r2,
        n_points=5,
        points=(),
        engine_starts=5,
        device_total_bytes=total,
    )


def theory(weights: int | None = 16 * GIB, kv: float = 131_072, n_seq: int = 1) -> Theory:
    return Theory(
        source="hf-config",
        arch="llama",
        n_layers=32,
        n_kv_heads=8,
        k_head_dim=128,
        v_head_dim=128,
        kv_dtype="bf16",
        kv_bytes_per_token=kv,
        weights_bytes=weights,
        n_seq=n_seq,
    )


# --------------------------------------------------------------------------- the formula


def test_required_bytes() -> None:
    # 8 GiB + 32768 tokens x 128 KiB = 8 GiB + 4 GiB
    assert required_bytes(8 * GIB, 131_072, 32_768) == 12 * GIB


def test_utilization_is_required_over_total_plus_margin() -> None:
    # 12 GiB / 80 GiB = 0.15, + 0.05 = 0.2 exactly (no float noise rounding it up to 0.201)
    assert vllm_utilization(12 * GIB, 80 * GIB) == 0.2
    # 7 / 100 + 0.05 is 0.12000000000000001 in floats: still 0.12, not 0.121
    assert vllm_utilization(7 * GIB, 100 * GIB) == 0.12
    # 73.4 / 1000 + 0.05 = 0.1234 -> rounded UP to 0.124, never down to 0.123
    assert vllm_utilization(73.4, 1000) == 0.124
    assert vllm_utilization(73.4, 1000, margin=0.0) == 0.074


def test_utilization_is_clamped() -> None:
    assert vllm_utilization(1, 1000, margin=0.0) == 0.05  # 0.001 -> min 0.05
    assert vllm_utilization(990, 1000) == 0.98  # 1.04 -> max 0.98
    assert vllm_utilization(500, 1000, max_util=0.5) == 0.5
    with pytest.raises(ValueError):
        vllm_utilization(1, 0)


def test_max_context_closed_form() -> None:
    # (72 - 8) GiB / 128 KiB = 64 x 8192
    assert max_context(72 * GIB, 8 * GIB, 131_072) == 524_288
    assert max_context(8 * GIB + 1.5 * 131_072, 8 * GIB, 131_072) == 1  # floor
    assert max_context(7 * GIB, 8 * GIB, 131_072) == 0  # base alone does not fit
    with pytest.raises(ValueError):
        max_context(72 * GIB, 8 * GIB, 0)
    with pytest.raises(ValueError):
        max_context(72 * GIB, 8 * GIB, -1)


# --------------------------------------------------------------------------- vLLM plans


def test_plan_preallocated_forward() -> None:
    plan = plan_preallocated(entry(), ctx=32_768, total_bytes=80 * GIB)
    assert plan.required_bytes == 12 * GIB
    assert plan.gpu_memory_utilization == 0.2
    assert plan.kv_cache_memory_bytes == 32_768 * 131_072 == 4 * GIB
    assert plan.fits is True
    assert (plan.source, plan.probe, plan.engine, plan.device) == (
        "calibrated",
        "vllm-metrics",
        "vllm",
        H100,
    )
    # longest context in what is free: min(80, 0.98 x 80 = 78.4) - 0.05 x 80 - 8 = 66.4 GiB,
    # / 128 KiB = 66.4 x 8192 = 543948.8
    assert plan.max_context == 543_948


def test_kv_cache_bytes_cover_whole_blocks() -> None:
    # ctx 1000 occupies 63 blocks of 16 tokens = 1008 tokens
    plan = plan_preallocated(entry(), ctx=1000, total_bytes=80 * GIB)
    assert plan.kv_cache_memory_bytes == 1008 * 131_072


def test_plan_preallocated_refused_when_others_hold_the_memory() -> None:
    # vLLM would reserve 0.2 x 80 = 16 GiB; 70 GiB used by others leaves 10 GiB
    plan = plan_preallocated(
        entry(), ctx=32_768, total_bytes=80 * GIB, used_by_others_bytes=70 * GIB
    )
    assert plan.fits is False
    assert plan.gpu_memory_utilization == 0.2
    assert plan.free_bytes == 10 * GIB
    assert any("refused" in m and "used by other processes" in m for m in plan.messages)
    # 64 GiB used leaves exactly the 16 GiB it reserves: fits
    edge = plan_preallocated(
        entry(), ctx=32_768, total_bytes=80 * GIB, used_by_others_bytes=64 * GIB
    )
    assert edge.fits is True


def test_plan_preallocated_refused_above_the_cap() -> None:
    # 8 GiB + 614400 x 128 KiB = 8 + 75 = 83 GiB > 80 GiB
    plan = plan_preallocated(entry(), ctx=614_400, total_bytes=80 * GIB)
    assert plan.fits is False
    assert plan.gpu_memory_utilization == 0.98
    assert any("above the 0.98 cap" in m for m in plan.messages)


def test_plan_preallocated_inverse() -> None:
    # margin 0: (72 - 8) GiB / 128 KiB = 524288 tokens, and 72 / 80 = 0.9
    plan = plan_preallocated(entry(), budget_bytes=72 * GIB, total_bytes=80 * GIB, margin=0.0)
    assert (plan.max_context, plan.ctx) == (524_288, 524_288)
    assert plan.required_bytes == 72 * GIB
    assert plan.gpu_memory_utilization == 0.9
    assert plan.fits is True
    # with margin 0.05 the budget still holds (72 - 8) GiB / 128 KiB = 524288 tokens: the
    # budget is the model's memory, the margin goes on top: 72 / 80 + 0.05 = 0.95
    plan = plan_preallocated(entry(), budget_bytes=72 * GIB, total_bytes=80 * GIB)
    assert plan.max_context == 524_288
    assert plan.gpu_memory_utilization == 0.95


def test_plan_preallocated_inverse_budget_below_base() -> None:
    plan = plan_preallocated(entry(), budget_bytes=7 * GIB, total_bytes=80 * GIB)
    # 7 GiB < 8 GiB base
    assert plan.fits is False and plan.max_context == 0 and plan.ctx is None
    with pytest.raises(ValueError, match="refused"):
        vllm_command(plan, "m")


def test_plan_preallocated_needs_exactly_one_target() -> None:
    with pytest.raises(ValueError):
        plan_preallocated(entry(), total_bytes=80 * GIB)
    with pytest.raises(ValueError):
        plan_preallocated(entry(), ctx=1, budget_bytes=GIB, total_bytes=80 * GIB)


# --------------------------------------------------------------------------- Ollama plans


def test_plan_on_demand_guardrail() -> None:
    e = entry(engine="ollama", probe="ollama-ps", base=5 * GIB)
    # 5 GiB + 8192 x 128 KiB = 6 GiB; margin 0.05 x 24 = 1.2 GiB; free 24 - 16 = 8 GiB
    ok = plan_on_demand(e, ctx=8192, total_bytes=24 * GIB, used_by_others_bytes=16 * GIB)
    assert ok.required_bytes == 6 * GIB
    assert ok.fits is True
    # longest: (8 - 1.2 - 5) GiB / 128 KiB = 1.8 x 8192 = 14745.6
    assert ok.max_context == 14_745
    assert ok.gpu_memory_utilization is None
    # 17 GiB used: 6 + 1.2 = 7.2 GiB > 7 GiB free
    no = plan_on_demand(e, ctx=8192, total_bytes=24 * GIB, used_by_others_bytes=17 * GIB)
    assert no.fits is False
    assert any("refused" in m for m in no.messages)
    # margin 0: fits = required <= free; (8 - 5) GiB / 128 KiB = 24576
    bare = plan_on_demand(e, total_bytes=24 * GIB, used_by_others_bytes=16 * GIB, margin=0.0)
    assert (bare.max_context, bare.ctx, bare.fits) == (24_576, 24_576, True)


def test_plan_on_demand_theory_counts_parallel_sequences() -> None:
    t = theory(weights=4 * GIB, kv=65_536, n_seq=4)
    plan = plan_on_demand(t, ctx=8192, total_bytes=24 * GIB, margin=0.0)
    # 4 GiB + 8192 tokens x 4 sequences x 64 KiB = 4 + 2 GiB
    assert plan.required_bytes == 6 * GIB
    assert plan.source == "theory"


# --------------------------------------------------------------------------- calibrated or theory


def test_select_physics_prefers_the_direct_probe_on_this_device() -> None:
    entries = [
        entry(probe="nvml", base=9 * GIB),
        entry(probe="vllm-metrics"),
        entry(probe="process"),
        entry(device=A100, probe="vllm-metrics", base=1 * GIB),
    ]
    chosen = select_physics(entries, "vllm", "meta-llama/Llama-3.1-8B-Instruct", H100)
    assert chosen is not None and chosen.probe == "vllm-metrics" and chosen.device == H100
    assert (
        select_physics(entries[:1], "vllm", "meta-llama/Llama-3.1-8B-Instruct", H100)
        == (entries[0])
    )


def test_entry_for_another_device_is_never_used_silently() -> None:
    entries = [entry(device=A100)]
    assert select_physics(entries, "vllm", "meta-llama/Llama-3.1-8B-Instruct", H100) is None
    phys = resolve_physics(
        entries, "vllm", "meta-llama/Llama-3.1-8B-Instruct", H100, theory=theory()
    )
    assert phys.source == "theory"
    assert phys.base_bytes == 16 * GIB and phys.cost_per_token_bytes == 131_072
    assert f"calibrated on {A100}, not {H100}; using theory" in phys.messages
    plan = plan_preallocated(phys, ctx=32_768, total_bytes=80 * GIB)
    # (16 + 4) GiB / 80 + 0.05 = 0.3
    assert (plan.source, plan.gpu_memory_utilization, plan.device) == ("theory", 0.3, H100)
    assert any("not " + H100 in m for m in plan.messages)


def test_no_calibration_and_no_theory_is_an_error() -> None:
    with pytest.raises(ConfigError, match=f"calibrated on {A100}"):
        resolve_physics([entry(device=A100)], "vllm", "meta-llama/Llama-3.1-8B-Instruct", H100)
    with pytest.raises(ConfigError, match="no weights size"):
        plan_preallocated(theory(weights=None), ctx=1024, total_bytes=80 * GIB)


def test_calibrated_entry_wins_over_theory() -> None:
    phys = resolve_physics(
        [entry()], "vllm", "meta-llama/Llama-3.1-8B-Instruct", H100, theory=theory()
    )
    assert (phys.source, phys.base_bytes) == ("calibrated", 8 * GIB)


# --------------------------------------------------------------------------- command lines


def test_vllm_and_docker_commands() -> None:
    plan = plan_preallocated(entry(), ctx=32_768, total_bytes=80 * GIB)
    assert vllm_command(plan, "meta-llama/Llama-3.1-8B-Instruct") == [
        "vllm",
        "serve",
        "meta-llama/Llama-3.1-8B-Instruct",
        "--max-model-len",
        "32768",
        "--gpu-memory-utilization",
        "0.2",
        "--port",
        "8000",
    ]
    assert vllm_command(plan, "m", port=9000, extra=["--enforce-eager"], kv_cache_bytes=True) == [
        "vllm",
        "serve",
        "m",
        "--max-model-len",
        "32768",
        "--kv-cache-memory-bytes",
        str(4 * GIB),
        "--port",
        "9000",
        "--enforce-eager",
    ]
    assert docker_command(plan, "m") == [
        "docker",
        "run",
        "--gpus",
        "all",
        "-p",
        "127.0.0.1:8300:8000",
        "--ipc=host",
        "-v",
        "~/.cache/huggingface:/root/.cache/huggingface",
        "vllm/vllm-openai:latest",
        "--model",
        "m",
        "--max-model-len",
        "32768",
        "--gpu-memory-utilization",
        "0.2",
    ]


def test_plan_to_dict_keys() -> None:
    d = plan_preallocated(entry(), ctx=32_768, total_bytes=80 * GIB).to_dict()
    for key in (
        "gpu_memory_utilization",
        "required_bytes",
        "max_context",
        "fits",
        "source",
        "kv_cache_memory_bytes",
    ):
        assert key in d
    assert json.loads(json.dumps(d)) == d


def test_physics_record_plans_directly() -> None:
    phys = Physics(source="calibrated", base_bytes=8 * GIB, cost_per_token_bytes=131_072)
    plan = plan_preallocated(phys, ctx=32_768, total_bytes=80 * GIB, model="m", device="d")
    assert (plan.gpu_memory_utilization, plan.model, plan.device) == (0.2, "m", "d")


# --------------------------------------------------------------------------- report sheet


def test_plan_sheet_rows() -> None:
    entries = [
        entry(probe="nvml", base=9 * GIB),
        entry(),  # vllm-metrics: preferred
        entry(device=A100, base=70 * GIB, total=80 * GIB),
        entry(device="unknown GPU"),  # no total anywhere: left out
    ]
    rows = plan_sheet_rows(entries, {H100: 80 * GIB})
    assert [(r.device, r.probe) for r in rows] == [(A100, "vllm-metrics"), (H100, "vllm-metrics")]
    h100 = rows[1]
    assert isinstance(h100, SheetRow)
    utils = dict(h100.utilization)
    # 4096: (8 + 0.5) / 80 + 0.05 = 0.15625 -> 0.157; 131072: (8 + 16) / 80 + 0.05 = 0.35
    assert utils[4096] == 0.157
    assert utils[32768] == 0.2
    assert utils[131072] == 0.35
    # at 0.9 with margin 0.05: (0.85 x 80 - 8) GiB / 128 KiB = 60 x 8192
    assert h100.max_context_at_90 == 491_520
    a100 = dict(rows[0].utilization)
    # 70 + 16 = 86 GiB at 131072 does not fit in 80 GiB
    assert a100[131072] is None
    assert a100[4096] == math.ceil((70.5 / 80 + 0.05) * 1000) / 1000 == 0.932
    assert json.loads(json.dumps(h100.to_dict()))["utilization"]["4096"] == 0.157
    assert len(plan_sheet_rows(entries, {H100: 80 * GIB}, best_probe_only=False)) == 3


# --------------------------------------------------------------------------- engine kinds (item 5)


def test_memory_kind_per_engine() -> None:
    assert memory_kind("vllm") == "preallocated"
    assert memory_kind("ollama") == "on_demand"
    assert memory_kind("llamacpp") == "on_demand"


def test_plan_for_uses_the_engine_rule() -> None:
    # 68 GiB needed, 70 GiB free of 80: on demand it fits (68 <= 70); vLLM reserves
    # (68 / 80 + 0.05) x 80 = 0.9 x 80 = 72 GiB > 70 GiB: refused
    e = entry(base=68 * GIB - 131_072 * 1024)
    args = dict(ctx=1024, total_bytes=80 * GIB, used_by_others_bytes=10 * GIB, margin=0.05)
    assert plan_for(e, engine="vllm", **args).fits is False
    assert plan_for(e, engine="vllm", **args).gpu_memory_utilization == 0.9
    assert plan_for(e, engine="llamacpp", **dict(args, margin=0.0)).fits is True


# --------------------------------------------------------------------------- edge cases (item 10)

ODD_TOTAL = 25_769_803_776 - 123_456_789  # a total that is no round number of GiB


@pytest.mark.parametrize("used", [0, 1_234_567_891, 7_777_777_777, 12_345_678_901])
def test_the_longest_context_named_passes_the_forward_check(used: int) -> None:
    e = entry(base=5_000_000_000, cost=98_765)
    plan = plan_preallocated(e, ctx=1024, total_bytes=ODD_TOTAL, used_by_others_bytes=used)
    longest = plan.max_context
    assert longest is not None and longest > 0
    at_max = plan_preallocated(e, ctx=longest, total_bytes=ODD_TOTAL, used_by_others_bytes=used)
    assert at_max.fits, at_max.messages
    assert at_max.gpu_memory_utilization is not None
    assert at_max.gpu_memory_utilization * ODD_TOTAL <= ODD_TOTAL - used
    beyond = plan_preallocated(e, ctx=longest + 1, total_bytes=ODD_TOTAL, used_by_others_bytes=used)
    assert beyond.fits is False  # and it is the longest
    # the inverse names a context the forward check accepts, even for a budget of all free
    inv = plan_preallocated(
        e, budget_bytes=ODD_TOTAL - used, total_bytes=ODD_TOTAL, used_by_others_bytes=used
    )
    assert inv.fits and inv.ctx == longest


def test_no_cost_per_token_is_a_clear_error() -> None:
    for cost in (0.0, -5.0, math.nan):
        for plan in (plan_preallocated, plan_on_demand):
            with pytest.raises(ConfigError, match="cost per token must be a number > 0"):
                plan(entry(cost=cost), ctx=1024, total_bytes=80 * GIB)
    with pytest.raises(ConfigError, match="device total must be > 0"):
        plan_on_demand(entry(), ctx=1024, total_bytes=0)


def test_the_inverse_is_capped_at_the_models_maximum_context() -> None:
    capped = dataclasses.replace(
        resolve_physics([entry()], "vllm", "meta-llama/Llama-3.1-8B-Instruct", H100),
        max_context_tokens=131_072,
    )
    plan = plan_preallocated(capped, budget_bytes=72 * GIB, total_bytes=80 * GIB)
    assert (plan.ctx, plan.max_context, plan.fits) == (131_072, 131_072, True)
    assert any("model's maximum context of 131072" in m for m in plan.messages)
    demand = plan_on_demand(capped, total_bytes=80 * GIB)
    assert demand.max_context == 131_072
    over = plan_preallocated(capped, ctx=200_000, total_bytes=80 * GIB)
    assert over.fits is False


def test_the_cap_comes_from_the_calibrations_theory_or_the_given_metadata() -> None:
    e = dataclasses.replace(entry(), theory={"max_context_tokens": 8192})
    phys = resolve_physics([e], "vllm", e.model, H100)
    assert phys.max_context_tokens == 8192
    t = dataclasses.replace(theory(), max_context_tokens=4096)
    assert resolve_physics([entry()], "vllm", e.model, H100, theory=t).max_context_tokens == 4096


# --------------------------------------------------------------------------- settings (item 3)

F16 = {"kv_cache_type": "f16", "num_parallel": 1}
Q8 = {"kv_cache_type": "q8_0", "num_parallel": 1, "flash_attention": "1"}


def test_two_settings_are_never_chosen_between_silently() -> None:
    f16 = dataclasses.replace(entry(engine="ollama"), settings=F16)
    q8 = dataclasses.replace(entry(engine="ollama", cost=69_632), settings=Q8)
    model = f16.model
    with pytest.raises(ConfigError) as info:
        resolve_physics([f16, q8], "ollama", model, H100)
    assert f16.settings_tag in str(info.value) and q8.settings_tag in str(info.value)
    phys = resolve_physics([f16, q8], "ollama", model, H100, settings="kv=q8_0")
    assert (phys.cost_per_token_bytes, phys.settings_tag) == (69_632, q8.settings_tag)
    exact = resolve_physics([f16, q8], "ollama", model, H100, settings=f16.settings_tag)
    assert exact.cost_per_token_bytes == 131_072
    # none matches: theory when given, saying which settings exist; else an error
    fallback = resolve_physics([f16, q8], "ollama", model, H100, theory(), settings="kv=q4_0")
    assert fallback.source == "theory"
    assert q8.settings_tag in fallback.messages[0]
    with pytest.raises(ConfigError, match="no calibration .* has settings 'kv=q4_0'"):
        resolve_physics([f16, q8], "ollama", model, H100, settings="kv=q4_0")
    with pytest.raises(ConfigError, match="match 2 calibrations"):
        resolve_physics([f16, q8], "ollama", model, H100, settings="np=1")


def test_sheet_has_one_row_per_settings() -> None:
    f16 = dataclasses.replace(entry(total=80 * GIB), settings=F16)
    q8 = dataclasses.replace(entry(total=80 * GIB, cost=65_536), settings=Q8)
    rows = plan_sheet_rows([f16, q8], {})
    assert sorted(r.settings_tag for r in rows) == sorted([f16.settings_tag, q8.settings_tag])


# --------------------------------------------------------------------------- pinned GPUs (item 4)


def gpu(index: int, total_gib: float, free_gib: float, name: str = H100) -> GpuInfo:
    total, free = int(total_gib * GIB), int(free_gib * GIB)
    return GpuInfo(index, name, total, total - free, free, "550.54")


def test_device_memory_of_the_pinned_gpus() -> None:
    gpus = [gpu(0, 80, 70), gpu(1, 24, 20, "NVIDIA GeForce RTX 4090"), gpu(2, 80, 10)]
    # pinned to GPU 1: its own total and free, not GPU 0's
    assert device_memory(gpus, (1,)) == DeviceMemory(
        "NVIDIA GeForce RTX 4090", 24 * GIB, 20 * GIB, (1,)
    )
    # two GPUs: the probe's label of the two and their summed total and free (not the
    # smallest GPU's: a calibration over both is keyed and summed so)
    assert device_memory(gpus, (0, 1)) == DeviceMemory(
        f"{H100} + NVIDIA GeForce RTX 4090", 104 * GIB, 90 * GIB, (0, 1)
    )
    assert device_memory(gpus, (0, 2)) == DeviceMemory(f"2x {H100}", 160 * GIB, 80 * GIB, (0, 2))
    # not pinned: every visible GPU
    assert device_memory(gpus, None) == DeviceMemory(
        f"{H100} + NVIDIA GeForce RTX 4090 + {H100}", 184 * GIB, 100 * GIB, (0, 1, 2)
    )
    # pinned to none (CPU), to a GPU NVML does not show, or no NVML: unknown
    assert device_memory(gpus, ()) is None
    assert device_memory(gpus, (5,)) is None
    assert device_memory([], None) is None
    # the configured free figure replaces NVML's; without a GPU it is the whole device
    assert device_memory(gpus, (1,), assume_free_bytes=GIB) == DeviceMemory(
        "NVIDIA GeForce RTX 4090", 24 * GIB, GIB, (1,)
    )
    assert device_memory([], None, assume_free_bytes=GIB) == DeviceMemory("cpu", GIB, GIB)


def test_two_alike_pinned_gpus_are_named_and_summed_as_the_probe_does() -> None:
    h200 = "NVIDIA H200"
    gpus = [gpu(0, 141, 140, h200), gpu(1, 141, 130, h200), gpu(2, 24, 24, "NVIDIA L4")]
    memory = device_memory(gpus, (0, 1))
    assert memory == DeviceMemory("2x NVIDIA H200", 282 * GIB, 270 * GIB, (0, 1))
    assert memory is not None and memory.name == device_label([h200, h200])
    # the configured free figure stands for the two together
    assert device_memory(gpus, (0, 1), assume_free_bytes=GIB) == DeviceMemory(
        "2x NVIDIA H200", 282 * GIB, GIB, (0, 1)
    )


def test_an_entry_without_recorded_settings_stands_in_only_when_none_matches() -> None:
    """A hand-written entry (no settings) serves any settings until a calibration with the
    engine's own settings exists; then that one is used."""
    from vramphysics.allocate import select_physics
    from vramphysics.physics_db import settings_tag

    q8 = {"kv_cache_type": "q8_0", "num_parallel": 1}
    hand = entry(base=9 * GIB)
    assert not hand.settings_known
    own = dataclasses.replace(entry(base=7 * GIB), settings=q8)
    tag = settings_tag(q8)
    assert select_physics([hand], "vllm", hand.model, H100, settings=tag) == hand
    assert resolve_physics([hand], "vllm", hand.model, H100, settings=tag).base_bytes == 9 * GIB
    assert select_physics([hand, own], "vllm", hand.model, H100, settings=tag) == own
    other = settings_tag({"kv_cache_type": "f16", "num_parallel": 1})
    assert select_physics([own], "vllm", hand.model, H100, settings=other) is None


def test_a_default_calibration_is_no_wildcard_and_hand_entries_do_not_force_settings() -> None:
    """A calibration with default settings (vLLM records no memory flags) is not taken for an
    fp8 start; a hand entry beside one calibration does not make `plan` ask for --settings."""
    from vramphysics.allocate import select_physics
    from vramphysics.physics_db import settings_tag

    default = dataclasses.replace(entry(), settings={"extra_args": [], "env_keys": []})
    assert default.settings_known
    fp8 = settings_tag({"extra_args": ["--kv-cache-dtype", "fp8"]})
    assert select_physics([default], "vllm", default.model, H100, settings=fp8) is None
    hand = entry(base=9 * GIB)
    assert resolve_physics([default, hand], "vllm", default.model, H100).base_bytes == 8 * GIB


def test_a_secret_in_the_arguments_does_not_change_the_settings_tag() -> None:
    """The journal stores `--api-key ***`; the live engine has the key: one tag for both."""
    from vramphysics.physics_db import settings_tag

    live = {"extra_args": ["--kv-cache-dtype", "fp8", "--api-key", "s3cret"]}
    stored = {"extra_args": ["--kv-cache-dtype", "fp8", "--api-key", "***"]}
    rotated = {"extra_args": ["--kv-cache-dtype", "fp8", "--api-key", "other"]}
    assert settings_tag(live) == settings_tag(stored) == settings_tag(rotated)
