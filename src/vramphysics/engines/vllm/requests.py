"""vLLM's HTTP side for benchmarks, the same for a native server, a container and a server
someone else runs: the timed request, prompt-token counting (/tokenize) and attach."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from vramphysics.engines.base import EngineStatus, MediaItem, ResidentModel
from vramphysics.engines.media import openai_content, refuse_media
from vramphysics.engines.openai_compat import pick_model, served_models
from vramphysics.errors import EngineError


def request_body(
    model: str,
    prompt: str,
    output_tokens: int,
    *,
    exact: bool,
    chat: bool,
    media: Sequence[MediaItem] = (),
) -> tuple[str, dict[str, Any]]:
    """The path and body of a timed request: /v1/chat/completions when the model has a chat
    template, else /v1/completions. Never `logprobs`. `exact`: `min_tokens` + `ignore_eos`, so
    the engine produces exactly `output_tokens` (it stops at `max_tokens`). `media` go in the
    chat message as `image_url` / `video_url` parts; without a chat template they cannot go
    (request_failed before anything is sent)."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": output_tokens,
        "temperature": 0.0,
        "stream_options": {"include_usage": True},
    }
    if exact:
        body["min_tokens"] = output_tokens
        body["ignore_eos"] = True
    if chat:
        body["messages"] = [{"role": "user", "content": openai_content(prompt, media)}]
        return "/v1/chat/completions", body
    refuse_media("vLLM", media, "the model has no chat template (media need a chat request)", None)
    body["prompt"] = prompt
    return "/v1/completions", body


def tokenize_body(model: str, text: str, *, chat: bool) -> dict[str, Any]:
    """/tokenize as the request of `request_body` is counted: the chat template with the
    assistant's generation prompt (the special tokens come from the template), else the prompt
    with the special tokens a completion adds (the BOS)."""
    if chat:
        return {
            "model": model,
            "messages": [{"role": "user", "content": text}],
            "add_generation_prompt": True,
        }
    return {"model": model, "prompt": text, "add_special_tokens": True}


def tokenize_count(
    client: httpx.Client, base_url: str, body: dict[str, Any], timeout_s: float
) -> int:
    """`count` of a /tokenize answer; request_failed with the server's words otherwise."""
    url = f"{base_url}/tokenize"
    r = client.post(url, json=body, timeout=timeout_s)
    if r.status_code != 200:
        raise EngineError("request_failed", f"HTTP {r.status_code} from {url}: {r.text[:200]}")
    count = r.json().get("count")
    if not isinstance(count, int):
        raise EngineError("request_failed", f"no token count from {url}: {r.text[:200]}")
    return count


@dataclass(frozen=True)
class Attached:
    """A vLLM server someone else runs: where, the model name it serves, whether it has a chat
    template (so requests go to /v1/chat/completions), its version."""

    base_url: str
    served_model: str
    chat: bool
    version: str
    max_model_len: int | None


def attach(client: httpx.Client, url: str, model: str) -> Attached:
    """Check that a vLLM server answers at `url` and serves `model` (EngineError `unreachable`
    or `model_not_found`), and learn what requests it takes."""
    base = url.rstrip("/")
    entry = pick_model(served_models(client, base), model, base)
    served = str(entry.get("id"))
    # a chat template: /tokenize takes `messages` (HTTP 400 without one)
    probe = client.post(
        f"{base}/tokenize", json=tokenize_body(served, "x", chat=True), timeout=30.0
    )
    length = entry.get("max_model_len")
    return Attached(
        base_url=base,
        served_model=served,
        chat=probe.status_code == 200,
        version=_version(client, base),
        max_model_len=length if isinstance(length, int) else None,
    )


def _version(client: httpx.Client, base: str) -> str:
    try:
        r = client.get(f"{base}/version", timeout=10.0)
        version = r.json().get("version") if r.status_code == 200 else None
    except (httpx.TransportError, ValueError, AttributeError):
        version = None
    return f"vllm {version}" if isinstance(version, str) else "unknown"


def server_status(
    client: httpx.Client, name: str, url: str, version: Callable[[], str]
) -> EngineStatus:
    """Is a vLLM server up at `url`, and which models (with their max_model_len) does it serve?"""
    try:
        r = client.get(f"{url}/v1/models", timeout=3.0)
        r.raise_for_status()
        data = r.json().get("data") or []
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        return EngineStatus(name, False, url, detail=type(exc).__name__)
    models = tuple(
        ResidentModel(
            str(m.get("id", "?")),
            ctx=m.get("max_model_len") if isinstance(m.get("max_model_len"), int) else None,
        )
        for m in data
    )
    return EngineStatus(name, True, url, version=version(), models=models)


def ready_models(client: httpx.Client, url: str) -> list[dict[str, Any]]:
    """The models a vLLM server serves once it is healthy (/health, then /v1/models); empty
    while it is not ready yet (nothing listening, a non-200 answer, no model listed)."""
    try:
        health = client.get(f"{url}/health", timeout=2.0)
        if health.status_code != 200:
            return []
        models = client.get(f"{url}/v1/models", timeout=5.0)
    except httpx.TransportError:
        return []
    if models.status_code != 200:
        return []
    try:
        data = models.json().get("data") or []
    except (ValueError, AttributeError):
        return []
    return [m for m in data if isinstance(m, dict)]
