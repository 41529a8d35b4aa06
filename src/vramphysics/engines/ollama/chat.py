"""`POST /api/chat`, streamed: the timing of the text chunks and the counts of the final object."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from vramphysics.engines.base import Completion, MediaItem, Usage
from vramphysics.engines.media import ollama_images
from vramphysics.engines.ollama.api import engine_timings, int_or_none, iter_ndjson, refuse
from vramphysics.errors import EngineError


@dataclass(frozen=True)
class _ChatStream:
    content_times_s: tuple[float, ...]
    final: dict[str, Any] | None


def message_text(event: dict[str, Any]) -> str:
    """The text a chunk carries: `message.content` and a thinking model's `message.thinking`
    (/api/chat), or `response` / `thinking` (/api/generate); "" when it carries none."""
    message = event.get("message")
    source = message if isinstance(message, dict) else event
    keys = ("content", "thinking") if isinstance(message, dict) else ("response", "thinking")
    return "".join(v for k in keys if isinstance(v := source.get(k), str))


def chat(
    client: httpx.Client,
    url: str,
    payload: dict[str, Any],
    *,
    timeout_s: float,
    model_id: str,
) -> Completion:
    """A streamed `/api/chat`; a content event is a chunk with text (`message_text`), counts
    and `done_reason` from the final object.

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
    times = stream.content_times_s
    reason = final.get("done_reason")
    return Completion(
        sent_s=sent,
        first_text_s=times[0] if times else None,
        last_text_s=times[-1] if times else None,
        end_s=end,
        usage=Usage(
            prompt_tokens=int_or_none(final.get("prompt_eval_count")),
            completion_tokens=int_or_none(final.get("eval_count")),
            source="engine-usage",
        ),
        n_chunks=len(times),
        engine_timings=engine_timings(final),
        content_times_s=times,
        finish_reason=reason if isinstance(reason, str) and reason else None,
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
    times: list[float] = []
    final: dict[str, Any] | None = None
    with client.stream("POST", url, json=payload, timeout=timeout_s) as response:
        kind = "model_not_found" if response.status_code == 404 else "request_failed"
        refuse(response, url, kind, model_id)
        for event in iter_ndjson(response.iter_lines(), kind="request_failed", model_id=model_id):
            now = time.monotonic()
            if message_text(event):
                times.append(now)
            if event.get("done") is True:
                final = event
            if now - sent > timeout_s:
                raise EngineError(
                    "timeout", f"request ran past {timeout_s:.0f} s", model_id=model_id
                )
    return _ChatStream(tuple(times), final)


def chat_payload(
    model: str,
    prompt: str,
    num_predict: int,
    *,
    num_ctx: int | None,
    keep_alive: str,
    media: Sequence[MediaItem] = (),
) -> dict[str, Any]:
    """A streamed /api/chat request. Ollama has no `min_tokens` nor `ignore_eos`: `num_predict`
    is a limit, and a model that emits its end-of-sequence token stops early (the random demo
    models rarely do; the final `eval_count` is the real count, recorded as such). `num_ctx`:
    the context of a start of ours (another one makes Ollama reload the model); None on a
    server someone else runs, whose loaded model we leave as it is. `media`: the message's
    `images` (Ollama takes no video: refused before anything is sent)."""
    options: dict[str, Any] = {"num_predict": num_predict, "temperature": 0}
    if num_ctx is not None:
        options["num_ctx"] = num_ctx
    message: dict[str, Any] = {"role": "user", "content": prompt}
    if media:
        message["images"] = ollama_images(media)
    return {
        "model": model,
        "messages": [message],
        "stream": True,
        "options": options,
        "keep_alive": keep_alive,
    }


def prompt_eval_count(
    client: httpx.Client, url: str, payload: dict[str, Any], *, timeout_s: float, model_id: str
) -> int:
    """One short request (`num_predict` 1, not streamed): the prompt tokens Ollama counts for
    it (`prompt_eval_count`, chat template included; cached tokens included since Ollama 0.2)."""
    body = dict(payload, stream=False, options={**payload["options"], "num_predict": 1})
    try:
        r = client.post(url, json=body, timeout=timeout_s)
    except httpx.TimeoutException as exc:
        raise EngineError(
            "timeout", f"no answer within {timeout_s:.0f} s from {url}", model_id=model_id
        ) from exc
    kind = "model_not_found" if r.status_code == 404 else "request_failed"
    refuse(r, url, kind, model_id)
    count = int_or_none(r.json().get("prompt_eval_count"))
    if count is None:
        raise EngineError(
            "request_failed", f"no prompt_eval_count in the answer from {url}", model_id=model_id
        )
    return count
