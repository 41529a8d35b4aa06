"""Streaming OpenAI-compatible requests (engines/openai_compat.py), against a real local server."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from vramphysics.engines.llamacpp import LlamaCppEngine
from vramphysics.engines.llamacpp.config import LlamaCppConfig
from vramphysics.engines.openai_compat import (
    engine_client,
    iter_sse_data,
    server_api_key,
    stream_completion,
)
from vramphysics.errors import EngineError
from vramphysics.setups import parse_model_id

AUTH_SERVER = Path(__file__).resolve().parents[1] / "faults" / "fake_engines" / "auth_server.py"


def sse(obj: Any) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}"


# What a vLLM / llama.cpp chat stream looks like: a role chunk with empty content, text chunks,
# a finish chunk, the usage chunk (stream_options.include_usage) and [DONE].
ROLE = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
    "usage": None,
}


def text_chunk(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
        "usage": None,
    }


FINISH = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
    "usage": None,
}
USAGE = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "choices": [],
    "usage": {"prompt_tokens": 17, "completion_tokens": 5, "total_tokens": 22},
}


def completion_chunk(text: str, tokens: list[str]) -> dict[str, Any]:
    """The completions API with `"logprobs": 1`: the engine lists the tokens it sent."""
    return {
        "object": "text_completion",
        "choices": [
            {
                "index": 0,
                "text": text,
                "logprobs": {"tokens": tokens, "token_logprobs": [-0.1] * len(tokens)},
                "finish_reason": None,
            }
        ],
    }


CHAT_STREAM = [
    sse(ROLE),
    "",
    sse(text_chunk("Hello")),
    "",
    sse(text_chunk(",")),
    "",
    ": keep-alive comment",
    sse(text_chunk(" world")),
    sse(FINISH),
    sse(USAGE),
    sse("[DONE]"),
    "",
]


# -- iter_sse_data ---------------------------------------------------------------------------


def test_iter_sse_data_on_a_chat_stream() -> None:
    events = list(iter_sse_data(iter(CHAT_STREAM)))
    assert events == [
        ROLE,
        text_chunk("Hello"),
        text_chunk(","),
        text_chunk(" world"),
        FINISH,
        USAGE,
    ]


def test_iter_sse_data_stops_at_done() -> None:
    lines = [sse(text_chunk("a")), "data: [DONE]", sse(text_chunk("never"))]
    assert list(iter_sse_data(iter(lines))) == [text_chunk("a")]


def test_iter_sse_data_without_a_space_and_other_fields() -> None:
    lines = ["event: message", "id: 7", 'data:{"x": 1}', "data:   ", "retry: 10", "data: [DONE]"]
    assert list(iter_sse_data(iter(lines))) == [{"x": 1}]


def test_iter_sse_data_skips_non_objects() -> None:
    assert list(iter_sse_data(iter(["data: [1, 2]", 'data: "s"', 'data: {"a": 1}']))) == [{"a": 1}]


def test_error_event_is_an_engine_error() -> None:
    lines = [sse(text_chunk("a")), sse({"error": {"message": "out of KV blocks", "code": 500}})]
    events = iter_sse_data(iter(lines))
    assert next(events) == text_chunk("a")
    with pytest.raises(EngineError) as info:
        next(events)
    assert info.value.kind == "request_failed"
    assert "out of KV blocks" in str(info.value)


def test_malformed_json_is_an_engine_error() -> None:
    with pytest.raises(EngineError) as info:
        list(iter_sse_data(iter([sse(text_chunk("a")), 'data: {"choices": [{"delta": '])))
    assert info.value.kind == "request_failed"
    assert "malformed stream event" in str(info.value)


# -- stream_completion against a real server -------------------------------------------------


class _Server:
    """A tiny HTTP server: each POST gets the next scripted answer (status, [(delay_s, line)])."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, list[tuple[float, str]]]] = []
        self.bodies: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length", 0))
                server.bodies.append(json.loads(self.rfile.read(length)))
                code, lines = server.answers.pop(0)
                self.send_response(code)
                self.send_header(
                    "Content-Type", "text/event-stream" if code == 200 else "application/json"
                )
                self.end_headers()
                for delay, line in lines:
                    if delay:
                        time.sleep(delay)
                    self.wfile.write((line + "\n").encode())
                    self.wfile.flush()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1/chat/completions"
        self.httpd.block_on_close = False  # a handler still sleeping must not hold up teardown
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def answer(self, lines: Sequence[str | tuple[float, str]], code: int = 200) -> None:
        self.answers.append((code, [x if isinstance(x, tuple) else (0.0, x) for x in lines]))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.close()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client() as c:
        yield c


def test_chat_stream_with_usage(server: _Server, client: httpx.Client) -> None:
    # the role chunk comes at once; the first text only after 0.3 s
    server.answer(
        [
            sse(ROLE),
            "",
            (0.3, sse(text_chunk("Hello"))),
            "",
            (0.2, sse(text_chunk(","))),
            (0.0, sse(text_chunk(" world"))),
            sse(FINISH),
            sse(USAGE),
            sse("[DONE]"),
        ]
    )
    payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    c = stream_completion(client, server.url, payload, timeout_s=10)
    assert server.bodies == [dict(payload, stream=True)]  # the caller's payload is not mutated
    assert "stream" not in payload
    assert c.usage.source == "engine-usage"
    assert (c.usage.prompt_tokens, c.usage.completion_tokens) == (17, 5)
    assert c.n_chunks == 3  # chunks with text; the role, finish and usage chunks carry none
    assert c.first_text_s is not None and c.last_text_s is not None
    # TTFT counts from the first chunk WITH text, not the role chunk
    assert c.ttft_ms is not None and c.ttft_ms >= 300.0
    assert c.last_text_s - c.first_text_s >= 0.2
    assert c.sent_s <= c.first_text_s <= c.last_text_s <= c.end_s


def test_completions_stream_counts_logprob_tokens(server: _Server, client: httpx.Client) -> None:
    server.answer(
        [
            sse(completion_chunk("", [])),
            sse(completion_chunk("Hello", ["Hel", "lo"])),
            sse(completion_chunk(" world", [" world"])),
            sse(completion_chunk("!", ["!"])),
            sse("[DONE]"),
        ]
    )
    c = stream_completion(
        client,
        server.url,
        {"model": "m", "prompt": "Say hello", "max_tokens": 4, "logprobs": 1},
        timeout_s=10,
        count_tokens=lambda s: len(s.split()),
    )
    assert c.usage.source == "engine-logprobs"
    assert c.usage.completion_tokens == 4  # Hel, lo, " world", "!"
    assert c.usage.prompt_tokens == 2  # the engine's tokenizer on the prompt: "Say hello"
    assert c.n_chunks == 3


def test_usage_wins_over_logprobs(server: _Server, client: httpx.Client) -> None:
    server.answer([sse(completion_chunk("Hi", ["Hi"])), sse(USAGE), sse("[DONE]")])
    c = stream_completion(client, server.url, {"prompt": "x"}, timeout_s=10)
    assert c.usage.source == "engine-usage"
    assert c.usage.completion_tokens == 5


def test_tokenizer_fallback_and_no_counts(server: _Server, client: httpx.Client) -> None:
    lines = [sse(ROLE), sse(text_chunk("one two")), sse(text_chunk(" three")), sse("[DONE]")]
    server.answer(lines)
    c = stream_completion(
        client, server.url, {"prompt": "a b c"}, timeout_s=10, count_tokens=lambda s: len(s.split())
    )
    assert c.usage.source == "engine-tokenizer"
    assert (c.usage.prompt_tokens, c.usage.completion_tokens) == (3, 3)
    server.answer(lines)
    c = stream_completion(client, server.url, {"messages": []}, timeout_s=10)
    assert c.usage.source == "none"
    assert (c.usage.prompt_tokens, c.usage.completion_tokens) == (None, None)


def test_no_text_means_no_ttft(server: _Server, client: httpx.Client) -> None:
    server.answer([sse(ROLE), sse(FINISH), sse("[DONE]")])
    c = stream_completion(client, server.url, {}, timeout_s=10)
    assert c.first_text_s is None and c.last_text_s is None and c.ttft_ms is None
    assert c.n_chunks == 0


def test_http_error_is_an_engine_error(server: _Server, client: httpx.Client) -> None:
    server.answer(['{"error": "model not loaded"}'], code=404)
    with pytest.raises(EngineError) as info:
        stream_completion(client, server.url, {}, timeout_s=10, model_id="vl_x/y")
    assert info.value.kind == "request_failed"
    assert info.value.model_id == "vl_x/y"
    assert "HTTP 404" in str(info.value)
    assert "model not loaded" in str(info.value)


def test_error_event_in_the_stream(server: _Server, client: httpx.Client) -> None:
    server.answer([sse(text_chunk("a")), sse({"error": "boom"})])
    with pytest.raises(EngineError, match="engine error in stream: boom") as info:
        stream_completion(client, server.url, {}, timeout_s=10)
    assert info.value.kind == "request_failed"


def test_malformed_event_in_the_stream(server: _Server, client: httpx.Client) -> None:
    server.answer([sse(text_chunk("a")), "data: {not json"])
    with pytest.raises(EngineError, match="malformed stream event"):
        stream_completion(client, server.url, {}, timeout_s=10)


def test_read_timeout(server: _Server, client: httpx.Client) -> None:
    server.answer([sse(ROLE), (1.5, sse(text_chunk("late")))])
    with pytest.raises(EngineError) as info:
        stream_completion(client, server.url, {}, timeout_s=0.3, model_id="m")
    assert info.value.kind == "timeout"


def test_connection_refused(client: httpx.Client, free_port: int) -> None:
    with pytest.raises(EngineError) as info:
        stream_completion(client, f"http://127.0.0.1:{free_port}/v1/completions", {}, timeout_s=2)
    assert info.value.kind == "request_failed"
    assert "ConnectError" in str(info.value)


# -- API keys: the key a server demands, sent on every request; 401/403 fails at once ----------


@pytest.mark.parametrize(
    ("argv", "env", "key"),
    [
        (["--api-key", "sk-one"], {}, "sk-one"),  # llama-server, vLLM
        (["--api_key=sk-two"], {}, "sk-two"),  # llama-cpp-python
        (["--api-key", "k1,k2"], {}, "k1"),  # llama-server takes a list: the first is ours
        ([], {"LLAMA_API_KEY": "sk-env"}, "sk-env"),
        (["--api-key", "sk-arg"], {"LLAMA_API_KEY": "sk-env"}, "sk-arg"),  # the flag wins
        (["--port", "8400", "--api-key-length", "8"], {}, None),
        ([], {"OTHER_API_KEY": "sk-x"}, None),
        (["--api-key"], {}, None),
    ],
)
def test_server_api_key(argv: list[str], env: dict[str, str], key: str | None) -> None:
    assert server_api_key(argv, env, ("LLAMA_API_KEY",)) == key


def test_server_api_key_from_a_key_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("\n  sk-from-file \nsk-second\n", encoding="utf-8")
    assert server_api_key(["--api-key-file", str(keys)], {}) == "sk-from-file"
    with pytest.raises(EngineError) as info:
        server_api_key(["--api-key-file", str(tmp_path / "missing")], {})
    assert info.value.kind == "start_failed" and "missing" in info.value.message


@pytest.mark.parametrize("code", [401, 403])
def test_401_or_403_in_a_stream_is_unauthorized(
    server: _Server, client: httpx.Client, code: int
) -> None:
    server.answer(['{"error": "Invalid API Key"}'], code=code)
    with pytest.raises(EngineError) as info:
        stream_completion(client, server.url, {}, timeout_s=10, model_id="llamacpp:x.gguf")
    assert info.value.kind == "unauthorized"
    assert info.value.model_id == "llamacpp:x.gguf"
    assert f"HTTP {code}" in info.value.message


def test_engine_client_sends_the_key_and_raises_on_401(server: _Server) -> None:
    seen: list[str | None] = []

    with engine_client(5.0, "sk-bearer-123") as c:
        c.event_hooks["request"] = [lambda r: seen.append(r.headers.get("Authorization"))]
        server.answer(['{"error": "no"}'], code=401)
        with pytest.raises(EngineError) as info:
            c.post(server.url, json={})
    assert info.value.kind == "unauthorized"
    assert seen == ["Bearer sk-bearer-123"]
    with engine_client(5.0, None) as c:
        assert "Authorization" not in c.headers


def _auth_engine(tmp_path: Path, port: int, extra_args: list[str]) -> LlamaCppEngine:
    cfg = LlamaCppConfig(
        port=port,
        command=[sys.executable, str(AUTH_SERVER)],
        model_dir=tmp_path,
        extra_args=extra_args,
        start_timeout_s=60,
        stop_timeout_s=5,
    )
    return LlamaCppEngine(cfg, state_dir=tmp_path / "state", log_dir=tmp_path / "logs")


def test_an_engine_that_wants_a_key_we_lack_fails_at_once_unauthorized(
    tmp_path: Path, free_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server demands a key we were not told of: not 60 s of polling, but `unauthorized`."""
    monkeypatch.setenv("FAKE_REQUIRED_KEY", "sk-we-do-not-know")
    with _auth_engine(tmp_path, free_port, []) as engine:
        engine.start(parse_model_id("llamacpp:m.gguf"), 512)
        t0 = time.monotonic()
        with pytest.raises(EngineError) as info:
            engine.wait_ready()
        waited = time.monotonic() - t0
        log_text = engine.log_tail()
    assert info.value.kind == "unauthorized"
    assert "HTTP 401" in info.value.message
    assert waited < 20, f"waited {waited:.1f} s of a 60 s start timeout"
    assert "GET /v1/models key=missing" in log_text


def test_an_engine_started_with_an_api_key_gets_it_on_every_request(
    tmp_path: Path, free_port: int
) -> None:
    with _auth_engine(tmp_path, free_port, ["--api_key", "sk-test-0123456789"]) as engine:
        engine.start(parse_model_id("llamacpp:m.gguf"), 512)
        engine.wait_ready()
        done = engine.complete("Hello", 4)
        log_text = engine.log_tail()
    assert done.n_chunks == 1 and done.usage.completion_tokens == 1
    requests = [line for line in log_text.splitlines() if " key=" in line]
    assert requests and all(line.endswith("key=ok") for line in requests), log_text
    assert any(line.startswith("POST /v1/completions") for line in requests)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_real_llama_cpp_server_with_an_api_key(
    tmp_path: Path, free_port: int, tiny_gguf: Path
) -> None:
    """llama-cpp-python started with `--api_key`: ready, a completion and its token count (the
    tokenize endpoint is guarded too) all carry the key."""
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python is installed by `make test`")
    cfg = LlamaCppConfig(
        port=free_port,
        command=[sys.executable, "-m", "llama_cpp.server"],
        model_dir=tiny_gguf.parent,
        extra_args=["--api_key", "sk-real-0123456789"],
        start_timeout_s=90,
        stop_timeout_s=5,
    )
    with LlamaCppEngine(cfg, state_dir=tmp_path / "state", log_dir=tmp_path / "logs") as engine:
        engine.start(parse_model_id(f"llamacpp:{tiny_gguf.name}"), 512)
        engine.wait_ready()
        done = engine.complete("Hello", 4)
        assert done.usage.completion_tokens is not None
        plain = httpx.get(f"{engine.base_url}/v1/models", timeout=5)
    assert plain.status_code == 401  # the server does demand the key
