"""Journal records the report tests share: a demo-like llama.cpp model (with a MISSING and a
FAILED one beside it) and a vLLM model calibrated from its engine's own KV figures."""

from __future__ import annotations

from vramphysics.records import (
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
        BenchResult(
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
        ),
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
        BenchResult(
            model=VLLM_ID,
            engine="vllm",
            ctx=4096,
            ttft_ms=40.0,
            output_tokens=64,
            prompt_tokens=20,
            token_source="engine-usage",
            decode_tokens_per_s=90.0,
            e2e_tokens_per_s=80.0,
            prefill_tokens_per_s=500.0,
            setup_s=60.0,
            exec_s=0.8,
            cleanup_s=2.0,
            peak_bytes=26 * GIB,
            probe="nvml",
            device=H100,
            engine_version="vllm 0.11",
        ),
        StatusRow(model=VLLM_ID, engine="vllm", status="OK", reason="2 points"),
    ]
