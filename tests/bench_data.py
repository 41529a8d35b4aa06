"""Sample benchmark records for tests (report, journal, export): `a_cell`, `a_request`."""

from __future__ import annotations

from typing import Any

from vramphysics.records import BenchCell, BenchRequest, Stats


def stats(p50: float, n: int = 5) -> Stats:
    """A plausible distribution around `p50`."""
    return Stats(
        n=n,
        mean=p50 * 1.02,
        std=p50 * 0.05,
        min=p50 * 0.9,
        p50=p50,
        p90=p50 * 1.1,
        p99=p50 * 1.2,
        max=p50 * 1.21,
    )


def a_cell(**overrides: Any) -> BenchCell:
    values: dict[str, Any] = dict(
        model="llamacpp:tiny.gguf",
        engine="llamacpp",
        ctx=8192,
        cell="p128-o64-c1",
        prompt_tokens_target=128,
        output_tokens_target=64,
        concurrency=1,
        warm_prefix=False,
        n_measured=5,
        n_failed=0,
        prompt_tokens=128.0,
        output_tokens=64.0,
        token_source="engine-usage",
        ttft_ms=stats(30.0),
        tpot_ms=stats(3.0),
        itl_ms=stats(3.0, n=315),
        e2e_ms=stats(219.0),
        window_s=1.1,
        request_throughput_per_s=4.5,
        output_throughput_tokens_per_s=290.0,
        decode_tokens_per_s=326.8,
        prefill_tokens_per_s=4183.0,
        engine_prefill_tokens_per_s=4300.0,
        load_s=1.2,
        cold_ttft_ms=80.0,
        cold_prompt_tokens=2,
        peak_bytes=120_000_000,
        steady_bytes=118_000_000,
        predicted_bytes=116_000_000.0,
        memory_metric="rss",
        probe="process",
        device="cpu",
        engine_version="0.3.36",
        settings={"n_gpu_layers": -1},
    )
    values.update(overrides)
    return BenchCell(**values)


def a_request(**overrides: Any) -> BenchRequest:
    values: dict[str, Any] = dict(
        model="llamacpp:tiny.gguf",
        engine="llamacpp",
        ctx=8192,
        cell="p128-o64-c1",
        phase="measured",
        index=0,
        prompt_tokens_target=128,
        output_tokens_target=64,
        concurrency=1,
        ok=True,
        prompt_tokens=128,
        output_tokens=64,
        token_source="engine-usage",
        ttft_ms=30.0,
        tpot_ms=3.0,
        e2e_ms=219.0,
        itl_ms=[3.0] * 63,
        start_s=0.0,
        finish_reason="length",
    )
    values.update(overrides)
    return BenchRequest(**values)
