"""The figures of one benchmark request and of a cell of them (the README defines each one).

t0 is just before the request is sent; a content event is a chunk with text (`Completion.
content_times_s`). Following `vllm bench serve` where tools disagree:

- TTFT = first content event - t0; E2E = last content event - t0.
- TPOT = (E2E - TTFT) / (N_out - 1), N_out by the engine's own count (needs N_out >= 2).
- ITL = every gap between consecutive content events, pooled over the cell's requests.
- decode tok/s = 1 / mean TPOT; prefill tok/s = mean N_in / mean TTFT.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vramphysics.engines.base import Completion
from vramphysics.records import Stats

_MS = 1e3


@dataclass(frozen=True)
class RequestFigures:
    """One completed request's figures, in ms and tokens."""

    ttft_ms: float | None
    e2e_ms: float | None
    tpot_ms: float | None
    itl_ms: tuple[float, ...]
    prompt_tokens: int | None
    output_tokens: int | None
    token_source: str
    engine_prefill_tokens_per_s: float | None


def request_figures(c: Completion) -> RequestFigures:
    """Pure: the figures of one completed stream."""
    times = c.content_times_s or tuple(t for t in (c.first_text_s, c.last_text_s) if t is not None)
    n_out = c.usage.completion_tokens
    ttft = (times[0] - c.sent_s) * _MS if times else None
    e2e = (times[-1] - c.sent_s) * _MS if times else None
    tpot = None
    if ttft is not None and e2e is not None and n_out is not None and n_out >= 2:
        tpot = (e2e - ttft) / (n_out - 1)
    itl = tuple((b - a) * _MS for a, b in zip(times, times[1:], strict=False))
    return RequestFigures(
        ttft_ms=ttft,
        e2e_ms=e2e,
        tpot_ms=tpot,
        itl_ms=itl if c.content_times_s else (),
        prompt_tokens=c.usage.prompt_tokens,
        output_tokens=n_out,
        token_source=c.usage.source,
        engine_prefill_tokens_per_s=c.engine_timings.get("prefill_tokens_per_s"),
    )


def stats(values: Sequence[float]) -> Stats:
    """N, mean, population std, min, p50/p90/p99 (linear interpolation, numpy's default, as
    `vllm bench serve`) and max; all None when there are no values."""
    if not values:
        return Stats(n=0)
    a = np.asarray(values, dtype=float)
    p50, p90, p99 = (float(x) for x in np.percentile(a, [50, 90, 99]))
    return Stats(
        n=len(a),
        mean=float(a.mean()),
        std=float(a.std()),
        min=float(a.min()),
        p50=p50,
        p90=p90,
        p99=p99,
        max=float(a.max()),
    )


@dataclass(frozen=True)
class CellFigures:
    """A cell's aggregates over its measured requests that completed."""

    n_measured: int
    ttft_ms: Stats
    tpot_ms: Stats
    itl_ms: Stats
    e2e_ms: Stats
    prompt_tokens: float | None
    output_tokens: float | None
    token_source: str
    window_s: float | None
    request_throughput_per_s: float | None
    output_throughput_tokens_per_s: float | None
    decode_tokens_per_s: float | None
    prefill_tokens_per_s: float | None
    engine_prefill_tokens_per_s: float | None


def _mean(values: Sequence[float | int | None]) -> float | None:
    known = [float(v) for v in values if v is not None]
    return sum(known) / len(known) if known else None


def cell_figures(done: Sequence[RequestFigures], window_s: float | None) -> CellFigures:
    """Pure: aggregate the measured requests of one cell. `window_s`: from the first measured
    request sent to the last one finished (the throughputs' denominator)."""
    ttft = stats([f.ttft_ms for f in done if f.ttft_ms is not None])
    tpot = stats([f.tpot_ms for f in done if f.tpot_ms is not None])
    n_in = _mean([f.prompt_tokens for f in done])
    n_out_total = sum(f.output_tokens or 0 for f in done)
    sources = sorted({f.token_source for f in done})
    has_window = window_s is not None and window_s > 0
    return CellFigures(
        n_measured=len(done),
        ttft_ms=ttft,
        tpot_ms=tpot,
        itl_ms=stats([g for f in done for g in f.itl_ms]),
        e2e_ms=stats([f.e2e_ms for f in done if f.e2e_ms is not None]),
        prompt_tokens=n_in,
        output_tokens=_mean([f.output_tokens for f in done]),
        token_source="+".join(sources),
        window_s=window_s,
        request_throughput_per_s=len(done) / window_s if has_window and window_s else None,
        output_throughput_tokens_per_s=n_out_total / window_s if has_window and window_s else None,
        decode_tokens_per_s=_MS / tpot.mean if tpot.mean else None,
        prefill_tokens_per_s=n_in / ttft.mean * _MS if n_in and ttft.mean else None,
        engine_prefill_tokens_per_s=_mean([f.engine_prefill_tokens_per_s for f in done]),
    )
