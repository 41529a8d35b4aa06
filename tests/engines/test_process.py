"""A port someone else holds (engines/process.py, Engine.claim_port / check_listener).

A foreign server on the engine's port must never pass for ours: refused before the start
(`port_in_use` naming the holder), and readiness counts only from a socket our tree listens on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import psutil
import pytest

from vramphysics.config import load_config
from vramphysics.engines.llamacpp import LlamaCppEngine
from vramphysics.engines.llamacpp.config import LlamaCppConfig
from vramphysics.engines.process import (
    can_bind,
    ensure_port_free,
    port_holder,
    tree_listens_on,
)
from vramphysics.engines.process import free_port as pick_free_port
from vramphysics.errors import ConfigError, EngineError
from vramphysics.setups import parse_model_id

ME = f"pid {os.getpid()} ({psutil.Process().name()})"


class _Models(BaseHTTPRequestHandler):
    """Another server on the port: a user's own llama-server, answering /v1/models."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = b'{"object": "list", "data": [{"id": "someone-elses-model"}]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def foreign() -> Iterator[ThreadingHTTPServer]:
    """A server of someone else, listening on 127.0.0.1 (in this test process)."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Models)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def port_of(httpd: ThreadingHTTPServer) -> int:
    return int(httpd.server_address[1])


def test_a_listening_port_is_busy_and_its_holder_is_named(
    foreign: ThreadingHTTPServer,
) -> None:
    port = port_of(foreign)
    assert not can_bind("127.0.0.1", port)
    assert port_holder(port) == ME
    with pytest.raises(EngineError) as info:
        ensure_port_free("127.0.0.1", port, model_id="llamacpp:m.gguf")
    assert info.value.kind == "port_in_use"
    assert f"port {port} on 127.0.0.1 is held by {ME}" in info.value.message
    assert info.value.model_id == "llamacpp:m.gguf"


def test_a_free_port_passes(free_port: int) -> None:
    assert can_bind("127.0.0.1", free_port)
    ensure_port_free("127.0.0.1", free_port)
    assert can_bind("127.0.0.1", pick_free_port("127.0.0.1"))


def test_tree_listens_on(foreign: ThreadingHTTPServer, free_port: int) -> None:
    assert tree_listens_on(os.getpid(), port_of(foreign)) is True  # this process listens
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True
    )
    try:
        assert tree_listens_on(child.pid, port_of(foreign)) is False  # the child does not
    finally:
        child.kill()
        child.wait()
    assert tree_listens_on(os.getpid(), free_port) is False


def _engine(
    tmp_path: Path, port: int | Literal["auto"], command: list[str] | None = None
) -> LlamaCppEngine:
    cfg = LlamaCppConfig(
        port=port,
        command=command,
        model_dir=tmp_path,
        start_timeout_s=30,
        stop_timeout_s=5,
    )
    return LlamaCppEngine(cfg, state_dir=tmp_path / "state", log_dir=tmp_path / "logs")


def test_start_on_a_busy_port_is_port_in_use_before_any_process(
    tmp_path: Path, foreign: ThreadingHTTPServer
) -> None:
    port = port_of(foreign)
    with _engine(tmp_path, port) as engine:
        with pytest.raises(EngineError) as info:
            engine.start(parse_model_id("llamacpp:m.gguf"), 512)
        assert engine.root_pid() is None  # nothing was launched
    assert info.value.kind == "port_in_use"
    assert str(port) in info.value.message and ME in info.value.message
    assert not list((tmp_path / "state" / "procs").glob("*.json"))
    assert not (tmp_path / "logs").exists() or not list((tmp_path / "logs").iterdir())


def test_readiness_from_a_server_that_is_not_ours_is_port_in_use(
    tmp_path: Path, free_port: int
) -> None:
    """The port was free at the start, then someone else took it while ours was loading: the
    answer on /v1/models is not our engine's."""
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    with _engine(tmp_path, free_port, command=sleeper) as engine:
        engine.start(parse_model_id("llamacpp:m.gguf"), 512)
        httpd = ThreadingHTTPServer(("127.0.0.1", free_port), _Models)
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02})
        thread.start()
        try:
            t0 = time.monotonic()
            with pytest.raises(EngineError) as info:
                engine.wait_ready()
            waited = time.monotonic() - t0
        finally:
            httpd.shutdown()
            httpd.server_close()
            thread.join()
    assert info.value.kind == "port_in_use", info.value
    assert ME in info.value.message
    assert waited < 10


def test_port_auto_takes_a_free_port(tmp_path: Path, foreign: ThreadingHTTPServer) -> None:
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    with _engine(tmp_path, "auto", command=sleeper) as engine:
        engine.start(parse_model_id("llamacpp:m.gguf"), 512)
        pid = engine.root_pid()
        assert pid is not None
        argv = psutil.Process(pid).cmdline()
        port = int(argv[argv.index("--port") + 1])
        assert port != port_of(foreign)
        assert engine.base_url == f"http://127.0.0.1:{port}"
        assert engine.settings()["port"] == "auto"


@pytest.mark.parametrize(
    ("text", "ok"),
    [("port: auto", True), ("port: 8401", True), ("port: 0", False), ("port: true", False)],
)
def test_config_port_is_a_number_or_auto(tmp_path: Path, text: str, ok: bool) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"engines:\n  llamacpp:\n    {text}\n  vllm:\n    {text}\n", encoding="utf-8")
    if ok:
        cfg = load_config(path)
        value = text.split(": ")[1]
        expected = value if value == "auto" else int(value)
        assert cfg.engines.llamacpp.port == cfg.engines.vllm.port == expected
    else:
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert "engines.llamacpp.port" in str(info.value)


def test_a_process_whose_record_cannot_be_written_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full while recording a started engine: the engine is stopped, not left behind."""
    import errno
    import sys

    from vramphysics.engines import process

    def full(*_a: object, **_k: object) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(process, "_write_record", full)
    started: list[int] = []
    real_popen = process.subprocess.Popen

    def popen(*a: object, **k: object) -> object:
        p = real_popen(*a, **k)  # type: ignore[call-overload]
        started.append(p.pid)
        return p

    monkeypatch.setattr(process.subprocess, "Popen", popen)
    with pytest.raises(OSError, match="No space"):
        process.ManagedProcess(
            [sys.executable, "-c", "import time; time.sleep(60)"],
            log_path=tmp_path / "x.log",
            label="sleeper",
            state_dir=tmp_path / "state",
        )
    assert started and not psutil.pid_exists(started[0])
