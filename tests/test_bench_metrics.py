"""The benchmark's definitions (bench.metrics): figures by hand, percentiles as numpy's."""

from __future__ import annotations

import numpy as np
import pytest

from vramphysics.bench.metrics import cell_figures, request_figures, stats
from vramphysics.engines.base import Completion, Usage


def completion(
    times: tuple[float, ...] = (100.25, 100.35, 100.45, 100.55, 101.25),
    *,
    sent: float = 100.0,
    n_out: int | None = 5,
    n_in: int | None = 20,
    timings: dict[str, float] | None = None,
) -> Completion:
    return Completion(
        sent_s=sent,
        first_text_s=times[0] if times else None,
        last_text_s=times[-1] if times else None,
        end_s=(times[-1] if times else sent) + 0.01,
        usage=Usage(prompt_tokens=n_in, completion_tokens=n_out, source="engine-usage"),
        n_chunks=len(times),
        engine_timings=timings or {},
        content_times_s=times,
        finish_reason="length",
    )


def test_one_request_by_hand() -> None:
    f = request_figures(completion(timings={"prefill_tokens_per_s": 123.0}))
    assert f.ttft_ms == pytest.approx(250.0)  # first content event - sent
    assert f.e2e_ms == pytest.approx(1250.0)  # last content event - sent
    assert f.tpot_ms == pytest.approx((1250.0 - 250.0) / 4)  # (E2E - TTFT) / (N_out - 1)
    assert f.itl_ms == pytest.approx((100.0, 100.0, 100.0, 700.0))  # every gap
    assert (f.prompt_tokens, f.output_tokens, f.token_source) == (20, 5, "engine-usage")
    assert f.engine_prefill_tokens_per_s == 123.0


def test_tpot_needs_two_output_tokens_and_uses_the_engine_count() -> None:
    assert request_figures(completion((100.5,), n_out=1)).tpot_ms is None
    # three chunks but the engine counts 9 tokens: TPOT divides by 8, not by 2 chunk gaps
    f = request_figures(completion((100.1, 100.5, 100.9), n_out=9))
    assert f.tpot_ms == pytest.approx(800.0 / 8)
    assert len(f.itl_ms) == 2


def test_no_content_no_times() -> None:
    f = request_figures(completion((), n_out=0))
    assert f.ttft_ms is None and f.e2e_ms is None and f.tpot_ms is None and f.itl_ms == ()


def test_stats_follow_numpy_linear_percentiles() -> None:
    values = [12.0, 3.0, 7.0, 1.0, 30.0, 5.5, 8.0]
    s = stats(values)
    assert s.n == 7
    assert s.p50 == pytest.approx(np.percentile(values, 50)) == 7.0
    assert s.p90 == pytest.approx(np.percentile(values, 90))
    assert s.p99 == pytest.approx(np.percentile(values, 99))
    assert s.std == pytest.approx(np.std(values))  # population, as numpy and vllm bench serve
    assert (s.min, s.max) == (1.0, 30.0)
    assert s.mean == pytest.approx(sum(values) / 7)
    # p50 of an even count interpolates between the middle two
    assert stats([1.0, 2.0, 3.0, 10.0]).p50 == pytest.approx(2.5)
    assert stats([]).n == 0 and stats([]).p50 is None


def test_cell_aggregates() -> None:
    a = request_figures(completion(sent=0.0, times=(0.1, 0.2, 0.3, 0.4, 0.5)))
    b = request_figures(completion(sent=0.0, times=(0.3, 0.4, 0.5, 0.6, 0.7), n_in=40))
    c = cell_figures([a, b], window_s=2.0)
    assert c.n_measured == 2
    assert c.ttft_ms.p50 == pytest.approx(200.0)  # 100 and 300 ms
    assert c.tpot_ms.mean == pytest.approx(100.0)
    assert c.itl_ms.n == 8  # pooled: 4 gaps each
    assert c.decode_tokens_per_s == pytest.approx(10.0)  # 1 / 100 ms
    assert c.prefill_tokens_per_s == pytest.approx(30 / 0.2)  # mean N_in / mean TTFT
    assert c.request_throughput_per_s == pytest.approx(1.0)  # 2 requests / 2 s
    assert c.output_throughput_tokens_per_s == pytest.approx(5.0)  # 10 tokens / 2 s
    assert c.prompt_tokens == pytest.approx(30.0) and c.output_tokens == pytest.approx(5.0)
