"""Content events and token counts of a stream (engines/openai_compat.py), on scripted streams
served by httpx.MockTransport: what counts as a content event, and where counts come from."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from vramphysics.engines.openai_compat import Counting, chunk_text, stream_completion

URL = "http://127.0.0.1:9/v1/completions"


class _Slow(httpx.SyncByteStream):
    """An SSE body, one event at a time, `gap_s` apart (so arrival times differ)."""

    def __init__(self, events: list[Any], gap_s: float) -> None:
        self.events, self.gap_s = events, gap_s

    def __iter__(self) -> Iterator[bytes]:
        for event in self.events:
            time.sleep(self.gap_s)
            data = event if isinstance(event, str) else json.dumps(event)
            yield f"data: {data}\n\n".encode()
        yield b"data: [DONE]\n\n"


def _client(events: list[Any], bodies: list[dict[str, Any]], gap_s: float = 0.0) -> httpx.Client:
    def handle(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, stream=_Slow(events, gap_s))

    return httpx.Client(transport=httpx.MockTransport(handle))


def _delta(finish: str | None = None, **delta: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _text(text: str, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "text": text, "finish_reason": finish, **extra}]}


def test_reasoning_chunks_count_and_a_role_chunk_does_not() -> None:
    events = [
        _delta(role="assistant", content=""),  # the role chunk: no content event
        _delta(reasoning_content="Let me think"),  # vLLM, llama-server
        _delta(reasoning=" more"),  # newer vLLM
        _delta(content="Answer"),
        _delta(finish="length"),
        {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}},
    ]
    bodies: list[dict[str, Any]] = []
    with _client(events, bodies, gap_s=0.02) as client:
        c = stream_completion(client, URL, {"messages": []}, timeout_s=10)
    assert len(c.content_times_s) == 3 == c.n_chunks
    assert list(c.content_times_s) == sorted(c.content_times_s)
    assert c.content_times_s[0] == c.first_text_s and c.content_times_s[-1] == c.last_text_s
    # the role chunk came 0.02 s before the first reasoning chunk: TTFT is not the role chunk's
    assert c.first_text_s is not None and c.first_text_s - c.sent_s >= 0.035
    assert c.finish_reason == "length"
    assert (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.source) == (
        9,
        3,
        "engine-usage",
    )


@pytest.mark.parametrize(
    ("event", "text"),
    [
        (_delta(role="assistant"), ""),
        (_delta(role="assistant", content=None), ""),
        (_delta(content="a"), "a"),
        (_delta(reasoning_content="r"), "r"),
        (_delta(reasoning="r2"), "r2"),
        (_text("t"), "t"),
        (_text(""), ""),
        ({"choices": [], "usage": {"completion_tokens": 1}}, ""),
    ],
)
def test_chunk_text(event: dict[str, Any], text: str) -> None:
    assert chunk_text(event) == text


def test_llama_server_timings_give_counts_and_the_prefill_rate() -> None:
    timings = {
        "cache_n": 2,  # prompt tokens found in its cache: still prompt tokens
        "prompt_n": 10,
        "prompt_ms": 20.0,
        "prompt_per_second": 500.0,
        "predicted_n": 4,
        "predicted_ms": 100.0,
        "predicted_per_second": 40.0,
    }
    # llama-server's last chunk carries `timings` beside `choices`
    events = [_text("a"), _text("b"), _text("c"), {**_text("d", "length"), "timings": timings}]
    with _client(events, []) as client:
        c = stream_completion(client, URL, {"prompt": "p"}, timeout_s=10)
    assert (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.source) == (
        12,
        4,
        "engine-timings",
    )
    assert c.engine_timings == {"prefill_tokens_per_s": 500.0, "decode_tokens_per_s": 40.0}
    assert c.finish_reason == "length"


def test_the_llama_server_logprobs_content_shape_is_counted() -> None:
    def lp(*tokens: str) -> dict[str, Any]:
        return {"content": [{"id": 1, "token": t, "logprob": -0.5, "bytes": []} for t in tokens]}

    events = [_text("Hel", logprobs=lp("H", "el")), _text("lo", logprobs=lp("lo"))]
    with _client(events, []) as client:
        c = stream_completion(client, URL, {"prompt": "p"}, timeout_s=10)
    assert (c.usage.completion_tokens, c.usage.source) == (3, "engine-logprobs")


def test_a_request_for_exactly_n_tokens_that_ends_by_length_has_n() -> None:
    events = [_text("one"), _text(" two three"), _text("", "length")]
    counting = Counting(prompt=lambda: 7, text=lambda s: 100, max_tokens=8)
    with _client(events, []) as client:
        c = stream_completion(client, URL, {"prompt": "p"}, timeout_s=10, counting=counting)
    assert (c.usage.prompt_tokens, c.usage.completion_tokens) == (7, 8)
    assert (c.usage.source, c.usage.prompt_source) == ("engine-length", "engine-tokenizer")


def test_a_request_that_stopped_early_is_counted_by_the_tokenizer() -> None:
    events = [_text("one"), _text(" two three", "stop")]
    counting = Counting(prompt=lambda: 7, text=lambda s: len(s.split()), max_tokens=8)
    with _client(events, []) as client:
        c = stream_completion(client, URL, {"prompt": "p"}, timeout_s=10, counting=counting)
    assert (c.usage.completion_tokens, c.usage.source) == (3, "engine-tokenizer")
    assert c.finish_reason == "stop"
