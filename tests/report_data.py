"""Journal records the report tests share: a demo-like llama.cpp model (with a MISSING and a
FAILED one beside it) and a vLLM model calibrated from its engine's own KV figures.

The llama.cpp model has three benchmark cells at ctx 2048: prompts of 128 and 1024 tokens one
at a time (the large one with a failed request), and 128 tokens four at a time; the journal also
holds the requests of the 128-token cell and of the large one.
"""

from __future__ import annotations

from bench_data import a_cell, a_request, stats

from vramphysics.records import (
    BenchCell,
    BenchRequest,
    BenchResult,
    CalibrationPoint,
    ModelInfo,
    Record,
    RunHeader,
    StatusRow,
    WarningRow,
)

GIB = 2**30
MIB = 2**20
SECRET = "hf_sekrit_value_0123456789"
OK_ID = "llamacpp:tiny.gguf#ctx=2048"
MISSING_ID = "ol_not-pulled:7b"
FAILED_ID = "llamacpp:huge.gguf"


def _header() -> RunHeader:
    return RunHeader(
        run_id="20260101-000000",
        started_at="2026-01-01T00:00:00+00:00",
        host="box",
        platform="Linux",
        python="3.12",
        git_commit="abc1234",
        tool_version="0.1.0",
        config_path="config.yaml",
        setups_path="test_setups.yaml",
        setups=["demo"],
        probe="process",
        probe_reason="no NVIDIA GPU",
        devices=[{"name": "cpu", "total_bytes": 16 * GIB}],
        driver=None,
        sweep_contexts=[512, 1024, 2048],
        argv=["runner.py", "--token", SECRET],
    )


def _point(ctx: int) -> CalibrationPoint:
    return CalibrationPoint(
        model=OK_ID,
        engine="llamacpp",
        ctx=ctx,
        probe="process",
        device="cpu",
        measured_bytes=int(1e8 + 4096 * ctx),
        peak_bytes=int(1e8 + 4096 * ctx) + MIB,
        baseline_bytes=0,
        n_samples=20,
        ready_s=1.5,
        engine_version="llama.cpp b1",
        engine_components={"source": "llamacpp-log", "kv_pool_bytes": 4096 * ctx, "kv_tokens": ctx},
        at="2026-01-01T00:01:00+00:00",
    )


PREDICTED = 1e8 + 4096 * 2048  # the fit's prediction at the benchmark's context
SMALL_TTFT_P50 = 12.3456
LARGE_TTFT_P50 = 60.0


def ok_cells() -> list[BenchCell]:
    """The llama.cpp model's cells, in the order a run journals them."""
    common = dict(model=OK_ID, ctx=2048, predicted_bytes=PREDICTED, engine_version="llama.cpp b1")
    return [
        a_cell(
            **common,
            cell="p1024-o64-c1",
            prompt_tokens_target=1024,
            prompt_tokens=1023.0,
            n_measured=4,
            n_failed=1,
            ttft_ms=stats(LARGE_TTFT_P50, n=4),
            decode_tokens_per_s=240.0,
            peak_bytes=112_000_000,
        ),
        a_cell(
            **common,
            cell="p128-o64-c1",
            prompt_tokens_target=128,
            prompt_tokens=127.0,
            ttft_ms=stats(SMALL_TTFT_P50),
            decode_tokens_per_s=250.0,
            peak_bytes=110_000_000,
        ),
        a_cell(
            **common,
            cell="p128-o64-c4",
            concurrency=4,
            prompt_tokens_target=128,
            prompt_tokens=127.0,
            n_measured=8,
            ttft_ms=stats(20.0, n=8),
            decode_tokens_per_s=200.0,
            peak_bytes=111_000_000,
        ),
    ]


def ok_requests() -> list[BenchRequest]:
    """The 128-token cell's cold, warm-up and measured requests, and the large cell's failure."""
    common = dict(model=OK_ID, ctx=2048, cell="p128-o64-c1", prompt_tokens=127)
    out = [a_request(**common, phase="cold", index=0, ttft_ms=80.0)]
    out += [a_request(**common, phase="warmup", index=i) for i in range(2)]
    out += [
        a_request(**common, phase="measured", index=i, itl_ms=[2.0, 3.0, 5.0], ttft_ms=12.0 + i)
        for i in range(5)
    ]
    out.append(
        a_request(
            model=OK_ID,
            ctx=2048,
            cell="p1024-o64-c1",
            prompt_tokens_target=1024,
            phase="measured",
            index=4,
            ok=False,
            error="request timed out after 60 s",
            prompt_tokens=None,
            output_tokens=None,
            ttft_ms=None,
            tpot_ms=None,
            e2e_ms=None,
            itl_ms=[],
            finish_reason=None,
        )
    )
    return out


def ok_bench() -> list[Record]:
    return [*ok_requests(), *ok_cells()]


def legacy_bench() -> BenchResult:
    """An old journal's single benchmark request of the llama.cpp model (kind "bench")."""
    return BenchResult(
        model=OK_ID,
        engine="llamacpp",
        ctx=2048,
        ttft_ms=12.3456,
        output_tokens=64,
        prompt_tokens=17,
        token_source="engine-usage",
        decode_tokens_per_s=250.0,
        e2e_tokens_per_s=200.0,
        prefill_tokens_per_s=1360.0,
        setup_s=2.0,
        exec_s=0.32,
        cleanup_s=0.1,
        peak_bytes=2 * GIB,
        probe="process",
        device="cpu",
        engine_version="llama.cpp b1",
    )


def records() -> list[Record]:
    return [
        _header(),
        ModelInfo(
            model=OK_ID,
            setup="demo",
            engine="llamacpp",
            engine_version="llama.cpp b1",
            available=True,
            location="/m/tiny.gguf",
            theory={"kv_bytes_per_token": 4096.0, "weights_bytes": GIB},
            settings={},
        ),
        _point(512),
        _point(1024),
        _point(2048),
        *ok_bench(),
        StatusRow(model=OK_ID, engine="llamacpp", status="OK", reason="3 points"),
        ModelInfo(
            model=MISSING_ID,
            setup="demo",
            engine="ollama",
            engine_version="ollama 0.5",
            available=False,
            location=None,
            theory=None,
            settings={},
        ),
        StatusRow(
            model=MISSING_ID, engine="ollama", status="MISSING", reason="not in `ollama list`"
        ),
        WarningRow(model=MISSING_ID, engine="ollama", ctx=8192, message="predicted 9 GiB > 8 GiB"),
        StatusRow(
            model=FAILED_ID,
            engine="llamacpp",
            status="FAILED",
            reason=f"download refused with token {SECRET}",
            failure_kind="cuda_oom",
            ctx=8192,
            log_tail=f"HF_TOKEN={SECRET}\nCUDA error: out of memory",
            max_context=4096,
        ),
        StatusRow(
            model=FAILED_ID,
            engine="llamacpp",
            status="FAILED",
            reason="no context could be measured",
        ),
    ]


VLLM_ID = "vl_org/tiny-chat#ctx=4096"
H100 = "NVIDIA H100 80GB HBM3"
VLLM_COST = 2048.0  # B/token from the engine's own KV figures
VLLM_BASE = 5 * GIB  # weights, activations, CUDA graphs: measured - pool
VLLM_POOL = 20 * GIB


def _vllm_point(ctx: int, noise: int) -> CalibrationPoint:
    pool = VLLM_POOL + noise * 64 * MIB  # the pool is sized by the utilization, not the context
    return CalibrationPoint(
        model=VLLM_ID,
        engine="vllm",
        ctx=ctx,
        probe="nvml",
        device=H100,
        measured_bytes=VLLM_BASE + pool + noise * 8 * MIB,  # bases differ by 8 MiB
        peak_bytes=VLLM_BASE + pool + GIB,
        baseline_bytes=2 * GIB,
        n_samples=40,
        ready_s=30.0,
        engine_version="vllm 0.11",
        engine_components={
            "source": "vllm-log",
            "calibration": "engine-kv",
            "kv_pool_bytes": pool,
            "kv_tokens": int(pool / VLLM_COST),
        },
        at="2026-01-01T01:00:00+00:00",
    )


def vllm_records() -> list[Record]:
    """A vLLM model on an H100 (2 GiB used by others), two starts, one benchmark."""
    header = RunHeader(
        **{
            **_header().__dict__,
            "probe": "nvml",
            "devices": [{"index": 0, "name": H100, "total_bytes": 80 * GIB, "used_bytes": 2 * GIB}],
            "driver": "550.54",
        }
    )
    return [
        header,
        ModelInfo(
            model=VLLM_ID,
            setup="gpu",
            engine="vllm",
            engine_version="vllm 0.11",
            available=True,
            location="org/tiny-chat",
            theory={"kv_bytes_per_token": 2048.0, "weights_bytes": 4 * GIB},
            settings={},
        ),
        _vllm_point(2048, 0),
        _vllm_point(4096, 1),
        a_cell(
            model=VLLM_ID,
            engine="vllm",
            ctx=4096,
            cell="p20-o64-c1",
            prompt_tokens_target=20,
            prompt_tokens=20.0,
            ttft_ms=stats(40.0),
            decode_tokens_per_s=90.0,
            peak_bytes=26 * GIB,
            predicted_bytes=VLLM_BASE + VLLM_POOL,
            memory_metric="device-used",
            probe="nvml",
            device=H100,
            engine_version="vllm 0.11",
        ),
        StatusRow(model=VLLM_ID, engine="vllm", status="OK", reason="2 points"),
    ]
