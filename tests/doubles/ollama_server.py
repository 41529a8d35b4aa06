"""A test double of the Ollama server. Test code only: never imported by the product.

It speaks the part of Ollama's documented API (docs/api.md in ollama/ollama) the engine uses, with
the documented field names, status codes and units, and does real work under it:

- `/api/pull` copies a model from a *library* folder (`LIBRARY/<model>/<tag>.gguf`) into its
  *store* (`STORE/manifests/<model>/<tag>`, `STORE/blobs/sha256-<hex>`), streaming NDJSON progress
  ("pulling manifest", per layer `{status: "pulling <hex12>", digest, total, completed}`,
  "verifying sha256 digest", "writing manifest", "success"); failures are `{"error": ...}` lines.
- Each loaded model is a real llama.cpp server (`python -m llama_cpp.server`) started as a CHILD
  of this process, like Ollama's runners, so the memory of this process tree grows with num_ctx.
  Its llama.cpp log is forwarded to this server's stdout, as Ollama's server log embeds it.
- `/api/ps` reports `size` (weights + KV + compute buffers from the runner's log), `size_vram`
  (0: this is a CPU machine; a test may make it `size` or half of it), `context_length`,
  `expires_at`; a request with another `num_ctx` reloads the model; `keep_alive: 0` unloads it
  (asynchronously, as Ollama does: /api/ps lists it until the runner is gone).
- `/api/chat` and `/api/generate` stream by proxying the runner's `/v1/completions` stream; token
  counts are the tokens the runner lists in `logprobs`, durations are in nanoseconds.
- Like `ollama serve` it honours OLLAMA_HOST, OLLAMA_NUM_PARALLEL (KV cells = num_ctx x it),
  OLLAMA_KV_CACHE_TYPE (only with OLLAMA_FLASH_ATTENTION=1, else f16 with a warning),
  OLLAMA_CONTEXT_LENGTH and OLLAMA_KEEP_ALIVE; a num_ctx above the model's training context is
  capped to it, with a warning in the log.

Test hooks live under `/_test/`: `POST /_test/faults` arms one-shot faults for the next pull
(`{"pull": {"mode": "error" | "malformed" | "disconnect" | "stall", "after_bytes": N}}`) or chat
(`{"chat": {"mode": "error" | "malformed" | "empty_prefix", ...}}`), `POST /_test/config` changes
reporting (size_vram, context_length in /api/ps, unload delay), `POST /_test/reset` restores
everything and unloads all runners, `GET /_test/state` lists the runners and the last final chat
object.

Run: `python tests/doubles/ollama_server.py --host 127.0.0.1 --port P --store DIR --library DIR`
(without --host/--port, OLLAMA_HOST is used, as by `ollama serve`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import gguf
import httpx
import psutil
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

VERSION = "0.0.0-testdouble"
DEFAULT_PORT = 11434
_MIB = 2**20
_BUFFER = re.compile(r"(model|KV|compute|output) buffer size\s*=\s*([0-9.]+)\s*MiB")
_CHUNK = 1 << 20
_FOREVER_S = 10**10


def log(level: str, msg: str, **kv: Any) -> None:
    """A line in the style of Ollama's server log (slog text handler)."""
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    extra = "".join(f" {k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in kv.items())
    print(
        f"time={now} level={level} source=ollama_server.py msg={json.dumps(msg)}{extra}", flush=True
    )


# --------------------------------------------------------------------------- names


def parse_name(raw: str) -> tuple[str, str]:
    """Ollama's `[host/][namespace/]model[:tag]` as (repository, tag); names are case-insensitive."""
    name = raw.strip().lower()
    for prefix in ("registry.ollama.ai/library/", "registry.ollama.ai/", "library/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    head, _, last = name.rpartition("/")
    model, sep, tag = last.partition(":")
    if not model or not re.fullmatch(
        r"[a-z0-9][a-z0-9._/-]*", (head + "/" if head else "") + model
    ):
        raise ValueError(f"invalid model name {raw!r}")
    return (f"{head}/{model}" if head else model), (tag if sep and tag else "latest")


def short_name(repo: str, tag: str) -> str:
    return f"{repo}:{tag}"


def parse_keep_alive(value: Any, default_s: float) -> float:
    """Seconds (a negative value: forever). Ollama takes Go durations ("5m", "1h30m") or seconds."""
    if value is None:
        return default_s
    if isinstance(value, bool):
        raise ValueError("keep_alive: not a duration")
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3}
    parts = re.findall(r"(-?[0-9.]+)(ms|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"time: invalid duration {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


def human_number(n: int) -> str:
    """Ollama's parameter_size style ("8.0B", "494.03M")."""
    if n >= 1_000_000_000:
        return f"{n / 1e9:.1f}B"
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    if n >= 1_000:
        return f"{n / 1e3:.2f}K"
    return str(n)


def rfc3339(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s).astimezone().isoformat()


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


# --------------------------------------------------------------------------- models on disk


@dataclass(frozen=True)
class GgufInfo:
    """What /api/show and /api/tags say about a GGUF file, read from its header."""

    model_info: dict[str, Any]
    tensors: list[dict[str, Any]]
    details: dict[str, Any]
    n_ctx_train: int | None


def read_gguf(path: Path, *, verbose: bool = False) -> GgufInfo:
    reader = gguf.GGUFReader(path)
    info: dict[str, Any] = {}
    for name, fld in reader.fields.items():
        if name.startswith("GGUF.") or name in ("general.name", "tokenizer.chat_template"):
            continue
        value = fld.contents()
        if isinstance(value, list) and not verbose:
            value = []  # Ollama leaves arrays empty unless `verbose`
        info[name] = value
    arch = str(info.get("general.architecture", "unknown"))
    tensors = [
        {"name": t.name, "type": t.tensor_type.name, "shape": [int(s) for s in t.shape]}
        for t in reader.tensors
    ]
    n_params = sum(int(t.n_elements) for t in reader.tensors)
    info["general.parameter_count"] = n_params
    file_type = info.get("general.file_type")
    try:
        quant = (
            gguf.LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_")
            if file_type is not None
            else ""
        )
    except ValueError:
        quant = "unknown"
    details = {
        "parent_model": "",
        "format": "gguf",
        "family": arch,
        "families": [arch],
        "parameter_size": human_number(n_params),
        "quantization_level": quant,
    }
    ctx = info.get(f"{arch}.context_length")
    return GgufInfo(info, tensors, details, int(ctx) if isinstance(ctx, (int, float)) else None)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class StoredModel:
    name: str  # "repo:tag"
    digest: str  # of the manifest (hex), as /api/tags and /api/ps show it
    model_blob: Path
    size: int
    modified_at: float


class Store:
    """Ollama's layout, simplified: manifests/<repo>/<tag> (JSON) and blobs/sha256-<hex>."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "manifests").mkdir(parents=True, exist_ok=True)
        (root / "blobs").mkdir(parents=True, exist_ok=True)

    def manifest_path(self, repo: str, tag: str) -> Path:
        return self.root / "manifests" / repo / tag

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / digest.replace(":", "-")

    def get(self, raw: str) -> StoredModel | None:
        try:
            repo, tag = parse_name(raw)
        except ValueError:
            return None
        path = self.manifest_path(repo, tag)
        if not path.is_file():
            return None
        data = path.read_bytes()
        manifest = json.loads(data)
        layers = manifest["layers"]
        model = next(layer for layer in layers if layer["mediaType"].endswith(".model"))
        return StoredModel(
            name=short_name(repo, tag),
            digest=hashlib.sha256(data).hexdigest(),
            model_blob=self.blob_path(model["digest"]),
            size=sum(int(layer["size"]) for layer in layers),
            modified_at=path.stat().st_mtime,
        )

    def all(self) -> list[StoredModel]:
        out = []
        base = self.root / "manifests"
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            rel = path.relative_to(base)
            model = self.get(short_name("/".join(rel.parts[:-1]), rel.parts[-1]))
            if model is not None:
                out.append(model)
        return out

    def delete(self, raw: str) -> bool:
        try:
            repo, tag = parse_name(raw)
        except ValueError:
            return False
        path = self.manifest_path(repo, tag)
        if not path.is_file():
            return False
        path.unlink()
        return True


# --------------------------------------------------------------------------- runners


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Runner:
    """A loaded model: one llama.cpp server process, a child of this one."""

    model: StoredModel
    num_ctx: int
    n_cells: int
    kv_type: str
    proc: subprocess.Popen[bytes]
    port: int
    keep_alive_s: float
    expires_at: float = 0.0
    lines: list[str] = field(default_factory=list)
    unloading: bool = False
    active: int = 0  # requests in flight (the keep_alive countdown starts when it drops to 0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def touch(self) -> None:
        ka = self.keep_alive_s
        self.expires_at = time.time() + (ka if ka >= 0 else _FOREVER_S)

    def size_bytes(self) -> int:
        """Weights + KV + compute (+ output) buffers from the runner's own log (last value each)."""
        last: dict[tuple[str, str], float] = {}
        for line in list(self.lines):
            m = _BUFFER.search(line)
            if m:
                device = line[: m.start()].split()[-1] if line[: m.start()].split() else "?"
                last[(m[1], device)] = float(m[2])
        if last:
            return round(sum(last.values()) * _MIB)
        try:  # no buffer lines: the runner's measured memory
            return int(psutil.Process(self.proc.pid).memory_full_info().uss)
        except psutil.Error:
            return 0


@dataclass
class Settings:
    """Test-adjustable behaviour (POST /_test/config)."""

    size_vram: str = "0"  # "0" | "size" | "half"
    ps_context_length: bool = True
    unload_delay_s: float = 0.5
    pull_chunk_delay_s: float = 0.0


class Ollama:
    """The state of the double: store, library, loaded runners, armed faults."""

    def __init__(self, store: Path, library: Path) -> None:
        self.store = Store(store)
        self.library = library
        self.settings = Settings()
        self.num_parallel = int(os.environ.get("OLLAMA_NUM_PARALLEL") or 1)
        self.default_ctx = int(os.environ.get("OLLAMA_CONTEXT_LENGTH") or 4096)
        self.default_keep_alive_s = parse_keep_alive(os.environ.get("OLLAMA_KEEP_ALIVE"), 300.0)
        self.flash_attention = os.environ.get("OLLAMA_FLASH_ATTENTION", "").lower() in ("1", "true")
        kv = (os.environ.get("OLLAMA_KV_CACHE_TYPE") or "f16").lower()
        if kv not in ("f16", "q8_0", "q4_0"):
            log("WARN", "unsupported cache type, using f16", type=kv)
            kv = "f16"
        if kv != "f16" and not self.flash_attention:
            log("WARN", "quantized kv cache requested but flash attention disabled", type=kv)
            kv = "f16"
        self.kv_type = kv
        self.runners: dict[str, Runner] = {}
        self.lock = threading.Lock()  # guards `runners`
        self.load_lock = threading.Lock()  # one load or reload at a time, like Ollama's scheduler
        self.faults: dict[str, dict[str, Any]] = {}
        self.last_chat: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="reaper", daemon=True)
        self._reaper.start()

    # -- faults ----------------------------------------------------------------------------
    def take_fault(self, kind: str) -> dict[str, Any] | None:
        with self.lock:
            return self.faults.pop(kind, None)

    # -- scheduling --------------------------------------------------------------------------
    def _reap(self) -> None:
        while not self._stop.wait(0.2):
            now = time.time()
            with self.lock:
                expired = [
                    r
                    for r in self.runners.values()
                    if not r.unloading and not r.active and r.expires_at <= now
                ]
            for r in expired:
                self.unload(r.model.name, delay_s=0.0)

    def loaded(self, name: str) -> Runner | None:
        with self.lock:
            return self.runners.get(name)

    def load(
        self, model: StoredModel, num_ctx: int | None, keep_alive_s: float
    ) -> tuple[Runner, float]:
        """Load (or reuse, or reload at a new num_ctx); returns the runner and the seconds spent."""
        t0 = time.monotonic()
        with self.load_lock:
            info = read_gguf(model.model_blob)
            want = int(num_ctx) if num_ctx else self.default_ctx
            if info.n_ctx_train and want > info.n_ctx_train:
                log(
                    "WARN",
                    "requested context size too large for model",
                    num_ctx=want,
                    n_ctx_train=info.n_ctx_train,
                )
                want = info.n_ctx_train
            current = self.loaded(model.name)
            if current is not None and (current.unloading or current.num_ctx != want):
                if not current.unloading:
                    log("INFO", "reloading model: options changed", model=model.name, num_ctx=want)
                self.terminate(current)
                current = None
            if current is None:
                current = self._start_runner(model, want, keep_alive_s)
            current.keep_alive_s = keep_alive_s
            current.touch()
            return current, time.monotonic() - t0

    def _start_runner(self, model: StoredModel, num_ctx: int, keep_alive_s: float) -> Runner:
        port = free_port()
        n_cells = num_ctx * self.num_parallel
        argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model.model_blob)]
        argv += [
            "--n_ctx",
            str(n_cells),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_threads",
            "2",
        ]
        if self.flash_attention:
            argv += ["--flash_attn", "true"]
        if self.kv_type != "f16":
            ggml_type = str(int(gguf.GGMLQuantizationType[self.kv_type.upper()]))
            argv += ["--type_k", ggml_type, "--type_v", ggml_type]
        log("INFO", "starting llama server", cmd=" ".join(argv))
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        runner = Runner(model, num_ctx, n_cells, self.kv_type, proc, port, keep_alive_s)
        runner.touch()
        threading.Thread(
            target=self._forward, args=(runner,), name=f"log-{proc.pid}", daemon=True
        ).start()
        t0 = time.monotonic()
        with httpx.Client(timeout=2.0) as client:
            while True:
                if proc.poll() is not None:
                    time.sleep(0.2)  # let the forwarder print the runner's last words
                    raise RuntimeError(
                        f"llama runner process has terminated: exit status {proc.returncode}"
                    )
                try:
                    if client.get(f"{runner.url}/v1/models").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() - t0 > 120:
                    self._kill(runner)
                    raise RuntimeError("timed out waiting for llama runner to start")
                time.sleep(0.05)
        log(
            "INFO", f"llama runner started in {time.monotonic() - t0:.2f} seconds", model=model.name
        )
        with self.lock:
            self.runners[model.name] = runner
        return runner

    @staticmethod
    def _forward(runner: Runner) -> None:
        """Copy the runner's llama.cpp log into ours, as Ollama's server log embeds it."""
        assert runner.proc.stdout is not None
        for raw in runner.proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            runner.lines.append(line)
            print(line, flush=True)

    def unload(self, name: str, *, delay_s: float | None = None) -> None:
        """Expire a runner: /api/ps lists it until its process is gone (after `delay_s`)."""
        with self.lock:
            runner = self.runners.get(name)
            if runner is None or runner.unloading:
                return
            runner.unloading = True
        delay = self.settings.unload_delay_s if delay_s is None else delay_s

        def later() -> None:
            time.sleep(delay)
            self.terminate(runner)

        threading.Thread(target=later, name=f"unload-{runner.proc.pid}", daemon=True).start()

    def terminate(self, runner: Runner) -> None:
        self._kill(runner)
        with self.lock:
            if self.runners.get(runner.model.name) is runner:
                del self.runners[runner.model.name]
        log("INFO", "runner stopped", model=runner.model.name, pid=runner.proc.pid)

    @staticmethod
    def _kill(runner: Runner) -> None:
        if runner.proc.poll() is None:
            runner.proc.terminate()
            try:
                runner.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                runner.proc.kill()
                runner.proc.wait(timeout=5)

    def shutdown(self) -> None:
        self._stop.set()
        with self.lock:
            runners = list(self.runners.values())
        for r in runners:
            self.terminate(r)

    # -- reports --------------------------------------------------------------------------------
    def ps_entry(self, runner: Runner) -> dict[str, Any]:
        info = read_gguf(runner.model.model_blob)
        size = runner.size_bytes()
        vram = {"0": 0, "size": size, "half": size // 2}.get(self.settings.size_vram, 0)
        entry: dict[str, Any] = {
            "name": runner.model.name,
            "model": runner.model.name,
            "size": size,
            "digest": runner.model.digest,
            "details": info.details,
            "expires_at": rfc3339(runner.expires_at if not runner.unloading else time.time()),
            "size_vram": vram,
        }
        if self.settings.ps_context_length:
            entry["context_length"] = runner.num_ctx
        return entry


# --------------------------------------------------------------------------- generation


def chat_prompt(messages: list[dict[str, Any]]) -> str:
    parts = []
    for m in messages:
        role, content = m.get("role", "user"), str(m.get("content", ""))
        parts.append(f"[INST] {content} [/INST]" if role == "user" else content)
    return " ".join(parts)


def stream_tokens(
    runner: Runner, prompt: str, options: dict[str, Any]
) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """Proxy the runner's /v1/completions stream: yields (text, None) per token, then ("", stats)."""
    num_predict = int(options.get("num_predict", 128))
    body: dict[str, Any] = {
        "prompt": prompt,
        "max_tokens": None if num_predict < 0 else num_predict,
        "temperature": float(options.get("temperature", 0.8)),
        "stream": True,
        "logprobs": 1,  # each chunk lists its tokens: the runner's own count
    }
    if "seed" in options:
        body["seed"] = int(options["seed"])
    with httpx.Client(timeout=300.0) as client:
        t_req = time.monotonic()
        tok = client.post(f"{runner.url}/extras/tokenize", json={"input": prompt})
        tok.raise_for_status()
        n_prompt = len(tok.json()["tokens"])
        n_out = 0
        t_first = t_last = None
        reason = "stop"
        with client.stream("POST", f"{runner.url}/v1/completions", json=body) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                event = json.loads(payload)
                choice = (event.get("choices") or [{}])[0]
                if choice.get("finish_reason"):
                    reason = choice["finish_reason"]
                lp = choice.get("logprobs") or {}
                tokens = lp.get("tokens") or []
                if not tokens:
                    continue
                now = time.monotonic()
                t_first = t_first if t_first is not None else now
                t_last = now
                n_out += len(tokens)
                yield choice.get("text") or "", None
    t_end = time.monotonic()
    if num_predict >= 0:
        # llama-cpp-python's stream can list a token again in the chunk that ends on the limit
        # (seen: 9 listed for max_tokens 8); Ollama never counts more than num_predict
        n_out = min(n_out, num_predict)
    first = t_first if t_first is not None else t_end
    last = t_last if t_last is not None else t_end
    if n_out > 1:
        eval_s = (last - first) * n_out / (n_out - 1)  # n tokens at the mean inter-token time
    else:
        eval_s = max(t_end - first, 1e-6)
    yield (
        "",
        {
            "done_reason": "length" if reason == "length" else "stop",
            "prompt_eval_count": n_prompt,
            "prompt_eval_duration": int((first - t_req) * 1e9),
            "eval_count": n_out,
            "eval_duration": max(1, int(eval_s * 1e9)),
        },
    )


# --------------------------------------------------------------------------- the API


def create_app(state: Ollama) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        state.shutdown()

    app = FastAPI(lifespan=lifespan)

    async def body_of(request: Request) -> dict[str, Any] | JSONResponse:
        raw = await request.body()
        if not raw.strip():
            return error(400, "missing request body")
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            return error(400, str(exc))
        if not isinstance(data, dict):
            return error(400, "expected a JSON object")
        return data

    @app.get("/")
    def root() -> Response:
        return Response("Ollama is running", media_type="text/plain")

    @app.get("/api/version")
    def version() -> dict[str, str]:
        return {"version": VERSION}

    @app.get("/api/tags")
    def tags() -> dict[str, Any]:
        models = []
        for m in state.store.all():
            models.append(
                {
                    "name": m.name,
                    "model": m.name,
                    "modified_at": rfc3339(m.modified_at),
                    "size": m.size,
                    "digest": m.digest,
                    "details": read_gguf(m.model_blob).details,
                }
            )
        return {"models": models}

    @app.get("/api/ps")
    def ps() -> dict[str, Any]:
        with state.lock:
            runners = list(state.runners.values())
        models = sorted(
            (state.ps_entry(r) for r in runners), key=lambda e: e["expires_at"], reverse=True
        )
        return {"models": models}

    @app.post("/api/show")
    async def show(request: Request) -> Any:
        body = await body_of(request)
        if isinstance(body, JSONResponse):
            return body
        name = str(body.get("model") or body.get("name") or "")
        model = state.store.get(name)
        if model is None:
            return error(404, f"model '{name}' not found")
        info = read_gguf(model.model_blob, verbose=bool(body.get("verbose")))
        return {
            "modelfile": f'# Modelfile generated by "ollama show"\nFROM {model.model_blob}\n',
            "parameters": 'stop                           "[INST]"',
            "template": "[INST] {{ .Prompt }} [/INST]",
            "details": info.details,
            "model_info": info.model_info,
            "tensors": info.tensors,
            "capabilities": ["completion"],
            "modified_at": rfc3339(model.modified_at),
        }

    @app.delete("/api/delete")
    async def delete(request: Request) -> Any:
        body = await body_of(request)
        if isinstance(body, JSONResponse):
            return body
        name = str(body.get("model") or body.get("name") or "")
        if not state.store.delete(name):
            return error(404, f"model '{name}' not found")
        return Response(status_code=200)

    @app.post("/api/pull")
    async def pull(request: Request) -> Any:
        body = await body_of(request)
        if isinstance(body, JSONResponse):
            return body
        name = str(body.get("model") or body.get("name") or "")
        stream = body.get("stream", True) is not False
        fault = state.take_fault("pull")
        events = _pull_events(state, name, fault)
        if stream:
            return StreamingResponse(events, media_type="application/x-ndjson")
        last: dict[str, Any] = {}
        for raw in await run_in_threadpool(list, events):
            last = json.loads(raw)
            if "error" in last:
                return error(500, last["error"])
        return last

    @app.post("/api/generate")
    async def generate(request: Request) -> Any:
        body = await body_of(request)
        if isinstance(body, JSONResponse):
            return body
        return await _serve(state, body, chat=False)

    @app.post("/api/chat")
    async def chat(request: Request) -> Any:
        body = await body_of(request)
        if isinstance(body, JSONResponse):
            return body
        return await _serve(state, body, chat=True)

    # -- test hooks ------------------------------------------------------------------------
    @app.post("/_test/faults")
    async def faults(request: Request) -> Any:
        body = await body_of(request)
        if isinstance(body, JSONResponse):
            return body
        with state.lock:
            for kind in ("pull", "chat"):
                if kind in body:
                    state.faults[kind] = dict(body[kind])
        return {"armed": sorted(state.faults)}

    @app.post("/_test/config")
    async def config(request: Request) -> Any:
        body = await body_of(request)
        if isinstance(body, JSONResponse):
            return body
        for key, value in body.items():
            if not hasattr(state.settings, key):
                return error(400, f"unknown setting {key!r}")
            setattr(state.settings, key, value)
        return vars(state.settings)

    @app.post("/_test/reset")
    def reset() -> dict[str, Any]:
        """Disarm faults, restore the settings, unload every runner now (between tests)."""
        with state.lock:
            state.faults.clear()
            state.last_chat = None
            runners = list(state.runners.values())
        state.settings = Settings()
        for r in runners:
            state.terminate(r)
        return {"ok": True}

    @app.get("/_test/state")
    def test_state() -> dict[str, Any]:
        with state.lock:
            runners = [
                {
                    "name": r.model.name,
                    "pid": r.proc.pid,
                    "port": r.port,
                    "num_ctx": r.num_ctx,
                    "n_cells": r.n_cells,
                    "kv_type": r.kv_type,
                    "unloading": r.unloading,
                }
                for r in state.runners.values()
            ]
        return {
            "pid": os.getpid(),
            "runners": runners,
            "last_chat": state.last_chat,
            "kv_type": state.kv_type,
        }

    return app


def _pull_events(state: Ollama, raw_name: str, fault: dict[str, Any] | None) -> Iterator[bytes]:
    """Copy LIBRARY/<repo>/<tag>.gguf into the store as Ollama's pull does, with its progress."""

    def line(obj: dict[str, Any]) -> bytes:
        return (json.dumps(obj) + "\n").encode()

    yield line({"status": "pulling manifest"})
    try:
        repo, tag = parse_name(raw_name)
    except ValueError as exc:
        yield line({"error": str(exc)})
        return
    source = state.library / repo / f"{tag}.gguf"
    if not source.is_file():
        yield line({"error": "pull model manifest: file does not exist"})
        return
    params = json.dumps({"stop": ["[INST]"]}).encode()
    params_path = state.store.root / f".params-{os.getpid()}-{threading.get_ident()}"
    params_path.write_bytes(params)
    layers = [
        ("application/vnd.ollama.image.model", source),
        ("application/vnd.ollama.image.params", params_path),
    ]
    sent = 0
    written: list[dict[str, Any]] = []
    try:
        for media_type, path in layers:
            digest = "sha256:" + sha256_file(path)
            total = path.stat().st_size
            status = f"pulling {digest[7:19]}"
            yield line({"status": status, "digest": digest, "total": total})
            target = state.store.blob_path(digest)
            partial = target.with_name(target.name + "-partial")
            done = 0
            with open(path, "rb") as src, open(partial, "wb") as dst:
                while block := src.read(_CHUNK // 4):
                    dst.write(block)
                    done += len(block)
                    sent += len(block)
                    if fault and sent >= int(fault.get("after_bytes", 0)):
                        mode = fault.get("mode")
                        if mode == "error":
                            yield line({"error": "max retries exceeded: unexpected EOF"})
                            return
                        if mode == "malformed":
                            yield b'{"status": "pulling \n'
                            return
                        if mode == "disconnect":
                            raise ConnectionAbortedError("test double: connection dropped mid-pull")
                        if mode == "stall":
                            time.sleep(float(fault.get("stall_s", 5.0)))
                            fault = None
                    if state.settings.pull_chunk_delay_s:
                        time.sleep(state.settings.pull_chunk_delay_s)
                    yield line(
                        {"status": status, "digest": digest, "total": total, "completed": done}
                    )
            partial.replace(target)
            written.append({"mediaType": media_type, "digest": digest, "size": total})
        yield line({"status": "verifying sha256 digest"})
        yield line({"status": "writing manifest"})
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "layers": written,
        }
        target = state.store.manifest_path(repo, tag)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(manifest), encoding="utf-8")
        yield line({"status": "success"})
    finally:
        params_path.unlink(missing_ok=True)


async def _serve(state: Ollama, body: dict[str, Any], *, chat: bool) -> Any:
    """/api/generate and /api/chat: load, unload or generate (streamed NDJSON or one object)."""
    name = str(body.get("model") or "")
    if not name:
        return error(400, "model is required")
    model = state.store.get(name)
    if model is None:
        return error(404, f"model '{name}' not found")
    options = body.get("options") or {}
    if not isinstance(options, dict):
        return error(400, "options must be an object")
    try:
        keep_alive = parse_keep_alive(body.get("keep_alive"), state.default_keep_alive_s)
    except ValueError as exc:
        return error(400, str(exc))
    empty = not body.get("messages") if chat else not body.get("prompt")
    now = datetime.now(timezone.utc).isoformat()
    head: dict[str, Any] = {"model": name, "created_at": now}
    if chat:
        head["message"] = {"role": "assistant", "content": ""}
    else:
        head["response"] = ""
    if empty and keep_alive == 0:
        state.unload(model.name)
        return {**head, "done": True, "done_reason": "unload"}
    try:
        runner, load_s = await run_in_threadpool(
            state.load, model, options.get("num_ctx"), keep_alive
        )
    except RuntimeError as exc:
        return error(500, str(exc))
    if empty:
        return {**head, "done": True, "done_reason": "load"}
    if chat:
        prompt = chat_prompt(list(body.get("messages") or []))
    else:
        prompt = str(body["prompt"]) if body.get("raw") else f"[INST] {body['prompt']} [/INST]"
    fault = state.take_fault("chat")
    events = _generation_events(state, runner, prompt, options, head, load_s, fault, chat=chat)
    if body.get("stream", True) is not False:
        return StreamingResponse(events, media_type="application/x-ndjson")
    text, final = [], {}
    for raw in await run_in_threadpool(list, events):
        obj = json.loads(raw)
        if "error" in obj:
            return error(500, obj["error"])
        text.append(obj["message"]["content"] if chat else obj["response"])
        final = obj
    if chat:
        final["message"] = {"role": "assistant", "content": "".join(text)}
    else:
        final["response"] = "".join(text)
    return final


def _generation_events(
    state: Ollama,
    runner: Runner,
    prompt: str,
    options: dict[str, Any],
    head: dict[str, Any],
    load_s: float,
    fault: dict[str, Any] | None,
    *,
    chat: bool,
) -> Iterator[bytes]:
    t0 = time.monotonic()

    def chunk(text: str, done: bool) -> dict[str, Any]:
        obj = dict(head, created_at=datetime.now(timezone.utc).isoformat(), done=done)
        if chat:
            obj["message"] = {"role": "assistant", "content": text}
        else:
            obj["response"] = text
        return obj

    def line(obj: dict[str, Any]) -> bytes:
        return (json.dumps(obj) + "\n").encode()

    runner.active += 1
    try:
        if fault and fault.get("mode") == "empty_prefix":
            for _ in range(int(fault.get("n", 3))):
                yield line(chunk("", False))
            time.sleep(float(fault.get("delay_s", 0.3)))
        n_chunks = 0
        contents: list[str] = []
        for text, stats in stream_tokens(runner, prompt, options):
            if stats is None:
                if (
                    fault
                    and fault.get("mode") in ("error", "malformed")
                    and n_chunks >= int(fault.get("after_chunks", 1))
                ):
                    if fault["mode"] == "error":
                        yield line(
                            {
                                "error": "an error was encountered while running the model: test fault"
                            }
                        )
                    else:
                        yield b'{"model": "broken\n'
                    return
                n_chunks += 1
                contents.append(text)
                yield line(chunk(text, False))
                continue
            final = chunk("", True)
            final.update(
                {
                    "done_reason": stats["done_reason"],
                    "total_duration": int((time.monotonic() - t0 + load_s) * 1e9),
                    "load_duration": int(load_s * 1e9),
                    "prompt_eval_count": stats["prompt_eval_count"],
                    "prompt_eval_duration": stats["prompt_eval_duration"],
                    "eval_count": stats["eval_count"],
                    "eval_duration": stats["eval_duration"],
                }
            )
            state.last_chat = {"final": final, "chunks": n_chunks, "contents": contents}
            yield line(final)
    except (httpx.HTTPError, OSError, ValueError) as exc:
        yield line({"error": f"an error was encountered while running the model: {exc}"})
    finally:
        runner.active -= 1
        runner.touch()


# --------------------------------------------------------------------------- main


def host_port(args: argparse.Namespace) -> tuple[str, int]:
    """--host/--port, else OLLAMA_HOST (`host:port`, `http://host:port`, `host`), else the default."""
    if args.host or args.port:
        return args.host or "127.0.0.1", args.port or DEFAULT_PORT
    raw = os.environ.get("OLLAMA_HOST", "").strip()
    raw = re.sub(r"^[a-z]+://", "", raw).rstrip("/")
    if not raw:
        return "127.0.0.1", DEFAULT_PORT
    host, sep, port = raw.rpartition(":")
    if not sep:
        return raw, DEFAULT_PORT
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "command", nargs="?", default="serve", help="accepted for `ollama serve` compatibility"
    )
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--store", type=Path, default=os.environ.get("OLLAMA_MODELS"))
    p.add_argument("--library", type=Path, required=True)
    args = p.parse_args(argv)
    if args.store is None:
        p.error("--store (or OLLAMA_MODELS) is required")
    host, port = host_port(args)
    state = Ollama(args.store, args.library)
    log("INFO", f"Listening on {host}:{port} (version {VERSION})", pid=os.getpid())
    log(
        "INFO",
        "server config",
        OLLAMA_NUM_PARALLEL=state.num_parallel,
        OLLAMA_KV_CACHE_TYPE=state.kv_type,
        OLLAMA_FLASH_ATTENTION=str(state.flash_attention).lower(),
    )
    uvicorn.run(
        create_app(state),
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=3,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
