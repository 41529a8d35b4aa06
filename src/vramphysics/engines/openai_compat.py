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
    """Tokens the engine itself lists in a chunk's `logprobs`: the OpenAI completions shape
    (`logprobs.tokens`, a list of strings) or llama-server's (`logprobs.content`, a list of
    per-token objects); vLLM's chat shape is the same list under `content`."""
    choices = event.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return 0
    lp = choices[0].get("logprobs") or {}
    if not isinstance(lp, dict):
        return 0
    for key in ("tokens", "content"):
        listed = lp.get(key)
        if isinstance(listed, list):
            return len(listed)
    return 0


# the fields of a chunk that carry generated text: completions `text`, chat `delta.content`, and
# a reasoning model's thinking (`reasoning_content`; newer vLLM names it `reasoning`)
_DELTA_TEXT = ("content", "reasoning_content", "reasoning")


def chunk_text(event: dict[str, Any]) -> str:
    """The text a chunk carries ("" for a role chunk, a finish chunk or a usage chunk)."""
    choices = event.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return ""
    choice = choices[0]
    text = choice.get("text")
    parts = [text] if isinstance(text, str) else []
    delta = choice.get("delta")
    if isinstance(delta, dict):
        parts += [v for k in _DELTA_TEXT if isinstance(v := delta.get(k), str)]
    return "".join(parts)


def _finish_reason(event: dict[str, Any]) -> str | None:
    choices = event.get("choices") or []
    if choices and isinstance(choices[0], dict):
        reason = choices[0].get("finish_reason")
        if isinstance(reason, str) and reason:
            return reason
    return None


def timings_rates(timings: Mapping[str, Any]) -> dict[str, float]:
    """llama-server's `timings` object as `Completion.engine_timings` (tokens per second)."""
    out: dict[str, float] = {}
    for key, name in (
        ("prompt_per_second", "prefill_tokens_per_s"),
        ("predicted_per_second", "decode_tokens_per_s"),
    ):
        value = timings.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            out[name] = float(value)
    return out


@dataclass
class _Tally:
    """What a stream has carried so far: filled event by event while the stream runs."""

    sent: float
    times: list[float] = field(default_factory=list)
    usage_obj: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None
    finish_reason: str | None = None
    parts: list[str] = field(default_factory=list)
    n_logprob_tokens: int = 0

    def add(self, event: dict[str, Any], now: float) -> None:
        """Count one event; `now` is when it arrived (a content event: the first sets TTFT)."""
        if isinstance(event.get("usage"), dict) and event["usage"]:
            self.usage_obj = event["usage"]
        if isinstance(event.get("timings"), dict) and event["timings"]:
            self.timings = event["timings"]
        self.finish_reason = _finish_reason(event) or self.finish_reason
        self.n_logprob_tokens += _logprob_tokens(event)
        text = chunk_text(event)
        if text:
            self.parts.append(text)
            self.times.append(now)


@dataclass(frozen=True)
class Counting:
    """How to count a stream's tokens where the engine sends no usage and no timings.

    `prompt`: the engine's prompt-token count of the request (its tokenizer, as `generate`
    sends it); `text`: its tokenizer on generated text; `max_tokens`: the request's limit, so
    that a `finish_reason` of "length" means the engine produced exactly that many (with
    `ignore_eos`/`min_tokens`, every request of a benchmark ends so)."""

    prompt: Callable[[], int | None] | None = None
    text: Callable[[str], int] | None = None
    max_tokens: int | None = None


def stream_completion(
    client: httpx.Client,
    url: str,
    payload: dict[str, Any],
    *,
    timeout_s: float,
    count_tokens: Callable[[str], int] | None = None,
    counting: Counting | None = None,
    model_id: str | None = None,
) -> Completion:
    """POST a streamed request; a content event is a chunk that carries text (see `chunk_text`);
    a role chunk never counts.

    Token counts, best first (`Usage.source` says which): the stream's usage object
    ("engine-usage"); llama-server's `timings` (`prompt_n`, `predicted_n`: "engine-timings");
    `finish_reason` "length": it stopped at `max_tokens` ("engine-length"); the tokens the
    engine lists in `logprobs` when someone asked for them ("engine-logprobs"); the engine's
    own tokenizer on the text ("engine-tokenizer"). `count_tokens` (the older form) counts both
    the prompt of a completions payload and the text.
    """
    counting = counting or Counting(
        prompt=_payload_prompt(payload, count_tokens), text=count_tokens
    )
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
        first_text_s=tally.times[0] if tally.times else None,
        last_text_s=tally.times[-1] if tally.times else None,
        end_s=end,
        usage=stream_usage(tally, counting),
        n_chunks=len(tally.times),
        engine_timings=timings_rates(tally.timings or {}),
        content_times_s=tuple(tally.times),
        finish_reason=tally.finish_reason,
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


def stream_usage(tally: _Tally, counting: Counting) -> Usage:
    """The token counts, from the best source the stream offered (see `stream_completion`)."""
    if tally.usage_obj is not None:
        return Usage(
            prompt_tokens=_int(tally.usage_obj.get("prompt_tokens")),
            completion_tokens=_int(tally.usage_obj.get("completion_tokens")),
            source="engine-usage",
        )
    if tally.timings is not None and _int(tally.timings.get("predicted_n")) is not None:
        return _timings_usage(tally.timings)
    prompt = counting.prompt() if counting.prompt is not None else None
    prompt_source = "engine-tokenizer" if prompt is not None else "none"
    if counting.max_tokens is not None and tally.finish_reason == "length":
        return Usage(prompt, counting.max_tokens, "engine-length", prompt_source)
    if tally.n_logprob_tokens:
        return Usage(prompt, tally.n_logprob_tokens, "engine-logprobs", prompt_source)
    if counting.text is not None:
        text = "".join(tally.parts)
        return Usage(prompt, counting.text(text) if text else 0, "engine-tokenizer", prompt_source)
    return Usage(prompt, None, "none", prompt_source)


def _timings_usage(timings: Mapping[str, Any]) -> Usage:
    """llama-server's `timings`: `prompt_n` is what it evaluated for this request; the prompt
    tokens it found in its cache (`cache_n`, newer servers) are part of the prompt too."""
    prompt_n, cache_n = _int(timings.get("prompt_n")), _int(timings.get("cache_n"))
    prompt = None if prompt_n is None else prompt_n + (cache_n or 0)
    return Usage(prompt, _int(timings.get("predicted_n")), "engine-timings")


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _payload_prompt(
    payload: dict[str, Any], count_tokens: Callable[[str], int] | None
) -> Callable[[], int | None] | None:
    prompt = payload.get("prompt")
    if count_tokens is None or not isinstance(prompt, str):
        return None
    return lambda: count_tokens(prompt)


# -- a server someone else runs (`bench --url`) ---------------------------------------------


def served_models(client: httpx.Client, base_url: str) -> list[dict[str, Any]]:
    """The entries of `GET /v1/models` at `base_url`: EngineError `unreachable` (one line naming
    the URL) when nothing answers there, `request_failed` for an answer that is not a list."""
    url = f"{base_url}/v1/models"
    try:
        r = client.get(url, timeout=10.0)
    except httpx.TransportError as exc:
        raise EngineError(
            "unreachable", f"nothing answers at {base_url} ({type(exc).__name__})"
        ) from exc
    if r.status_code != 200:
        raise EngineError("request_failed", f"HTTP {r.status_code} from {url}: {r.text[:200]}")
    try:
        data = r.json().get("data")
    except (ValueError, AttributeError) as exc:
        raise EngineError("request_failed", f"not a model list from {url}") from exc
    if not isinstance(data, list):
        raise EngineError("request_failed", f"not a model list from {url}: {r.text[:200]}")
    return [m for m in data if isinstance(m, dict)]


def pick_model(models: Sequence[dict[str, Any]], name: str, base_url: str) -> dict[str, Any]:
    """The entry whose `id` is `name` (or, for a file path, whose file name or stem is):
    EngineError `model_not_found` naming the models the server does serve otherwise."""
    ids = [str(m.get("id", "")) for m in models]
    for m, served in zip(models, ids, strict=True):
        if name in (served, Path(served).name, Path(served).stem):
            return m
    raise EngineError(
        "model_not_found",
        f"the server at {base_url} does not serve {name!r}; it serves: "
        + (", ".join(repr(i) for i in ids) or "nothing"),
    )
