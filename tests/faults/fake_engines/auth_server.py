"""A tiny OpenAI-compatible server that demands an API key, run as an engine command.

Configured as `engines.llamacpp.command: [python, auth_server.py]`; the engine appends the
llama.cpp arguments (`--model PATH --n_ctx N --host H --port P ...` and its extra_args). It
listens on `--host`/`--port` and wants `Authorization: Bearer K`, where K is `--api_key K` (as
llama-cpp-python takes it) or, without that flag, the environment variable FAKE_REQUIRED_KEY.
Every request is logged with whether it carried the key; a request without it gets HTTP 401.
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def arg(name: str) -> str | None:
    argv = sys.argv[1:]
    return argv[argv.index(name) + 1] if name in argv else None


KEY = arg("--api_key") or os.environ.get("FAKE_REQUIRED_KEY", "")


class Handler(BaseHTTPRequestHandler):
    def _authorized(self) -> bool:
        ok = self.headers.get("Authorization") == f"Bearer {KEY}"
        print(f"{self.command} {self.path} key={'ok' if ok else 'missing'}", flush=True)
        if not ok:
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "Invalid API Key"}}')
        return ok

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        if not self._authorized():
            return
        body = json.dumps({"data": [{"id": "fake"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not self._authorized():
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        events = [
            {"choices": [{"text": "Hi"}]},
            {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}},
        ]
        for event in events:
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, *args: object) -> None:
        return


def main() -> None:
    server = ThreadingHTTPServer((arg("--host") or "127.0.0.1", int(arg("--port") or 0)), Handler)
    print(f"auth_server.py pid {os.getpid()} listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
