"""Benchmarks: TTFT and throughput from one streamed request, with the engine's own token counts.

- TTFT: request sent -> first chunk that carries text (an empty role chunk does not count).
- Output tokens: the engine's usage figures (or its own tokenizer), never a count of chunks.
- Decode tokens/s: (output tokens - 1) / (last text - first text), so TTFT is excluded.
- End-to-end tokens/s: output tokens / (end - sent).
- Prefill tokens/s: prompt tokens / TTFT, when the engine reports prompt tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from vramphysics.engines.base import Completion


@dataclass(frozen=True)
class Throughput:
    ttft_ms: float | None
    output_tokens: int | None
    prompt_tokens: int | None
    decode_tokens_per_s: float | None
    e2e_tokens_per_s: float | None
    prefill_tokens_per_s: float | None
    exec_s: float


def throughput(c: Completion) -> Throughput:
    """Pure: the figures of one completed stream (engine timings win where the engine gives them)."""
    n_out = c.usage.completion_tokens
    n_in = c.usage.prompt_tokens
    exec_s = c.end_s - c.sent_s
    decode = None
    if "decode_tokens_per_s" in c.engine_timings:
        decode = c.engine_timings["decode_tokens_per_s"]
    elif (
        n_out is not None and n_out > 1 and c.first_text_s is not None and c.last_text_s is not None
    ):
        span = c.last_text_s - c.first_text_s
        decode = (n_out - 1) / span if span > 0 else None
    e2e = n_out / exec_s if n_out is not None and exec_s > 0 else None
    prefill = c.engine_timings.get("prefill_tokens_per_s")
    if prefill is None and n_in and c.ttft_ms:
        prefill = n_in / (c.ttft_ms / 1e3)
    return Throughput(
        ttft_ms=c.ttft_ms,
        output_tokens=n_out,
        prompt_tokens=n_in,
        decode_tokens_per_s=decode,
        e2e_tokens_per_s=e2e,
        prefill_tokens_per_s=prefill,
        exec_s=exec_s,
    )
