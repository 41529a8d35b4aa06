"""A port someone else holds: another server already listens on the engine's port.

Before the fix, our engine failed to bind while readiness and the warm-up talked to the other
server, and "points" were recorded from our dying process tree. Now every start is a FAILED row
`port_in_use` naming the port and the holder, before any engine process starts.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import psutil
import pytest

if TYPE_CHECKING:
    from conftest import Workspace  # the `ws` fixture

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]


class _UsersOwnServer(BaseHTTPRequestHandler):
    """A user's own llama-server on the port: it answers /v1/models and completions."""

    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.requests.append(f"GET {self.path}")
        body = b'{"object": "list", "data": [{"id": "users-own-model"}]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        self.requests.append(f"POST {self.path}")
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.write(b'data: {"choices": [{"text": "hi"}]}\n\ndata: [DONE]\n\n')

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def users_server(ws: Workspace) -> Iterator[ThreadingHTTPServer]:
    _UsersOwnServer.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", ws.port), _UsersOwnServer)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_a_server_already_on_the_port_gives_port_in_use_and_no_point(
    ws: Workspace, users_server: ThreadingHTTPServer, figures: dict[str, Any]
) -> None:
    assert ws.answers(), "the user's own server answers on the engine's port"
    _UsersOwnServer.requests.clear()
    result = ws.run()
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr

    records = ws.journal()
    assert not [r for r in records if r["kind"] in ("point", "bench_cell", "request")]
    failed = [r for r in records if r["kind"] == "status" and r["ctx"] is not None]
    assert sorted(r["ctx"] for r in failed) == sorted(ws.cfg["sweep"]["contexts"])
    me = f"pid {os.getpid()} ({psutil.Process().name()})"
    for row in failed:
        assert row["status"] == "FAILED" and row["failure_kind"] == "port_in_use", row
        assert f"port {ws.port} on 127.0.0.1 is held by {me}" in row["reason"]
    (final,) = [r for r in records if r["kind"] == "status" and r["ctx"] is None]
    assert final["status"] == "FAILED"
    assert not ws.db_entries()
    assert not list(ws.state.glob("logs/*/llamacpp-*.log")), "no engine process was started"
    assert _UsersOwnServer.requests == [], "nothing of ours talked to the user's server"
    (xlsx,) = ws.reports()
    failures = ws.sheet(xlsx, "Failures")
    assert {f["Kind"] for f in failures if f["Context (tokens)"] is not None} == {"port_in_use"}
    figures.update(ws.invariants(), exit=result.returncode)
