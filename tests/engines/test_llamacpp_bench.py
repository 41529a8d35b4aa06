"""llama.cpp benchmark requests without a real server: the request bodies (no logprobs, exact
output as each server spells it), attach to a scripted llama-server / llama-cpp-python, slots."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from vramphysics.engines.base import GenRequest
from vramphysics.engines.llamacpp import LlamaCppEngine
from vramphysics.engines.llamacpp.command import gen_payload, parallel_slots
from vramphysics.engines.llamacpp.config import LlamaCppConfig
from vramphysics.errors import EngineError

BASE = "http://127.0.0.1:8999"
MODEL_PATH = "/models/tiny-llama.gguf"
Handler = Callable[[httpx.Request], httpx.Response]


def _sse(*events: dict[str, Any]) -> bytes:
    return b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events) + b"data: [DONE]\n\n"


def _llama_server(seen: list[tuple[str, dict[str, Any]]], slots: int = 4) -> Handler:
    """A scripted llama-server: /v1/models, /props, /tokenize and a completions stream whose last
    chunk carries `timings` (no usage)."""

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        body = json.loads(request.content) if request.content else {}
        seen.append((path, body))
        if path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": MODEL_PATH}]})
        if path == "/props":
            return httpx.Response(200, json={"total_slots": slots, "build_info": "b6000-abc"})
        if path == "/tokenize":
            n = len(body["content"].split()) + (1 if body.get("add_special") else 0)
            return httpx.Response(200, json={"tokens": list(range(n))})
        if path == "/v1/completions":
            timings = {"prompt_n": 6, "prompt_per_second": 300.0, "predicted_n": 3}
            last = {"choices": [{"text": "c", "finish_reason": "length"}], "timings": timings}
            stream = _sse({"choices": [{"text": "a"}]}, {"choices": [{"text": "b"}]}, last)
            return httpx.Response(200, content=stream)
        return httpx.Response(404, json={"error": "not found"})

    return handle


def _engine(tmp_path: Path, handler: Handler | None = None) -> LlamaCppEngine:
    cfg = LlamaCppConfig.model_validate({"model_dir": str(tmp_path)})
    engine = LlamaCppEngine(cfg, state_dir=tmp_path / "state", log_dir=tmp_path / "logs")
    if handler is not None:  # the scripted server instead of the network
        engine._client.close()
        engine._client = httpx.Client(transport=httpx.MockTransport(handler))
    return engine


@pytest.mark.parametrize("llama_server", [True, False])
@pytest.mark.parametrize("exact", [True, False])
def test_a_timed_request_never_asks_for_logprobs(llama_server: bool, exact: bool) -> None:
    body = gen_payload("p", 32, exact=exact, llama_server=llama_server)
    assert "logprobs" not in body and "top_logprobs" not in body and "n_probs" not in body
    assert body["max_tokens"] == 32
    if exact and llama_server:
        assert body["ignore_eos"] is True and "min_tokens" not in body
    elif exact:
        assert body["min_tokens"] == 32 and "ignore_eos" not in body
    else:
        assert "min_tokens" not in body and "ignore_eos" not in body


@pytest.mark.parametrize(
    ("argv", "slots"),
    [
        (["-m", "x", "--parallel", "1"], 1),
        (["--parallel", "1", "-np", "4"], 4),  # the last one wins
        (["--parallel=8"], 8),
        (["-c", "512"], None),
    ],
)
def test_parallel_slots(argv: list[str], slots: int | None) -> None:
    assert parallel_slots(argv) == slots


def test_the_slots_of_a_llama_server_we_start(tmp_path: Path) -> None:
    cfg = LlamaCppConfig.model_validate(
        {"model_dir": str(tmp_path), "command": ["llama-server"], "extra_args": ["-np", "3"]}
    )
    engine = LlamaCppEngine(cfg, state_dir=tmp_path / "s", log_dir=tmp_path / "l")
    assert engine.max_concurrency() == (3, "llama-server's parallel slots (--parallel 3)")
    engine.close()


def test_llama_cpp_python_serializes(tmp_path: Path) -> None:
    cfg = LlamaCppConfig.model_validate({"model_dir": str(tmp_path), "command": ["python"]})
    engine = LlamaCppEngine(cfg, state_dir=tmp_path / "s", log_dir=tmp_path / "l")
    assert engine.max_concurrency() == (1, "llama-cpp-python's server serializes requests")
    engine.close()


def test_attach_to_a_llama_server(tmp_path: Path) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    engine = _engine(tmp_path, _llama_server(seen, slots=4))
    engine.attach(BASE + "/", "tiny-llama")  # the file's stem names it
    assert engine.version() == "llama-server b6000-abc"
    assert engine.max_concurrency()[0] == 4
    assert engine.root_pid() is None
    assert engine.count_prompt_tokens("one two three") == 4  # add_special: the BOS
    done = engine.generate(GenRequest("one two three", 3))
    path, body = seen[-1]
    assert path == "/v1/completions"
    assert body["ignore_eos"] is True and body["model"] == MODEL_PATH
    assert "logprobs" not in body
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (6, 3)
    assert done.usage.source == "engine-timings"
    assert done.engine_timings["prefill_tokens_per_s"] == 300.0
    assert len(done.content_times_s) == 3 and done.finish_reason == "length"
    engine.close()  # nothing of ours to stop: no process, no signal


def test_attach_names_the_models_a_server_serves(tmp_path: Path) -> None:
    engine = _engine(tmp_path, _llama_server([]))
    with pytest.raises(EngineError) as info:
        engine.attach(BASE, "qwen")
    assert info.value.kind == "model_not_found"
    assert MODEL_PATH in info.value.message and "qwen" in info.value.message
    engine.close()


def test_attach_to_nothing_is_unreachable(tmp_path: Path, free_port: int) -> None:
    engine = _engine(tmp_path)
    url = f"http://127.0.0.1:{free_port}"
    with pytest.raises(EngineError) as info:
        engine.attach(url, "tiny")
    assert info.value.kind == "unreachable"
    assert url in str(info.value) and "\n" not in str(info.value)
    engine.close()


def test_a_failed_tokenize_is_an_engine_error_naming_the_url(tmp_path: Path) -> None:
    scripted = _llama_server([])

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/tokenize":
            return httpx.Response(500, text="tokenizer exploded")
        return scripted(request)

    engine = _engine(tmp_path, handle)
    engine.attach(BASE, "tiny-llama")
    with pytest.raises(EngineError) as info:
        engine.count_prompt_tokens("x")
    assert info.value.kind == "request_failed"
    assert f"{BASE}/tokenize" in info.value.message and "tokenizer exploded" in info.value.message
    engine.close()
