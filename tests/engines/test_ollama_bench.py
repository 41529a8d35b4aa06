"""Ollama benchmark requests against a scripted server (httpx.MockTransport): content events
(thinking counts, the empty final message does not), done_reason, counting by one short request,
attach and its failures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from vramphysics.engines.base import GenRequest
from vramphysics.engines.ollama import OllamaEngine
from vramphysics.engines.ollama.api import engine_timings
from vramphysics.engines.ollama.chat import message_text
from vramphysics.engines.ollama.config import OllamaConfig
from vramphysics.errors import EngineError

BASE = "http://127.0.0.1:11999"


def _msg(content: str = "", thinking: str | None = None, **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking is not None:
        message["thinking"] = thinking
    return {"model": "tiny:latest", "message": message, "done": False, **extra}


FINAL = {
    **_msg(),
    "done": True,
    "done_reason": "length",
    "prompt_eval_count": 21,
    "prompt_eval_duration": 7_000_000,
    "eval_count": 3,
    "eval_duration": 30_000_000,
}


def _ollama(seen: list[tuple[str, dict[str, Any]]]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        seen.append((request.url.path, body))
        path = request.url.path
        if path == "/api/version":
            return httpx.Response(200, json={"version": "0.12.0"})
        if path == "/api/tags":
            return httpx.Response(200, json={"models": [{"name": "tiny:latest"}]})
        if path == "/api/chat" and body.get("stream") is False:
            return httpx.Response(200, json=FINAL)
        if path == "/api/chat":
            lines = [_msg(thinking="hmm"), _msg("a"), _msg("b"), FINAL]
            return httpx.Response(200, content="".join(json.dumps(x) + "\n" for x in lines))
        return httpx.Response(404, json={"error": "not found"})

    return httpx.MockTransport(handle)


def _engine(tmp_path: Path, transport: httpx.MockTransport | None = None) -> OllamaEngine:
    cfg = OllamaConfig.model_validate({"start_server": False, "num_parallel": 3})
    engine = OllamaEngine(cfg, state_dir=tmp_path / "state", log_dir=tmp_path / "logs")
    if transport is not None:  # the scripted server instead of the network
        engine._client.close()
        engine._client = httpx.Client(transport=transport)
        engine._server._client = engine._client
    return engine


@pytest.mark.parametrize(
    ("event", "text"),
    [
        (_msg(thinking="t"), "t"),
        (_msg("c"), "c"),
        (_msg(), ""),
        ({"response": "g", "done": False}, "g"),
        ({"response": "", "thinking": "gt", "done": False}, "gt"),
    ],
)
def test_message_text(event: dict[str, Any], text: str) -> None:
    assert message_text(event) == text


def test_attach_generate_and_count(tmp_path: Path) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    engine = _engine(tmp_path, _ollama(seen))
    engine.attach(BASE, "tiny")
    assert engine.version() == "ollama 0.12.0"
    assert engine.root_pid() is None
    done = engine.generate(GenRequest("hello", 3))
    path, body = seen[-1]
    assert path == "/api/chat" and body["model"] == "tiny:latest"
    assert body["options"]["num_predict"] == 3
    assert "num_ctx" not in body["options"]  # never reload someone else's model
    assert len(done.content_times_s) == 3  # the thinking chunk counts, the final one does not
    assert done.first_text_s == done.content_times_s[0]
    assert done.finish_reason == "length"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (21, 3)
    assert engine.count_prompt_tokens("hello") == 21
    path, body = seen[-1]
    assert body["stream"] is False and body["options"]["num_predict"] == 1
    # our configured num_parallel was never applied to that server: not reported as its own
    n, why = engine.max_concurrency()
    assert "config" not in why and str(n) in why
    engine.close()  # nothing of ours to stop or unload
    assert not any(b.get("keep_alive") == 0 for _, b in seen)


def test_attach_names_the_models_it_has(tmp_path: Path) -> None:
    engine = _engine(tmp_path, _ollama([]))
    with pytest.raises(EngineError) as info:
        engine.attach(BASE, "qwen3")
    assert info.value.kind == "model_not_found" and "'tiny:latest'" in info.value.message
    engine.close()


def test_attach_to_nothing_is_unreachable(tmp_path: Path, free_port: int) -> None:
    engine = _engine(tmp_path)
    with pytest.raises(EngineError) as info:
        engine.attach(f"http://127.0.0.1:{free_port}", "tiny")
    assert info.value.kind == "unreachable" and f"127.0.0.1:{free_port}" in info.value.message
    engine.close()


def test_the_configured_num_parallel_is_the_concurrency(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    assert engine.max_concurrency() == (3, "Ollama's num_parallel 3 (config)")
    engine.close()


def test_cached_prompt_tokens_are_not_prefill_work() -> None:
    final = {"prompt_eval_count": 120, "prompt_eval_cached_count": 100}
    rates = engine_timings({**final, "prompt_eval_duration": 10_000_000})
    assert rates["prefill_tokens_per_s"] == pytest.approx(20 / 0.01)
    assert rates["prompt_cached_tokens"] == 100
