"""`POST /api/chat`, streamed: the timing of the text chunks and the counts of the final object."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx

from vramphysics.engines.base import Completion, Usage
from vramphysics.engines.ollama.api import engine_timings, int_or_none, iter_ndjson, refuse
from vramphysics.errors import EngineError


@dataclass(frozen=True)
class _ChatStream:
    first_text_s: float | None
    last_text_s: float | None
    n_chunks: int
    final: dict[str, Any] | None


def chat(
    client: httpx.Client,
    url: str,
    payload: dict[str, Any],
    *,
    timeout_s: float,
    model_id: str,
) -> Completion:
    """A streamed `/api/chat`; TTFT at the first chunk with text, counts from the final object.

    A timeout is EngineError `timeout`; other transport errors propagate as httpx errors (the
    engine first checks whether its server died)."""
    sent = time.monotonic()
    try:
        stream = _read_chat(client, url, payload, sent=sent, timeout_s=timeout_s, model_id=model_id)
    except httpx.TimeoutException as exc:
        raise EngineError(
            "timeout", f"no answer within {timeout_s:.0f} s from {url}", model_id=model_id
        ) from exc
    end = time.monotonic()
    final = stream.final
    if final is None:
        raise EngineError(
            "request_failed",
            f"the stream from {url} ended without a final `done` object",
            model_id=model_id,
        )
    return Completion(
        sent_s=sent,
        first_text_s=stream.first_text_s,
        last_text_s=stream.last_text_s,
        end_s=end,
        usage=Usage(
            prompt_tokens=int_or_none(final.get("prompt_eval_count")),
            completion_tokens=int_or_none(final.get("eval_count")),
            source="engine-usage",
        ),
        n_chunks=stream.n_chunks,
        engine_timings=engine_timings(final),
    )


def _read_chat(
    client: httpx.Client,
    url: str,
    payload: dict[str, Any],
    *,
    sent: float,
    timeout_s: float,
    model_id: str,
) -> _ChatStream:
    first = last = None
    n_chunks = 0
    final: dict[str, Any] | None = None
    with client.stream("POST", url, json=payload, timeout=timeout_s) as response:
        kind = "model_not_found" if response.status_code == 404 else "request_failed"
        refuse(response, url, kind, model_id)
        for event in iter_ndjson(response.iter_lines(), kind="request_failed", model_id=model_id):
            now = time.monotonic()
            message = event.get("message")
            text = message.get("content") if isinstance(message, dict) else None
            if isinstance(text, str) and text:
                n_chunks += 1
                first = now if first is None else first
                last = now
            if event.get("done") is True:
                final = event
            if now - sent > timeout_s:
                raise EngineError(
                    "timeout", f"request ran past {timeout_s:.0f} s", model_id=model_id
                )
    return _ChatStream(first, last, n_chunks, final)
