"""Ollama through its HTTP API (docs/api.md in ollama/ollama).

One Ollama server serves every start: we start `ollama serve` only when none answers (and
`start_server` allows it), and stop only a server we started. A start loads the model with
`POST /api/generate` (empty prompt, `options.num_ctx`), and is ready once `/api/ps` lists it with
the `context_length` we asked for; every later request sends the same `num_ctx` (Ollama reloads
the model when it changes). Stopping unloads it (`keep_alive: 0`) and waits until `/api/ps` no
longer lists it.

Memory: `/api/ps` gives Ollama's own figure (`size`, of which `size_vram` in VRAM); when the
server is ours, its log (which embeds llama.cpp's) gives the weights / KV / compute breakdown.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psutil
from tqdm import tqdm

from vramphysics.config import OllamaConfig
from vramphysics.engines.base import (
    Availability,
    Completion,
    Engine,
    EngineStatus,
    MemoryComponents,
    ResidentModel,
    Usage,
)
from vramphysics.engines.gpus import gpu_env, pinned_indices
from vramphysics.engines.llamacpp_log import components_from_log
from vramphysics.engines.process import ManagedProcess
from vramphysics.errors import EngineError
from vramphysics.setups import ModelSpec

if TYPE_CHECKING:
    from vramphysics.theory import Theory

log = logging.getLogger(__name__)

_NOT_ENOUGH_MEMORY = ("requires more system memory", "insufficient memory", "not enough memory")
_OOM_MARKERS = ("out of memory", "cudamalloc failed", "unable to allocate", "failed to allocate")
_LOG_MAX_BYTES = 8_000_000


def normalize_model_name(name: str) -> str:
    """Ollama's names are `[namespace/]model[:tag]`, case-insensitive, with tag `latest` by default.

    `qwen2.5` and `qwen2.5:latest` are the same model; `qwen2.5:7b` and `qwen2.5:7b-instruct` are not.
    """
    text = name.strip().lower()
    head, slash, last = text.rpartition("/")
    if ":" not in last:
        last += ":latest"
    return f"{head}{slash}{last}"


@dataclass(frozen=True)
class _LoadResult:
    status: int | None
    body: str
    error: BaseException | None = None


class OllamaEngine(Engine):
    name = "ollama"

    def __init__(self, cfg: OllamaConfig, *, state_dir: Path, log_dir: Path) -> None:
        super().__init__(state_dir=state_dir, log_dir=log_dir)
        self.cfg = cfg
        self._client = httpx.Client(timeout=httpx.Timeout(cfg.request_timeout_s, connect=5.0))
        self._server: ManagedProcess | None = None  # only a server we started
        self._server_env: dict[str, str] = {}
        self._version: str | None = None
        self._spec: ModelSpec | None = None
        self._ctx: int | None = None
        self._log_offset = 0
        self._loader: threading.Thread | None = None
        self._load_result: _LoadResult | None = None
        self._warned: set[str] = set()
        self._foreign: tuple[int, float] | None = None  # (pid, create time) of a server not ours
        self._closed = False

    @property
    def base_url(self) -> str:
        return f"http://{self.cfg.host}:{self.cfg.port}"

    @property
    def owns_server(self) -> bool:
        return self._server is not None

    # -- the service ---------------------------------------------------------------------------
    def _probe_version(self) -> str | None:
        """The server's version, None when nothing answers; start_failed when it is not Ollama."""
        url = f"{self.base_url}/api/version"
        try:
            r = self._client.get(url, timeout=3.0)
        except httpx.TransportError:
            return None
        try:
            version = r.json().get("version") if r.status_code == 200 else None
        except (json.JSONDecodeError, AttributeError):
            version = None
        if not isinstance(version, str):
            raise EngineError(
                "start_failed",
                f"something that is not Ollama answers at {self.base_url} "
                f"(HTTP {r.status_code} on /api/version); set engines.ollama.host/port",
            )
        return version

    def _ensure_server(self) -> None:
        """Make sure an Ollama server answers; start `cfg.command` when allowed and none does."""
        if self._closed:
            raise RuntimeError("engine closed")
        if self._server is not None:
            if self._server.alive() and self._version is not None:
                return
            if not self._server.alive():
                # the start in flight has already failed (check_alive, wait_ready, complete):
                # start a fresh server for what follows rather than failing every later model
                dead, self._server, self._version = self._server, None, None
                log.warning(
                    "the Ollama server we started exited with code %s; starting it again",
                    dead.returncode,
                )
                dead.stop(self.cfg.stop_timeout_s)
        version = self._probe_version()
        if version is not None:
            self._version = version
            return
        if not self.cfg.start_server:
            raise EngineError(
                "start_failed",
                f"no Ollama server answers at {self.base_url} and engines.ollama.start_server is "
                "false: start `ollama serve` or allow start_server",
            )
        self._launch_server()

    def _launch_env(self) -> dict[str, str]:
        env = {"OLLAMA_HOST": f"{self.cfg.host}:{self.cfg.port}"}
        env["OLLAMA_KV_CACHE_TYPE"] = self.cfg.kv_cache_type
        flash = self.cfg.flash_attention
        if flash is None and self.cfg.kv_cache_type != "f16":
            flash = True  # Ollama ignores a quantized cache type without flash attention
        if flash is not None:
            env["OLLAMA_FLASH_ATTENTION"] = "1" if flash else "0"
        if self.cfg.num_parallel is not None:
            env["OLLAMA_NUM_PARALLEL"] = str(self.cfg.num_parallel)
        env.update(gpu_env(self.cfg.gpus, docker=False))
        env.update(self.cfg.env)
        return env

    def gpu_indices(self) -> tuple[int, ...] | None:
        """The GPUs of a server we started (engines.ollama.gpus); a server someone else runs
        may use any GPU it sees: None."""
        return pinned_indices(self.cfg.gpus) if self._server is not None else None

    def _launch_server(self) -> None:
        argv = list(self.cfg.command)
        env = self._launch_env()
        log_path = self.log_dir / "ollama-serve.log"
        log.info("no Ollama server at %s: starting %s", self.base_url, " ".join(argv))
        self.claim_port(self.cfg.host, self.cfg.port)  # port_in_use: something mute holds it
        try:
            proc = ManagedProcess(
                argv,
                log_path=log_path,
                label=f"ollama serve {self.cfg.host}:{self.cfg.port}",
                env=env,
                state_dir=self.state_dir,
            )
        except OSError as exc:
            raise EngineError(
                "start_failed",
                f"cannot run {argv[0]!r} ({exc.strerror}): install Ollama or set engines.ollama.command",
            ) from exc
        self._server, self._server_env = proc, {**os.environ, **env}
        deadline = time.monotonic() + self.cfg.start_timeout_s
        while time.monotonic() < deadline:
            if not proc.alive():
                tail = proc.log_tail()
                self._server = None
                proc.stop(self.cfg.stop_timeout_s)
                raise EngineError(
                    "start_failed",
                    f"`{' '.join(argv)}` exited with code {proc.returncode} before it answered "
                    f"at {self.base_url}",
                    log_tail=tail,
                )
            try:
                version = self._probe_version()
            except EngineError:
                version = None  # another server answered: wait for ours to fail on the port
            if version is not None:
                self.check_listener(proc.pid, self.cfg.host, self.cfg.port)
                self._version = version
                log.info("Ollama %s started (pid %d), log %s", version, proc.pid, log_path)
                return
            time.sleep(0.2)
        tail = proc.log_tail()
        self._server = None
        proc.stop(self.cfg.stop_timeout_s)
        raise EngineError(
            "timeout",
            f"`{' '.join(argv)}` did not answer at {self.base_url} within {self.cfg.start_timeout_s:.0f} s",
            log_tail=tail,
        )

    def _server_pid(self) -> int | None:
        if self._server is not None:
            return self._server.pid if self._server.alive() else None
        if self._foreign is not None:
            pid, created = self._foreign
            try:
                if abs(psutil.Process(pid).create_time() - created) < 1.0:
                    return pid
            except psutil.Error:
                pass
            self._foreign = None
        found = _listening_pid(self.cfg.port)
        if found is not None:
            try:
                self._foreign = (found, psutil.Process(found).create_time())
            except psutil.Error:
                return None
        return found

    def _server_environ(self) -> dict[str, str] | None:
        """The environment of the server: ours as we launched it, another's when psutil may read it."""
        if self._server is not None:
            return self._server_env
        pid = self._server_pid()
        if pid is None:
            return None
        try:
            return dict(psutil.Process(pid).environ())
        except psutil.Error:
            return None

    def num_parallel(self) -> tuple[int, str]:
        """OLLAMA_NUM_PARALLEL (Ollama caches num_ctx x it tokens) and where the value came from."""
        if self.cfg.num_parallel is not None:
            return self.cfg.num_parallel, "config"
        env = self._server_environ()
        raw = (env or {}).get("OLLAMA_NUM_PARALLEL", "").strip()
        if raw.isdigit() and int(raw) > 0:
            return int(raw), "server environment"
        if env is None:
            return 1, "assumed (Ollama's default; the server's environment is not readable)"
        return 1, "Ollama's default"

    def kv_cache_type(self) -> tuple[str, str]:
        """The KV cache type the server uses, and where the value came from."""
        if self._server is not None:
            return self.cfg.kv_cache_type, "config"
        env = self._server_environ()
        if env is None:
            return self.cfg.kv_cache_type, "config (the server's environment is not readable)"
        kv = env.get("OLLAMA_KV_CACHE_TYPE", "").strip().lower() or "f16"
        if kv != "f16" and env.get("OLLAMA_FLASH_ATTENTION", "").strip().lower() not in (
            "1",
            "true",
        ):
            return "f16", "server environment (quantized cache ignored without flash attention)"
        return kv, "server environment"

    # -- what we run -----------------------------------------------------------------------------
    def version(self) -> str:
        if self._version is None:
            try:
                self._ensure_server()
            except EngineError as exc:
                log.warning("Ollama version unknown: %s", exc)
                return "ollama (unreachable)"
        return f"ollama {self._version}"

    def settings(self) -> dict[str, Any]:
        n_parallel, n_parallel_source = self.num_parallel()
        kv_type, kv_source = self.kv_cache_type()
        env = self._server_environ() or {}
        return {
            "host": self.cfg.host,
            "port": self.cfg.port,
            "keep_alive": self.cfg.keep_alive,
            "num_parallel": n_parallel,
            "num_parallel_source": n_parallel_source,
            "kv_cache_type": kv_type,
            "kv_cache_type_source": kv_source,
            "flash_attention": env.get("OLLAMA_FLASH_ATTENTION"),
            "server": (
                f"started by us: {' '.join(self.cfg.command)}"
                if self._server is not None
                else "already running (not ours)"
            ),
        }

    def check_available(self, spec: ModelSpec) -> Availability:
        self._ensure_server()
        data = self._get_json("/api/tags", kind="request_failed", model_id=spec.raw)
        want = normalize_model_name(spec.name)
        for m in data.get("models") or []:
            if not isinstance(m, dict):
                continue
            name = str(m.get("name") or m.get("model") or "")
            if name and normalize_model_name(name) == want:
                digest = str(m.get("digest") or "")[:12]
                size = m.get("size")
                where = f"{name} in Ollama's store" + (
                    f" ({size / 1e9:.2f} GB)" if isinstance(size, int) else ""
                )
                return Availability(
                    True, where, f"ollama:{name}@{digest}" if digest else f"ollama:{name}"
                )
        return Availability(
            False,
            f"{spec.name} is not in the store of the Ollama server at {self.base_url} "
            f"(`ollama pull {spec.name}`, or run with --force-download)",
            None,
        )

    def download(self, spec: ModelSpec) -> None:
        """`POST /api/pull`, streamed: byte progress per layer; the stream must end in `success`."""
        self._ensure_server()
        url = f"{self.base_url}/api/pull"
        silence = self.cfg.pull_silence_timeout_s
        timeout = httpx.Timeout(connect=10.0, read=silence, write=30.0, pool=10.0)
        bars: dict[str, tqdm[Any]] = {}
        success = False
        log.info("pulling %s from the Ollama library", spec.name)
        try:
            with self._client.stream(
                "POST", url, json={"model": spec.name, "stream": True}, timeout=timeout
            ) as response:
                if response.status_code != 200:
                    response.read()
                    raise EngineError(
                        "download_failed",
                        f"HTTP {response.status_code} from {url}: {_error_text(response.text)}",
                        model_id=spec.raw,
                    )
                for event in _iter_ndjson(
                    response.iter_lines(), kind="download_failed", model_id=spec.raw
                ):
                    status = str(event.get("status", ""))
                    digest = event.get("digest")
                    if isinstance(digest, str) and isinstance(event.get("total"), int):
                        bar = bars.get(digest)
                        if bar is None:
                            bar = bars[digest] = tqdm(
                                total=event["total"],
                                desc=f"{spec.name} {digest.removeprefix('sha256:')[:12]}",
                                unit="B",
                                unit_scale=True,
                                leave=False,
                                disable=None,
                            )
                        done = event.get("completed")
                        if isinstance(done, int) and done > bar.n:
                            bar.update(done - bar.n)
                    elif status:
                        log.info("pull %s: %s", spec.name, status)
                    if status == "success":
                        success = True
        except httpx.TimeoutException as exc:
            raise EngineError(
                "timeout",
                f"pulling {spec.name}: no progress from {url} for {silence:.0f} s",
                model_id=spec.raw,
            ) from exc
        except httpx.TransportError as exc:
            raise EngineError(
                "download_failed",
                f"pulling {spec.name}: the stream from {url} broke ({type(exc).__name__})",
                model_id=spec.raw,
            ) from exc
        finally:
            for bar in bars.values():
                bar.close()
        if not success:
            raise EngineError(
                "download_failed",
                f"pulling {spec.name}: the stream ended without `success`",
                model_id=spec.raw,
            )

    def theory(self, spec: ModelSpec) -> Theory | None:
        """From `POST /api/show`; None (with a warning) when the server cannot answer."""
        from vramphysics.theory import theory_from_ollama_show

        try:
            self._ensure_server()
            r = self._client.post(f"{self.base_url}/api/show", json={"model": spec.name})
        except (EngineError, httpx.HTTPError) as exc:
            log.warning("%s: no /api/show answer: %s", spec.raw, exc)
            return None
        if r.status_code != 200:
            log.warning("%s: /api/show: HTTP %d %s", spec.raw, r.status_code, _error_text(r.text))
            return None
        show = r.json()
        kv_type, _source = self.kv_cache_type()
        n_parallel, _source = self.num_parallel()
        return theory_from_ollama_show(show, kv_dtype=kv_type, num_parallel=n_parallel)

    # -- one start -----------------------------------------------------------------------------
    def start(self, spec: ModelSpec, ctx: int) -> None:
        """Unload what we loaded before, then ask Ollama to load `spec` at num_ctx `ctx`.

        The load request runs in the background (so a memory probe sees the load); `wait_ready`
        collects its answer.
        """
        self.stop()
        self._ensure_server()
        self._log_offset = self._log_size()
        self._spec, self._ctx = spec, ctx
        payload = {
            "model": spec.name,
            "prompt": "",
            "options": {"num_ctx": ctx},
            "keep_alive": self.cfg.keep_alive,
            "stream": False,
        }
        self._load_result = None
        self._loader = threading.Thread(
            target=self._load, args=(payload,), name=f"ollama-load-{spec.name}", daemon=True
        )
        self._loader.start()

    def _load(self, payload: dict[str, Any]) -> None:
        try:
            r = self._client.post(
                f"{self.base_url}/api/generate",
                json=payload,
                timeout=httpx.Timeout(self.cfg.start_timeout_s, connect=5.0),
            )
            self._load_result = _LoadResult(r.status_code, r.text)
        except httpx.HTTPError as exc:
            self._load_result = _LoadResult(None, "", exc)

    def wait_ready(self) -> None:
        spec, ctx = self._require_started()
        deadline = time.monotonic() + self.cfg.start_timeout_s
        if self._loader is not None:
            self._loader.join(timeout=max(0.0, deadline - time.monotonic()))
            if self._loader.is_alive():
                raise EngineError(
                    "timeout",
                    f"Ollama did not load the model within {self.cfg.start_timeout_s:.0f} s",
                    model_id=spec.raw,
                    log_tail=self.log_tail(),
                )
        self._check_load_result(spec)
        while True:
            models = self._ps(model_id=spec.raw)
            entry = _find(models, spec.name)
            if entry is not None:
                break
            if time.monotonic() > deadline:
                raise EngineError(
                    "timeout",
                    f"the model was loaded but /api/ps does not list it within {self.cfg.start_timeout_s:.0f} s",
                    model_id=spec.raw,
                    log_tail=self.log_tail(),
                )
            time.sleep(0.1)
        others = [str(m.get("name")) for m in models if m is not entry]
        if others:
            log.warning(
                "%s: Ollama has other models loaded (%s): memory figures include them",
                spec.raw,
                ", ".join(others),
            )
        applied = entry.get("context_length")
        if applied is None:
            log.warning(
                "%s: this Ollama's /api/ps does not report context_length: "
                "cannot confirm that num_ctx %d was applied",
                spec.raw,
                ctx,
            )
        elif int(applied) != ctx:
            raise EngineError(
                "other",
                f"asked Ollama for num_ctx {ctx} but /api/ps reports context_length {applied} "
                "(Ollama caps num_ctx at the model's training context)",
                model_id=spec.raw,
            )
        self._check_kv_cells(spec, ctx)

    def _check_load_result(self, spec: ModelSpec) -> None:
        res = self._load_result
        if res is None:
            return
        if res.error is not None:
            if self._server is not None and not self._server.alive():
                raise EngineError(
                    "engine_crashed",
                    f"the Ollama server exited with code {self._server.returncode} while loading",
                    model_id=spec.raw,
                    log_tail=self.log_tail(),
                )
            kind = "timeout" if isinstance(res.error, httpx.TimeoutException) else "start_failed"
            raise EngineError(
                kind,
                f"loading the model: {type(res.error).__name__} from {self.base_url}/api/generate",
                model_id=spec.raw,
                log_tail=self.log_tail(),
            )
        if res.status == 200:
            return
        message = _error_text(res.body)
        if res.status == 404:
            raise EngineError(
                "model_not_found",
                f"Ollama: {message} (removed since the availability check?)",
                model_id=spec.raw,
            )
        lowered = message.lower()
        if any(m in lowered for m in _NOT_ENOUGH_MEMORY):
            kind = "insufficient_free_memory"
        elif any(m in lowered for m in _OOM_MARKERS):
            kind = "cuda_oom"
        else:
            kind = "start_failed"
        raise EngineError(
            kind,
            f"loading the model: HTTP {res.status}: {message}",
            model_id=spec.raw,
            log_tail=self.log_tail(),
        )

    def _check_kv_cells(self, spec: ModelSpec, ctx: int) -> None:
        """Our server's log must show a KV cache of at least ctx cells: never report a lie."""
        report = self._log_components()
        cells = report.kv_tokens if report else None
        if cells is not None and cells < ctx:
            raise EngineError(
                "other",
                f"asked Ollama for num_ctx {ctx} but its log shows a KV cache of {cells} cells",
                model_id=spec.raw,
            )

    def check_alive(self) -> None:
        spec, _ctx = self._require_started()
        if self._server is not None and not self._server.alive():
            raise EngineError(
                "engine_crashed",
                f"the Ollama server we started exited with code {self._server.returncode}",
                model_id=spec.raw,
                log_tail=self.log_tail(),
            )
        try:
            models = self._ps(model_id=spec.raw)
        except EngineError as exc:
            raise EngineError("engine_crashed", exc.message, model_id=spec.raw) from exc
        if _find(models, spec.name) is None:
            raise EngineError(
                "engine_crashed",
                "the model is no longer loaded (its runner exited, or it was unloaded)",
                model_id=spec.raw,
                log_tail=self.log_tail(),
            )

    def complete(self, prompt: str, max_tokens: int) -> Completion:
        """A streamed `/api/chat`; TTFT at the first chunk with text, counts from the final object."""
        spec, ctx = self._require_started()
        url = f"{self.base_url}/api/chat"
        payload = {
            "model": spec.name,
            "messages": [{"role": "user", "content": prompt}],
            "stream": True,
            "options": {"num_ctx": ctx, "num_predict": max_tokens, "temperature": 0},
            "keep_alive": self.cfg.keep_alive,
        }
        timeout_s = self.cfg.request_timeout_s
        sent = time.monotonic()
        first = last = None
        n_chunks = 0
        final: dict[str, Any] | None = None
        try:
            with self._client.stream("POST", url, json=payload, timeout=timeout_s) as response:
                if response.status_code != 200:
                    response.read()
                    kind = "model_not_found" if response.status_code == 404 else "request_failed"
                    raise EngineError(
                        kind,
                        f"HTTP {response.status_code} from {url}: {_error_text(response.text)}",
                        model_id=spec.raw,
                    )
                for event in _iter_ndjson(
                    response.iter_lines(), kind="request_failed", model_id=spec.raw
                ):
                    now = time.monotonic()
                    message = event.get("message")
                    text = message.get("content") if isinstance(message, dict) else None
                    if isinstance(text, str) and text:
                        n_chunks += 1
                        first = now if first is None else first
                        last = now
                    if event.get("done") is True:
                        final = event
                    if now - sent > timeout_s:
                        raise EngineError(
                            "timeout", f"request ran past {timeout_s:.0f} s", model_id=spec.raw
                        )
        except httpx.TimeoutException as exc:
            raise EngineError(
                "timeout", f"no answer within {timeout_s:.0f} s from {url}", model_id=spec.raw
            ) from exc
        except httpx.TransportError as exc:
            self._raise_if_server_died(spec)
            raise EngineError(
                "request_failed", f"{type(exc).__name__} talking to {url}", model_id=spec.raw
            ) from exc
        end = time.monotonic()
        if final is None:
            raise EngineError(
                "request_failed",
                f"the stream from {url} ended without a final `done` object",
                model_id=spec.raw,
            )
        return Completion(
            sent_s=sent,
            first_text_s=first,
            last_text_s=last,
            end_s=end,
            usage=Usage(
                prompt_tokens=_int_or_none(final.get("prompt_eval_count")),
                completion_tokens=_int_or_none(final.get("eval_count")),
                source="engine-usage",
            ),
            n_chunks=n_chunks,
            engine_timings=engine_timings(final),
        )

    def root_pid(self) -> int | None:
        """The server's pid: its tree holds the runner processes that load models."""
        return self._server_pid()

    def memory_report(self) -> MemoryComponents | None:
        if self._spec is None:
            return None
        spec, ctx = self._spec, self._ctx
        try:
            entry = _find(self._ps(model_id=spec.raw), spec.name)
        except EngineError as exc:
            log.warning("%s: no /api/ps answer: %s", spec.raw, exc)
            entry = None
        if entry is None:
            return self._log_components()
        size = _int_or_none(entry.get("size")) or 0
        size_vram = _int_or_none(entry.get("size_vram")) or 0
        spilled = size_vram < size
        if spilled and f"spill:{spec.raw}:{ctx}" not in self._warned:
            self._warned.add(f"spill:{spec.raw}:{ctx}")
            log.warning(
                "%s ctx=%s: only %.2f of %.2f GiB in VRAM (/api/ps size_vram < size): "
                "the rest is in system memory%s",
                spec.raw,
                ctx,
                size_vram / 2**30,
                size / 2**30,
                " (no GPU in use)" if size_vram == 0 else "",
            )
        n_parallel, _source = self.num_parallel()
        extra: dict[str, Any] = {
            "size_vram": size_vram,
            "spilled_to_cpu": spilled,
            "context_length": entry.get("context_length"),
            "num_parallel": n_parallel,
            "expires_at": entry.get("expires_at"),
        }
        parts = self._log_components()
        if parts is None:
            extra["breakdown"] = (
                "none: the server's log is not ours"
                if self._server is None
                else "none found in the server log"
            )
            return MemoryComponents(
                source="ollama-ps",
                total_bytes=size,
                device_resident=size_vram > 0,
                extra=extra,
            )
        extra.update(parts.extra)
        return MemoryComponents(
            source="ollama-ps",
            weights_bytes=parts.weights_bytes,
            kv_pool_bytes=parts.kv_pool_bytes,
            kv_tokens=parts.kv_tokens,
            compute_bytes=parts.compute_bytes,
            total_bytes=size,
            device_resident=size_vram > 0,
            extra=extra,
        )

    def _log_components(self) -> MemoryComponents | None:
        """llama.cpp's buffer lines in our server's log since this start (None when not ours)."""
        if self._server is None:
            return None
        return components_from_log(
            _read_from(self._server.log_path, self._log_offset, _LOG_MAX_BYTES), "ollama-log"
        )

    def log_tail(self, n_lines: int = 40) -> str:
        return self._server.log_tail(n_lines) if self._server is not None else ""

    def stop(self) -> None:
        """Unload the model we loaded and wait until /api/ps no longer lists it; safe to repeat."""
        spec, self._spec, self._ctx = self._spec, None, None
        loader, self._loader = self._loader, None
        if loader is not None and loader.is_alive():
            loader.join(timeout=self.cfg.start_timeout_s)
        if spec is None or self._closed:
            return
        if self._server is not None and not self._server.alive():
            return
        try:
            r = self._client.post(
                f"{self.base_url}/api/generate",
                json={"model": spec.name, "keep_alive": 0},
                timeout=self.cfg.unload_timeout_s,
            )
        except httpx.HTTPError as exc:
            log.warning("%s: unload request failed: %s", spec.raw, exc)
            return
        if r.status_code not in (200, 404):
            log.warning("%s: unload: HTTP %d %s", spec.raw, r.status_code, _error_text(r.text))
        deadline = time.monotonic() + self.cfg.unload_timeout_s
        while True:
            try:
                if _find(self._ps(model_id=spec.raw), spec.name) is None:
                    return
            except EngineError as exc:
                log.warning("%s: cannot confirm the unload: %s", spec.raw, exc)
                return
            if time.monotonic() > deadline:
                log.warning(
                    "%s: still listed by /api/ps %.0f s after keep_alive 0; the next start may "
                    "share memory with it",
                    spec.raw,
                    self.cfg.unload_timeout_s,
                )
                return
            time.sleep(0.1)

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.stop()
        finally:
            if self._server is not None:  # forgotten only once stopped (a signal may cut in)
                log.info("stopping the Ollama server we started (pid %d)", self._server.pid)
                self._server.stop(self.cfg.stop_timeout_s)
                self._server = None
            self._closed = True
            self._client.close()

    # -- services (manage_loadout.py) ----------------------------------------------------------
    serves_many_models = True

    def status(self) -> EngineStatus:
        """Up or down at the configured address (never starts a server); /api/ps models."""
        url = self.base_url
        try:
            version = self._probe_version()
        except EngineError as exc:
            return EngineStatus(self.name, False, url, detail=exc.message)
        if version is None:
            return EngineStatus(self.name, False, url, detail="no answer")
        try:
            loaded = self._ps(model_id=None)
        except EngineError as exc:
            return EngineStatus(
                self.name, True, url, version=f"ollama {version}", detail=exc.message
            )
        models = tuple(
            ResidentModel(
                name=str(m.get("name") or m.get("model") or "?"),
                size_bytes=_int_or_none(m.get("size")),
                vram_bytes=_int_or_none(m.get("size_vram")),
                ctx=_int_or_none(m.get("context_length")),
            )
            for m in loaded
        )
        return EngineStatus(self.name, True, url, version=f"ollama {version}", models=models)

    def detach(self) -> None:
        """Leave the loaded model (and a server we started) running for a loadout."""
        loader, self._loader = self._loader, None
        if loader is not None and loader.is_alive():
            loader.join(timeout=self.cfg.start_timeout_s)
        spec, ctx = self._spec, self._ctx
        self._spec, self._ctx = None, None
        if spec is not None and ctx is not None:
            # keep it loaded until told otherwise (same num_ctx, so Ollama does not reload it)
            r = self._client.post(
                f"{self.base_url}/api/generate",
                json={"model": spec.name, "keep_alive": -1, "options": {"num_ctx": ctx}},
                timeout=self.cfg.request_timeout_s,
            )
            if r.status_code != 200:
                raise EngineError(
                    "request_failed", f"keep_alive -1: HTTP {r.status_code}", model_id=spec.raw
                )
        if self._server is not None:
            server, self._server = self._server, None
            server.detach()

    # -- helpers -----------------------------------------------------------------------------------
    def _require_started(self) -> tuple[ModelSpec, int]:
        if self._spec is None or self._ctx is None:
            raise RuntimeError("engine not started")
        return self._spec, self._ctx

    def _raise_if_server_died(self, spec: ModelSpec) -> None:
        if self._server is not None and not self._server.alive():
            raise EngineError(
                "engine_crashed",
                f"the Ollama server we started exited with code {self._server.returncode}",
                model_id=spec.raw,
                log_tail=self.log_tail(),
            )

    def _get_json(self, path: str, *, kind: str, model_id: str | None) -> dict[str, Any]:
        url = f"{self.base_url}{path}"
        try:
            r = self._client.get(url, timeout=10.0)
        except httpx.TimeoutException as exc:
            raise EngineError("timeout", f"no answer from {url}", model_id=model_id) from exc
        except httpx.TransportError as exc:
            raise EngineError(
                kind, f"{type(exc).__name__} talking to {url}", model_id=model_id
            ) from exc
        if r.status_code != 200:
            raise EngineError(
                kind, f"HTTP {r.status_code} from {url}: {_error_text(r.text)}", model_id=model_id
            )
        try:
            data = r.json()
        except json.JSONDecodeError as exc:
            raise EngineError(
                kind, f"not JSON from {url}: {r.text[:80]!r}", model_id=model_id
            ) from exc
        if not isinstance(data, dict):
            raise EngineError(
                kind, f"unexpected answer from {url}: {r.text[:80]!r}", model_id=model_id
            )
        return data

    def _ps(self, *, model_id: str | None) -> list[dict[str, Any]]:
        data = self._get_json("/api/ps", kind="request_failed", model_id=model_id)
        return [m for m in data.get("models") or [] if isinstance(m, dict)]

    def _log_size(self) -> int:
        if self._server is None:
            return 0
        try:
            return self._server.log_path.stat().st_size
        except OSError:
            return 0


# -- pure helpers ---------------------------------------------------------------------------------


def engine_timings(final: Mapping[str, Any]) -> dict[str, float]:
    """Rates from Ollama's final object (durations in nanoseconds)."""
    out: dict[str, float] = {}
    n_eval, eval_ns = final.get("eval_count"), final.get("eval_duration")
    if isinstance(n_eval, int) and isinstance(eval_ns, int) and eval_ns > 0:
        out["decode_tokens_per_s"] = n_eval / (eval_ns / 1e9)
    n_prompt, prompt_ns = final.get("prompt_eval_count"), final.get("prompt_eval_duration")
    if isinstance(n_prompt, int) and isinstance(prompt_ns, int) and prompt_ns > 0:
        out["prefill_tokens_per_s"] = n_prompt / (prompt_ns / 1e9)
    load_ns = final.get("load_duration")
    if isinstance(load_ns, int):
        out["load_s"] = load_ns / 1e9
    return out


def _iter_ndjson(
    lines: Iterator[str], *, kind: str, model_id: str | None
) -> Iterator[dict[str, Any]]:
    """Decode an NDJSON stream; a malformed line or an `{"error": ...}` object raises `kind`."""
    for line in lines:
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EngineError(
                kind, f"malformed line in Ollama's stream: {line[:80]!r}", model_id=model_id
            ) from exc
        if not isinstance(event, dict):
            raise EngineError(
                kind, f"unexpected line in Ollama's stream: {line[:80]!r}", model_id=model_id
            )
        if "error" in event:
            raise EngineError(kind, f"Ollama: {event['error']}", model_id=model_id)
        yield event


def _find(models: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    want = normalize_model_name(name)
    for m in models:
        for key in ("name", "model"):
            value = m.get(key)
            if isinstance(value, str) and normalize_model_name(value) == want:
                return m
    return None


def _error_text(body: str) -> str:
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return body.strip()[:200]
    if isinstance(data, dict) and "error" in data:
        return str(data["error"])
    return body.strip()[:200]


def _int_or_none(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _read_from(path: Path, offset: int, max_bytes: int) -> str:
    """A log from `offset` on (at most the last `max_bytes` of it)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(offset, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return ""
    return data.decode("utf-8", errors="replace")


def _listening_pid(port: int) -> int | None:
    """The pid listening on a local TCP port, when psutil may see it."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return None
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            return int(c.pid)
    return None
