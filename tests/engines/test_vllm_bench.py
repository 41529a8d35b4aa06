"""vLLM benchmark requests without a real server: the request bodies and /tokenize bodies, and
attach to a scripted vLLM (chat template or not, its version, its failures)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from vramphysics.engines.base import GenRequest
from vramphysics.engines.vllm import VllmEngine
from vramphysics.engines.vllm.config import VllmConfig
from vramphysics.engines.vllm.requests import request_body, tokenize_body
from vramphysics.errors import EngineError

BASE = "http://127.0.0.1:8998"


@pytest.mark.parametrize("chat", [True, False])
def test_a_timed_request_is_exact_and_never_asks_for_logprobs(chat: bool) -> None:
    path, body = request_body("m", "hi", 64, exact=True, chat=chat)
    assert path == ("/v1/chat/completions" if chat else "/v1/completions")
    assert "logprobs" not in body and "top_logprobs" not in body
    assert (body["max_tokens"], body["min_tokens"], body["ignore_eos"]) == (64, 64, True)
    assert body["stream_options"] == {"include_usage": True}
    _, free = request_body("m", "hi", 64, exact=False, chat=chat)
    assert "min_tokens" not in free and "ignore_eos" not in free


def test_tokenize_bodies_count_as_the_request_is_sent() -> None:
    chat = tokenize_body("m", "hi", chat=True)
    assert chat["messages"] == [{"role": "user", "content": "hi"}]
    assert chat["add_generation_prompt"] is True
    plain = tokenize_body("m", "hi", chat=False)
    assert plain["prompt"] == "hi" and plain["add_special_tokens"] is True


def _vllm(seen: list[tuple[str, dict[str, Any]]], *, chat: bool) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        seen.append((request.url.path, body))
        path = request.url.path
        if path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "org/tiny", "max_model_len": 2048}]})
        if path == "/version":
            return httpx.Response(200, json={"version": "0.11.0"})
        if path == "/tokenize":
            if "messages" in body and not chat:
                return httpx.Response(400, json={"error": {"message": "no chat template"}})
            return httpx.Response(200, json={"count": 11, "tokens": list(range(11))})
        if path in ("/v1/chat/completions", "/v1/completions"):
            key = "delta" if "messages" in body else "text"
            piece = {"content": "x"} if key == "delta" else "x"
            usage = {"prompt_tokens": 11, "completion_tokens": 2}
            events = [
                {"choices": [{key: piece}]},
                {"choices": [{key: piece, "finish_reason": "length"}]},
                {"choices": [], "usage": usage},
            ]
            text = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
            return httpx.Response(200, content=text.encode())
        return httpx.Response(404)

    return httpx.MockTransport(handle)


def _engine(tmp_path: Path, transport: httpx.MockTransport | None = None) -> VllmEngine:
    cfg = VllmConfig.model_validate({"model_dir": str(tmp_path)})
    engine = VllmEngine(cfg, state_dir=tmp_path / "state", log_dir=tmp_path / "logs")
    if transport is not None:  # the scripted server instead of the network
        engine._client.close()
        engine._client = httpx.Client(transport=transport)
    return engine


@pytest.mark.parametrize("chat", [True, False])
def test_attach_to_a_vllm_server(tmp_path: Path, chat: bool) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    engine = _engine(tmp_path, _vllm(seen, chat=chat))
    engine.attach(BASE + "/", "org/tiny")
    assert engine.version() == "vllm 0.11.0"
    assert engine.max_concurrency() == (None, "")
    assert engine.root_pid() is None
    assert engine.count_prompt_tokens("hello") == 11
    assert ("messages" in seen[-1][1]) is chat
    done = engine.generate(GenRequest("hello", 2))
    path, body = seen[-1]
    assert path == ("/v1/chat/completions" if chat else "/v1/completions")
    assert body["model"] == "org/tiny" and body["ignore_eos"] is True
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (11, 2)
    assert len(done.content_times_s) == 2 and done.finish_reason == "length"
    engine.stop()
    engine.close()  # nothing of ours to stop


def test_attach_names_the_models_it_serves(tmp_path: Path) -> None:
    engine = _engine(tmp_path, _vllm([], chat=True))
    with pytest.raises(EngineError) as info:
        engine.attach(BASE, "org/other")
    assert info.value.kind == "model_not_found" and "'org/tiny'" in info.value.message
    engine.close()


def test_attach_to_nothing_is_unreachable(tmp_path: Path, free_port: int) -> None:
    engine = _engine(tmp_path)
    with pytest.raises(EngineError) as info:
        engine.attach(f"http://127.0.0.1:{free_port}", "org/tiny")
    assert info.value.kind == "unreachable" and f"127.0.0.1:{free_port}" in info.value.message
    engine.close()
