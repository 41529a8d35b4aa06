"""Streaming `/v1/completions` and `/v1/chat/completions` (llama.cpp and vLLM servers)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from vramphysics.engines.base import Completion, Usage
from vramphysics.errors import EngineError

log = logging.getLogger(__name__)

_KEY_FLAGS = ("--api-key", "--api_key")
_KEY_FILE_FLAGS = ("--api-key-file", "--api_key_file")


def server_api_key(
    argv: Sequence[str], env: Mapping[str, str], env_names: Sequence[str] = ()
) -> str | None:
    """The API key a server started with `argv` and `env` will demand, or None.

    `--api-key K` / `--api_key=K` (llama-server, llama-cpp-python, vLLM; llama-server takes a
    comma-separated list: the first is ours), `--api-key-file F` (llama-server: one key a line),
    else the first of `env_names` set in `env` (llama-server LLAMA_API_KEY, vLLM VLLM_API_KEY).
    """
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if not eq:
            value = argv[i + 1] if i + 1 < len(argv) else ""
        if flag in _KEY_FLAGS and value:
            return value.split(",")[0].strip() or None
        if flag in _KEY_FILE_FLAGS and value:
            return _first_key_in(Path(value))
    for name in env_names:
        if env.get(name):
            return env[name]
    return None


def _first_key_in(path: Path) -> str | None:
    try:
        lines = path.expanduser().read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise EngineError("start_failed", f"cannot read the API key file {path}: {exc}") from exc
    return next((line.strip() for line in lines if line.strip()), None)


def raise_for_auth(response: httpx.Response, model_id: str | None = None) -> None:
    """HTTP 401/403: the engine wants a key we do not send (or another one). Failing at once
    beats waiting out the whole start timeout on an answer that will never change."""
    if response.status_code in (401, 403):
        raise EngineError(
            "unauthorized",
            f"HTTP {response.status_code} from {response.request.url}: the engine wants an API "
            "key we do not send; give it as --api-key in the engine's extra_args (or its API "
            "key variable), so that every request of ours sends it",
            model_id=model_id,
        )


def engine_client(timeout: float | httpx.Timeout, api_key: str | None) -> httpx.Client:
    """An HTTP client for one engine: its API key on every request (Authorization: Bearer), and
    a 401/403 answer raised as EngineError(kind="unauthorized") wherever it comes."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    if api_key:
        log.debug("the engine wants an API key: every request sends it")
    return httpx.Client(
        timeout=timeout, headers=headers, event_hooks={"response": [raise_for_auth]}
    )


def iter_sse_data(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Decode the `data:` events of a server-sent event stream until `[DONE]`."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            return
        if not payload:
            continue
        try:
            event = json.loads(payload)
        except json.JSONDecodeError as exc:
            raise EngineError(
                "request_failed", f"malformed stream event: {payload[:80]!r}"
            ) from exc
        if isinstance(event, dict):
            if "error" in event:
                raise EngineError("request_failed", f"engine error in stream: {event['error']}")
            yield event


def _logprob_tokens(event: dict[str, Any]) -> int:
    """Tokens the engine itself lists in a chunk's `logprobs` (completions API)."""
    choices = event.get("choices") or []
    if not choices:
        return 0
    lp = choices[0].get("logprobs") or {}
    tokens = lp.get("tokens") if isinstance(lp, dict) else None
    return len(tokens) if isinstance(tokens, list) else 0


def _chunk_text(event: dict[str, Any]) -> str:
    choices = event.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    if "text" in choice:
        return choice.get("text") or ""
    delta = choice.get("delta") or {}
    return delta.get("content") or ""


@dataclass
class _Tally:
    """What a stream has carried so far: filled event by event while the stream runs."""

    sent: float
    first: float | None = None
    last: float | None = None
    n_chunks: int = 0
    usage_obj: dict[str, Any] | None = None
    parts: list[str] = field(default_factory=list)
    n_logprob_tokens: int = 0

    def add(self, event: dict[str, Any], now: float) -> None:
        """Count one event; `now` is when it arrived (the first text sets TTFT)."""
        if event.get("usage"):
            self.usage_obj = event["usage"]
        self.n_logprob_tokens += _logprob_tokens(event)
        text = _chunk_text(event)
        if text:
            self.n_chunks += 1
            self.parts.append(text)
            if self.first is None:
                self.first = now
            self.last = now


def stream_completion(
    client: httpx.Client,
    url: str,
    payload: dict[str, Any],
    *,
    timeout_s: float,
    count_tokens: Callable[[str], int] | None = None,
    model_id: str | None = None,
) -> Completion:
    """POST a streamed request; TTFT is the first chunk that carries text (not a role chunk).

    Output tokens come from the stream's usage object when the engine sends one; else from the
    tokens the engine lists in each chunk's `logprobs` (ask for them with `"logprobs": 1`); else
    from `count_tokens` (the engine's own tokenizer) on the text. Prompt tokens without a usage
    object come from `count_tokens` on the prompt.
    """
    body = dict(payload, stream=True)
    tally = _Tally(sent=time.monotonic())
    try:
        with client.stream("POST", url, json=body, timeout=timeout_s) as response:
            _check_stream_status(response, url, model_id)
            _read_stream(response, tally, timeout_s=timeout_s, model_id=model_id)
    except httpx.TimeoutException as exc:
        raise EngineError(
            "timeout", f"no answer within {timeout_s:.0f} s from {url}", model_id=model_id
        ) from exc
    except httpx.TransportError as exc:
        raise EngineError(
            "request_failed", f"{type(exc).__name__} talking to {url}", model_id=model_id
        ) from exc
    end = time.monotonic()
    return Completion(
        sent_s=tally.sent,
        first_text_s=tally.first,
        last_text_s=tally.last,
        end_s=end,
        usage=_stream_usage(tally, payload, count_tokens),
        n_chunks=tally.n_chunks,
    )


def _check_stream_status(response: httpx.Response, url: str, model_id: str | None) -> None:
    """401/403 as `unauthorized`, any other answer but 200 as `request_failed` with its text."""
    raise_for_auth(response, model_id)
    if response.status_code != 200:
        response.read()
        raise EngineError(
            "request_failed",
            f"HTTP {response.status_code} from {url}: {response.text[:200]}",
            model_id=model_id,
        )


def _read_stream(
    response: httpx.Response, tally: _Tally, *, timeout_s: float, model_id: str | None
) -> None:
    """Count every event into `tally`; a stream still running past `timeout_s` is a timeout."""
    for event in iter_sse_data(response.iter_lines()):
        tally.add(event, time.monotonic())
        if time.monotonic() - tally.sent > timeout_s:
            raise EngineError("timeout", f"request ran past {timeout_s:.0f} s", model_id=model_id)


def _stream_usage(
    tally: _Tally, payload: dict[str, Any], count_tokens: Callable[[str], int] | None
) -> Usage:
    """The token counts, from the best source the stream offered (see `stream_completion`)."""
    if tally.usage_obj is not None:
        return Usage(
            prompt_tokens=tally.usage_obj.get("prompt_tokens"),
            completion_tokens=tally.usage_obj.get("completion_tokens"),
            source="engine-usage",
        )
    if tally.n_logprob_tokens:
        return Usage(
            prompt_tokens=_prompt_tokens(payload, count_tokens),
            completion_tokens=tally.n_logprob_tokens,
            source="engine-logprobs",
        )
    if count_tokens is not None:
        return Usage(
            prompt_tokens=_prompt_tokens(payload, count_tokens),
            completion_tokens=count_tokens("".join(tally.parts)) if tally.parts else 0,
            source="engine-tokenizer",
        )
    return Usage(prompt_tokens=None, completion_tokens=None, source="none")


def _prompt_tokens(
    payload: dict[str, Any], count_tokens: Callable[[str], int] | None
) -> int | None:
    prompt = payload.get("prompt")
    if count_tokens is None or not isinstance(prompt, str):
        return None
    return count_tokens(prompt)
