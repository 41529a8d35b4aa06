"""From journal records to physics entries and report rows (outcome.build_outcome)."""

from __future__ import annotations

from typing import Any

import pytest
from bench_data import a_cell, a_request, stats

from vramphysics.outcome import build_outcome, engine_kv_fit, model_key
from vramphysics.records import (
    BenchResult,
    CalibrationPoint,
    ModelInfo,
    Record,
    RunHeader,
    Stats,
    StatusRow,
    WarningRow,
)

GIB = 2**30
MIB = 2**20
TINY = "llamacpp:tiny.gguf#ctx=2048#stream"


def header(devices: list[dict[str, Any]] | None = None) -> RunHeader:
    return RunHeader(
        run_id="r1",
        started_at="2026-01-01T00:00:00+00:00",
        host="box",
        platform="Linux",
        python="3.12",
        git_commit="abc",
        tool_version="0.1.0",
        config_path="config.yaml",
        setups_path="test_setups.yaml",
        setups=["demo"],
        probe="process",
        probe_reason="no GPU",
        devices=devices if devices is not None else [{"name": "cpu", "total_bytes": 16 * GIB}],
        driver="550.54",
        sweep_contexts=[512, 1024, 2048],
        argv=["runner.py"],
    )


def info(model: str = TINY, engine: str = "llamacpp", available: bool = True) -> ModelInfo:
    return ModelInfo(
        model=model,
        setup="demo",
        engine=engine,
        engine_version=f"{engine} 1.0",
        available=available,
        location="/m/x" if available else None,
        theory={"kv_bytes_per_token": 4096.0, "weights_bytes": 9_978_880},
        settings={"n_gpu_layers": -1},
    )


def point(
    ctx: int,
    measured: float,
    *,
    model: str = TINY,
    engine: str = "llamacpp",
    probe: str = "process",
    device: str = "cpu",
    components: dict[str, Any] | None = None,
    at: str = "",
) -> CalibrationPoint:
    return CalibrationPoint(
        model=model,
        engine=engine,
        ctx=ctx,
        probe=probe,
        device=device,
        measured_bytes=int(measured),
        peak_bytes=int(measured) + 1000,
        baseline_bytes=0,
        n_samples=20,
        ready_s=1.0,
        engine_version=f"{engine} 1.0",
        engine_components=components or {},
        at=at or f"2026-01-01T00:00:{ctx % 60:02d}+00:00",
    )


def status(
    model: str, s: str, reason: str = "", *, engine: str = "llamacpp", **kw: Any
) -> StatusRow:
    return StatusRow(model=model, engine=engine, status=s, reason=reason or s.lower(), **kw)


def bench(model: str = TINY, ctx: int = 2048) -> BenchResult:
    return BenchResult(
        model=model,
        engine="llamacpp",
        ctx=ctx,
        ttft_ms=12.5,
        output_tokens=64,
        prompt_tokens=17,
        token_source="engine-usage",
        decode_tokens_per_s=250.0,
        e2e_tokens_per_s=200.0,
        prefill_tokens_per_s=1360.0,
        setup_s=2.0,
        exec_s=0.32,
        cleanup_s=0.1,
        peak_bytes=80_000_000,
        probe="process",
        device="cpu",
        engine_version="llamacpp 1.0",
    )


def line(ctx: int, base: float = 1e8, cost: float = 4096.0) -> float:
    return base + ctx * cost


def test_model_key_strips_runtime_flags() -> None:
    assert model_key("llamacpp:tiny.gguf#ctx=2048#stream") == "llamacpp:tiny.gguf"
    assert model_key("OL_qwen2.5:7b#stream") == "OL_qwen2.5:7b"
    assert model_key("vl_Qwen/Qwen2-VL-7B#img_lim=2#vid_lim=0") == "vl_Qwen/Qwen2-VL-7B"
    assert model_key("qwen2.5:7b") == "qwen2.5:7b"


def test_points_become_an_entry_with_the_fit() -> None:
    records: list[Record] = [
        header(),
        info(),
        point(512, line(512)),  # 102_097_152
        point(1024, line(1024)),  # 104_194_304
        point(2048, line(2048)),  # 108_388_608
        bench(ctx=2048),
        status(TINY, "OK", "3 points"),
    ]
    out = build_outcome(records)
    assert len(out.entries) == 1
    e = out.entries[0]
    assert e.key == ("llamacpp", "llamacpp:tiny.gguf", "cpu", e.settings_tag, "process")
    assert e.settings == info().settings  # the run's settings key the entry
    assert e.base_bytes == pytest.approx(1e8, abs=0.1)
    assert e.cost_per_token_bytes == pytest.approx(4096.0, abs=1e-3)
    assert e.r2 == pytest.approx(1.0)
    assert e.n_points == 3
    assert e.points == ((512, 102_097_152.0), (1024, 104_194_304.0), (2048, 108_388_608.0))
    assert e.engine_starts == 3  # the benchmark ran in the 2048 start
    assert e.theory == {
        "kv_bytes_per_token": 4096.0,
        "weights_bytes": 9_978_880,
        "max_context_tokens": None,  # the model's own limit, for plan's cap, when known
    }
    assert e.engine_version == "llamacpp 1.0"
    assert e.calibrated_at == "2026-01-01T00:00:08+00:00"  # the last point's time (2048 % 60 = 8)
    assert e.device_total_bytes == 16 * GIB
    assert e.driver == "550.54"
    assert e.settings == {"n_gpu_layers": -1}

    (row,) = out.models
    assert (row.model, row.engine, row.status, row.reason) == (TINY, "llamacpp", "OK", "3 points")
    assert (row.device, row.probe) == ("cpu", "process")
    assert row.fit is not None and row.fit.n_points == 3
    assert row.measured_over_theory == pytest.approx(1.0, abs=1e-6)  # 4096 / 4096
    assert row.other_fits == ()
    assert out.status_counts() == {"OK": 1}
    assert out.engine_versions == {"llamacpp": "llamacpp 1.0"}
    assert [p.ctx for p in out.points] == [512, 1024, 2048]
    assert len(out.cells) == 1 and out.cells[0].n_measured == 1  # an old journal's request


def test_a_benchmark_at_another_context_counts_as_a_start() -> None:
    records: list[Record] = [
        info(),
        point(512, line(512)),
        point(1024, line(1024)),
        point(2048, line(2048)),
        bench(ctx=4096),
        status(TINY, "OK"),
    ]
    out = build_outcome(records)
    assert out.entries[0].engine_starts == 4
    assert out.entries[0].device_total_bytes is None  # no header
    assert out.entries[0].driver is None


def test_flags_do_not_split_a_models_physics() -> None:
    a, b = "llamacpp:tiny.gguf#ctx=512", "llamacpp:tiny.gguf#stream"
    records: list[Record] = [point(c, line(c), model=m) for m in (a, b) for c in (512, 1024, 2048)]
    records += [status(a, "OK"), status(b, "OK")]
    out = build_outcome(records)
    assert [m.model for m in out.models] == [a, b]  # the report keeps the IDs as written
    assert {e.model for e in out.entries} == {"llamacpp:tiny.gguf"}


def test_missing_model() -> None:
    m = "ol_not-pulled:7b"
    records: list[Record] = [
        info(m, engine="ollama", available=False),
        status(m, "MISSING", "not in `ollama list`", engine="ollama"),
    ]
    out = build_outcome(records)
    (row,) = out.models
    assert (row.status, row.reason) == ("MISSING", "not in `ollama list`")
    assert row.fit is None and row.device is None and row.probe is None
    assert out.entries == ()
    assert out.failures == ()
    assert out.status_counts() == {"MISSING": 1}


def test_failed_model_and_failed_steps() -> None:
    m = "llamacpp:big.gguf"
    step = status(m, "FAILED", "CUDA OOM", failure_kind="cuda_oom", ctx=8192, max_context=4096)
    final = status(m, "FAILED", "no context could be measured")
    out = build_outcome([info(m), step, final])
    (row,) = out.models
    assert (row.status, row.reason) == ("FAILED", "no context could be measured")
    assert row.failures == (step, final)
    assert out.failures == (step, final)
    assert out.entries == ()


def test_a_failed_step_does_not_override_the_final_status() -> None:
    step = status(TINY, "FAILED", "timeout", failure_kind="timeout", ctx=8192)
    records: list[Record] = [point(c, line(c)) for c in (512, 1024, 2048)]
    records += [step, status(TINY, "OK", "3 points, 1 step(s) failed")]
    out = build_outcome(records)
    (row,) = out.models
    assert row.status == "OK"
    assert row.failures == (step,)
    assert len(out.entries) == 1


def test_too_few_points_is_no_fit() -> None:
    records: list[Record] = [
        point(512, line(512)),
        point(1024, line(1024)),
        status(TINY, "NO_FIT", "2 good point(s); a fit needs 3"),
    ]
    out = build_outcome(records)
    (row,) = out.models
    assert row.status == "NO_FIT"
    assert row.reason.startswith("no fit: 2 good point(s) at 2 context(s)")
    assert row.fit is None
    assert row.probe == "process"
    assert out.entries == ()


def test_ok_with_too_few_points_becomes_no_fit() -> None:
    records: list[Record] = [point(512, 1.0), point(1024, 2.0), status(TINY, "OK")]
    assert build_outcome(records).models[0].status == "NO_FIT"
    # and min_points is honoured
    records3: list[Record] = [point(c, line(c)) for c in (512, 1024, 2048)] + [status(TINY, "OK")]
    assert build_outcome(records3, min_points=4).models[0].status == "NO_FIT"
    assert build_outcome(records3, min_points=3).models[0].status == "OK"


def test_duplicate_points_count_once() -> None:
    # a resumed run journaled the 1024 point twice: the first wins, the fit sees 3 points
    records: list[Record] = [
        point(512, line(512)),
        point(1024, line(1024)),
        point(1024, line(1024) + 50 * MIB),
        point(2048, line(2048)),
        status(TINY, "OK"),
    ]
    out = build_outcome(records)
    e = out.entries[0]
    assert e.n_points == 3
    assert e.points[1] == (1024, 104_194_304.0)
    assert e.cost_per_token_bytes == pytest.approx(4096.0, abs=1e-3)
    assert len(out.points) == 3


def test_interrupted_model_is_incomplete() -> None:
    records: list[Record] = [
        info(),
        point(512, line(512)),
        point(1024, line(1024)),
        point(2048, line(2048)),
    ]
    out = build_outcome(records)
    (row,) = out.models
    assert (row.status, row.reason) == ("INCOMPLETE", "not finished (interrupted)")
    assert len(out.entries) == 1  # the finished points still give physics
    # fewer points than a fit needs: still INCOMPLETE, with the reason why there is no fit
    out2 = build_outcome(records[:2])
    assert out2.models[0].status == "INCOMPLETE"
    assert out2.models[0].reason.startswith("no fit:")
    assert out2.entries == ()


def test_engine_kv_points() -> None:
    # vLLM: the pool does not move with ctx; the engine's own figures give the cost per token
    m = "vl_Qwen/Qwen2.5-0.5B#ctx=4096"
    pool, tokens = 2 * GIB, 65_536  # 32_768 B per token
    comp = {
        "source": "vllm-log",
        "calibration": "engine-kv",
        "kv_pool_bytes": pool,
        "kv_tokens": tokens,
    }
    records: list[Record] = [
        header([{"name": "NVIDIA H100 80GB HBM3", "total_bytes": 80 * GIB}]),
        info(m, engine="vllm"),
        point(
            1024,
            5 * GIB,
            model=m,
            engine="vllm",
            probe="nvml",
            device="NVIDIA H100 80GB HBM3",
            components=comp,
        ),
        point(
            4096,
            5 * GIB + MIB,
            model=m,
            engine="vllm",
            probe="nvml",
            device="NVIDIA H100 80GB HBM3",
            components=comp,
        ),
        status(m, "OK", engine="vllm"),
    ]
    out = build_outcome(records)
    (e,) = out.entries
    assert e.key[:3] == ("vllm", "vl_Qwen/Qwen2.5-0.5B", "NVIDIA H100 80GB HBM3")
    assert e.key[4] == "vllm-log"
    assert e.cost_per_token_bytes == 32_768.0  # 2 GiB / 65_536
    # base = measured - pool: 3 GiB and 3 GiB + 1 MiB, mean 3 GiB + 0.5 MiB
    assert e.base_bytes == 3 * GIB + MIB / 2  # 3_221_749_760
    assert e.base_stderr_bytes == MIB / 2  # half the spread
    assert e.cost_stderr_bytes == 0.0
    assert e.r2 is None
    assert e.n_points == 2
    assert e.device_total_bytes == 80 * GIB
    (row,) = out.models
    assert row.status == "OK"
    assert row.probe == "vllm-log"
    assert row.engine_kv_bytes_per_token == 32_768.0
    assert row.measured_over_theory == pytest.approx(32_768.0 / 4096.0)


def test_engine_kv_fit_by_hand() -> None:
    c1 = {"calibration": "engine-kv", "kv_pool_bytes": 1000, "kv_tokens": 10}  # 100 B/token
    c2 = {"calibration": "engine-kv", "kv_pool_bytes": 3000, "kv_tokens": 20}  # 150 B/token
    fit = engine_kv_fit([point(512, 5000, components=c1), point(1024, 9000, components=c2)])
    assert fit.cost_per_token_bytes == 125.0
    assert fit.cost_stderr_bytes == 25.0
    assert fit.base_bytes == 5000.0  # bases 4000 and 6000
    assert fit.base_stderr_bytes == 1000.0
    assert fit.residuals_bytes == (-1000.0, 1000.0)
    assert fit.points == ((512, 5000.0), (1024, 9000.0))
    assert fit.r2 is None


def test_a_point_without_engine_kv_falls_back_to_the_regression() -> None:
    kv = {"source": "vllm-log", "calibration": "engine-kv", "kv_pool_bytes": GIB, "kv_tokens": 1024}
    records: list[Record] = [
        point(512, line(512), components=kv),
        point(1024, line(1024), components=kv),
        point(2048, line(2048), components={"source": "vllm-log"}),
        status(TINY, "OK"),
    ]
    (e,) = build_outcome(records).entries
    assert e.probe == "process"
    assert e.cost_per_token_bytes == pytest.approx(4096.0, abs=1e-3)


def test_engine_totals_give_an_extra_entry() -> None:
    # Ollama: NVML measures the device, /api/ps reports the model's own size
    m = "ol_qwen2.5:0.5b#ctx=2048"
    dev = "NVIDIA L4"
    records: list[Record] = [info(m, engine="ollama")]
    for c in (512, 1024, 2048):
        comp = {"source": "ollama-ps", "total_bytes": int(2e9 + 1000 * c)}
        records.append(
            point(c, line(c), model=m, engine="ollama", probe="nvml", device=dev, components=comp)
        )
    records.append(status(m, "OK", engine="ollama"))
    out = build_outcome(records)
    by_probe = {e.probe: e for e in out.entries}
    assert set(by_probe) == {"nvml", "ollama-ps"}
    assert by_probe["nvml"].cost_per_token_bytes == pytest.approx(4096.0, abs=1e-3)
    assert by_probe["nvml"].base_bytes == pytest.approx(1e8, abs=0.1)
    assert by_probe["ollama-ps"].cost_per_token_bytes == pytest.approx(1000.0, abs=1e-3)
    assert by_probe["ollama-ps"].base_bytes == pytest.approx(2e9, abs=0.1)
    assert {e.model for e in out.entries} == {"ol_qwen2.5:0.5b"}
    (row,) = out.models
    assert row.probe == "nvml"  # the primary fit
    assert [p for p, _f in row.other_fits] == ["ollama-ps"]


def test_warnings_and_order() -> None:
    a, b = "ol_b:1", "ol_a:1"
    w = WarningRow(model=a, engine="ollama", ctx=8192, message="may not fit")
    records: list[Record] = [
        status(a, "MISSING", engine="ollama"),
        w,
        point(512, 1e9, model=b, engine="ollama"),
        status(b, "NO_FIT", engine="ollama"),
    ]
    out = build_outcome(records)
    assert [m.model for m in out.models] == [a, b]  # journal order, not sorted
    assert out.models[0].warnings == (w,)
    assert out.warnings == (w,)
    assert out.models[1].warnings == ()
    assert out.status_counts() == {"MISSING": 1, "NO_FIT": 1}


def test_empty_journal() -> None:
    out = build_outcome([])
    assert out.header is None
    assert out.models == () and out.entries == () and out.points == ()
    assert out.status_counts() == {}


def test_engine_kv_with_two_starts_is_not_no_fit() -> None:
    m = "vl_Qwen/Qwen2.5-0.5B"
    comp = {
        "source": "vllm-log",
        "calibration": "engine-kv",
        "kv_pool_bytes": 2 * GIB,
        "kv_tokens": 65_536,
    }
    records: list[Record] = [
        point(512, 5 * GIB, model=m, engine="vllm", probe="nvml", components=comp),
        point(8192, 5 * GIB, model=m, engine="vllm", probe="nvml", components=comp),
        # what runner._model_step journals for 2 points with min_points 3
        status(m, "NO_FIT", "2 good point(s); a fit needs 3", engine="vllm"),
    ]
    out = build_outcome(records, min_points=3)
    assert len(out.entries) == 1  # the physics is written...
    assert out.models[0].status != "NO_FIT"  # ...so the report must not say there is no fit


def test_a_point_spilled_to_the_cpu_gives_a_warning_beside_the_model() -> None:
    comp = {
        "source": "ollama-ps",
        "total_bytes": 6 * GIB,
        "size_vram": 4 * GIB,
        "spilled_to_cpu": True,
    }
    records: list[Record] = [
        point(512, 5 * GIB, model="ol_big:latest", engine="ollama", probe="nvml", components=comp),
        status("ol_big:latest", "OK", "1 point", engine="ollama"),
    ]
    (row,) = build_outcome(records, min_points=3).models
    (warning,) = row.warnings
    assert warning.ctx == 512
    assert warning.message == "spilled to the CPU at ctx 512 (4.00 of 6.00 GiB on the GPU)"


def test_the_device_total_of_several_gpus_is_their_sum() -> None:
    from vramphysics.outcome import _device_total
    from vramphysics.probes import device_label, device_names
    from vramphysics.records import RunHeader

    gib = 2**30
    devices = [
        {"name": "NVIDIA H200", "total_bytes": 141 * gib},
        {"name": "NVIDIA H200", "total_bytes": 141 * gib},
        {"name": "NVIDIA L4", "total_bytes": 24 * gib},
    ]
    header = RunHeader(
        run_id="r",
        started_at="t",
        host="h",
        platform="p",
        python="3",
        git_commit="c",
        tool_version="0",
        config_path="c.yaml",
        setups_path="s.yaml",
        setups=[],
        probe="nvml",
        probe_reason="",
        devices=devices,
        driver="570",
        sweep_contexts=[512],
        argv=[],
    )
    assert device_names(device_label(["NVIDIA H200", "NVIDIA H200"])) == ["NVIDIA H200"] * 2
    assert _device_total(header, "2x NVIDIA H200") == 282 * gib
    assert _device_total(header, "NVIDIA H200 + NVIDIA L4") == 165 * gib
    assert _device_total(header, "NVIDIA L4") == 24 * gib
    assert _device_total(header, "3x NVIDIA H200") is None


def test_cells_in_journal_order_a_redone_cell_replaces_the_first() -> None:
    """A resumed run that re-does a cell journals it again: the last one wins, in its place;
    its requests replace the first attempt's."""
    first = a_cell(cell="p128-o64-c1", ttft_ms=stats(99.0))
    large = a_cell(cell="p1024-o64-c1", prompt_tokens_target=1024)
    again = a_cell(cell="p128-o64-c1", ttft_ms=stats(30.0))
    other_ctx = a_cell(cell="p128-o64-c1", ctx=4096)
    requests = [a_request(ttft_ms=99.0), a_request(index=1), a_request(ttft_ms=11.0)]
    out = build_outcome([first, *requests[:2], large, again, requests[2], other_ctx])
    assert [(c.ctx, c.cell, c.ttft_ms.p50) for c in out.cells] == [
        (8192, "p128-o64-c1", 30.0),
        (8192, "p1024-o64-c1", 30.0),
        (4096, "p128-o64-c1", 30.0),
    ]
    assert [(r.index, r.ttft_ms) for r in out.requests] == [(0, 11.0), (1, 30.0)]


def test_an_old_bench_line_is_a_cell_of_one_request() -> None:
    out = build_outcome([bench(ctx=2048)])
    (cell,) = out.cells
    assert (cell.model, cell.ctx, cell.cell, cell.concurrency) == (TINY, 2048, "legacy-1", 1)
    assert (cell.n_measured, cell.n_failed, cell.prompt_tokens, cell.output_tokens) == (
        1,
        0,
        17.0,
        64.0,
    )
    assert cell.ttft_ms == Stats(
        n=1, mean=12.5, std=0.0, min=12.5, p50=12.5, p90=12.5, p99=12.5, max=12.5
    )
    assert cell.tpot_ms.p50 == pytest.approx(4.0)  # 1000 / 250 tok/s
    assert cell.e2e_ms.p50 == pytest.approx(320.0)  # 64 tokens at 200 tok/s
    assert cell.itl_ms == Stats(n=0)
    assert cell.peak_bytes is None  # the start-up peak is not memory during the request
    assert "start-up peak 0.075 GiB" in cell.note
    assert out.requests == ()


def test_every_benchmarked_context_counts_as_a_start() -> None:
    records: list[Record] = [
        info(),
        *(point(c, line(c)) for c in (512, 1024, 2048)),
        a_cell(model=TINY, ctx=2048),
        a_cell(model=TINY, ctx=2048, cell="p1024-o64-c1"),  # the same start
        a_cell(model=TINY, ctx=8192),
        status(TINY, "OK"),
    ]
    assert build_outcome(records).entries[0].engine_starts == 4
