"""TTFT and throughput from one completed stream (bench.throughput)."""

from __future__ import annotations

import pytest

from vramphysics.bench import throughput
from vramphysics.engines.base import Completion, Usage


def completion(
    *,
    sent: float = 100.0,
    first: float | None = 100.25,
    last: float | None = 101.25,
    end: float = 101.5,
    completion_tokens: int | None = 41,
    prompt_tokens: int | None = 20,
    timings: dict[str, float] | None = None,
) -> Completion:
    return Completion(
        sent_s=sent,
        first_text_s=first,
        last_text_s=last,
        end_s=end,
        usage=Usage(
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, source="engine-usage"
        ),
        n_chunks=12,
        engine_timings=timings or {},
    )


def test_figures_by_hand() -> None:
    tp = throughput(completion())
    assert tp.ttft_ms == pytest.approx(250.0)  # 100.25 - 100.0 s
    assert tp.output_tokens == 41
    assert tp.prompt_tokens == 20
    # 40 tokens after the first, over 101.25 - 100.25 = 1.0 s
    assert tp.decode_tokens_per_s == pytest.approx(40.0)
    # 41 tokens over 101.5 - 100.0 = 1.5 s
    assert tp.e2e_tokens_per_s == pytest.approx(41 / 1.5)
    assert tp.exec_s == pytest.approx(1.5)
    # 20 prompt tokens over 0.25 s
    assert tp.prefill_tokens_per_s == pytest.approx(80.0)


def test_ttft_excludes_nothing_but_the_wait() -> None:
    c = completion(sent=10.0, first=10.0125, last=10.5)
    assert c.ttft_ms == pytest.approx(12.5)
    assert throughput(c).ttft_ms == pytest.approx(12.5)


def test_decode_excludes_ttft() -> None:
    # a long TTFT must not lower the decode rate
    slow_start = throughput(completion(first=105.0, last=106.0, end=106.1))
    assert slow_start.decode_tokens_per_s == pytest.approx(40.0)
    assert slow_start.e2e_tokens_per_s == pytest.approx(41 / 6.1)


def test_engine_timings_win() -> None:
    tp = throughput(
        completion(timings={"decode_tokens_per_s": 55.5, "prefill_tokens_per_s": 1234.0})
    )
    assert tp.decode_tokens_per_s == 55.5
    assert tp.prefill_tokens_per_s == 1234.0
    # the others still come from the stream
    assert tp.ttft_ms == pytest.approx(250.0)
    assert tp.e2e_tokens_per_s == pytest.approx(41 / 1.5)


def test_engine_decode_timing_wins_even_without_token_counts() -> None:
    tp = throughput(completion(completion_tokens=None, timings={"decode_tokens_per_s": 9.0}))
    assert tp.decode_tokens_per_s == 9.0
    assert tp.e2e_tokens_per_s is None


def test_no_tokens_no_rates() -> None:
    tp = throughput(completion(first=None, last=None, completion_tokens=None, prompt_tokens=None))
    assert tp.ttft_ms is None
    assert tp.output_tokens is None
    assert tp.prompt_tokens is None
    assert tp.decode_tokens_per_s is None
    assert tp.e2e_tokens_per_s is None
    assert tp.prefill_tokens_per_s is None
    assert tp.exec_s == pytest.approx(1.5)


def test_one_token_has_no_decode_rate() -> None:
    tp = throughput(completion(completion_tokens=1, last=100.25))
    assert tp.decode_tokens_per_s is None
    assert tp.e2e_tokens_per_s == pytest.approx(1 / 1.5)


def test_all_text_in_one_chunk_has_no_decode_rate() -> None:
    # many tokens but first == last: no time span to divide by
    tp = throughput(completion(first=100.5, last=100.5))
    assert tp.decode_tokens_per_s is None


def test_no_prompt_tokens_no_prefill() -> None:
    assert throughput(completion(prompt_tokens=None)).prefill_tokens_per_s is None
    assert throughput(completion(prompt_tokens=0)).prefill_tokens_per_s is None


def test_zero_length_request() -> None:
    tp = throughput(completion(end=100.0, first=None, last=None))
    assert tp.exec_s == 0.0
    assert tp.e2e_tokens_per_s is None
