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

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from vramphysics.engines.base import (
    Availability,
    Completion,
    Engine,
    EngineStatus,
    GenRequest,
    MediaItem,
    MemoryComponents,
)
from vramphysics.engines.ollama import api
from vramphysics.engines.ollama.api import (
    engine_timings,
    error_text,
    find_model,
    int_or_none,
    normalize_model_name,
)
from vramphysics.engines.ollama.chat import chat, chat_payload, prompt_eval_count
from vramphysics.engines.ollama.config import OllamaConfig
from vramphysics.engines.ollama.load import (
    LoadResult,
    check_context_length,
    load,
    load_error,
    load_failed,
)
from vramphysics.engines.ollama.memory import memory_from_ps
from vramphysics.engines.ollama.server import OllamaServer, launch_env
from vramphysics.errors import EngineError
from vramphysics.setups import ModelSpec

if TYPE_CHECKING:
    from vramphysics.theory import Theory

__all__ = ["OllamaEngine", "engine_timings", "normalize_model_name"]

log = logging.getLogger(__name__)


class OllamaEngine(Engine):
    name = "ollama"

    def __init__(self, cfg: OllamaConfig, *, state_dir: Path, log_dir: Path) -> None:
        super().__init__(state_dir=state_dir, log_dir=log_dir)
        self.cfg = cfg
        self._client = httpx.Client(timeout=httpx.Timeout(cfg.request_timeout_s, connect=5.0))
        self._server = OllamaServer(cfg, self._client, self)
        self._spec: ModelSpec | None = None
        self._ctx: int | None = None
        self._log_offset = 0
        self._loader: threading.Thread | None = None
        self._load_result: LoadResult | None = None
        self._warned: set[str] = set()
        self._closed = False
        self._attached: str | None = None  # the model we talk to on a server someone else runs

    @property
    def base_url(self) -> str:
        return self._server.base_url

    @property
    def owns_server(self) -> bool:
        return self._server.ours

    # -- the service ---------------------------------------------------------------------------
    def _ensure_server(self) -> None:
        """Make sure an Ollama server answers; start `cfg.command` when allowed and none does."""
        if self._closed:
            raise RuntimeError("engine closed")
        self._server.ensure()

    def _launch_env(self) -> dict[str, str]:
        return launch_env(self.cfg)

    def gpu_indices(self) -> tuple[int, ...] | None:
        """The GPUs of a server we started (engines.ollama.gpus); a server someone else runs
        may use any GPU it sees: None."""
        return self._server.gpu_indices()

    def num_parallel(self) -> tuple[int, str]:
        """OLLAMA_NUM_PARALLEL (Ollama caches num_ctx x it tokens) and where the value came from."""
        return self._server.num_parallel()

    def kv_cache_type(self) -> tuple[str, str]:
        """The KV cache type the server uses, and where the value came from."""
        return self._server.kv_cache_type()

    # -- what we run -----------------------------------------------------------------------------
    def version(self) -> str:
        if self._server.version is None:
            try:
                self._ensure_server()
            except EngineError as exc:
                log.warning("Ollama version unknown: %s", exc)
                return "ollama (unreachable)"
        return f"ollama {self._server.version}"

    def settings(self) -> dict[str, Any]:
        n_parallel, n_parallel_source = self.num_parallel()
        kv_type, kv_source = self.kv_cache_type()
        env = self._server.environ() or {}
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
                if self._server.ours
                else "already running (not ours)"
            ),
        }

    def check_available(self, spec: ModelSpec) -> Availability:
        self._ensure_server()
        data = api.get_json(
            self._client, self.base_url, "/api/tags", kind="request_failed", model_id=spec.raw
        )
        return api.store_availability(data, spec, self.base_url)

    def download(self, spec: ModelSpec) -> None:
        """`POST /api/pull`, streamed: byte progress per layer; the stream must end in `success`."""
        self._ensure_server()
        api.pull(self._client, self.base_url, spec, silence_s=self.cfg.pull_silence_timeout_s)

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
            log.warning("%s: /api/show: HTTP %d %s", spec.raw, r.status_code, error_text(r.text))
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
        if self._attached is not None:
            raise RuntimeError("attached to a server someone else runs: no start")
        self._ensure_server()
        self._log_offset = self._server.log_size()
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
        self._load_result = load(self._client, self.base_url, payload, self.cfg.start_timeout_s)

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
        models, entry = self._wait_listed(spec, deadline)
        others = [str(m.get("name")) for m in models if m is not entry]
        if others:
            log.warning(
                "%s: Ollama has other models loaded (%s): memory figures include them",
                spec.raw,
                ", ".join(others),
            )
        check_context_length(spec, ctx, entry.get("context_length"))
        self._check_kv_cells(spec, ctx)

    def _wait_listed(
        self, spec: ModelSpec, deadline: float
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """/api/ps's models once it lists ours, and our entry; `timeout` past the deadline."""
        while True:
            models = self._ps(model_id=spec.raw)
            entry = find_model(models, spec.name)
            if entry is not None:
                return models, entry
            if time.monotonic() > deadline:
                raise EngineError(
                    "timeout",
                    f"the model was loaded but /api/ps does not list it within {self.cfg.start_timeout_s:.0f} s",
                    model_id=spec.raw,
                    log_tail=self.log_tail(),
                )
            time.sleep(0.1)

    def _check_load_result(self, spec: ModelSpec) -> None:
        res = self._load_result
        if res is None or not load_failed(res):
            return
        proc = self._server.proc
        raise load_error(
            res,
            spec,
            self.base_url,
            died=proc is not None and not proc.alive(),
            exit_code=proc.returncode if proc is not None else None,
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
        if self._attached is not None:
            return  # not ours to watch: a failed request says what happened
        spec, _ctx = self._require_started()
        self._raise_if_server_died(spec)
        try:
            models = self._ps(model_id=spec.raw)
        except EngineError as exc:
            raise EngineError("engine_crashed", exc.message, model_id=spec.raw) from exc
        if find_model(models, spec.name) is None:
            raise EngineError(
                "engine_crashed",
                "the model is no longer loaded (its runner exited, or it was unloaded)",
                model_id=spec.raw,
                log_tail=self.log_tail(),
            )

    def complete(self, prompt: str, max_tokens: int) -> Completion:
        """A streamed `/api/chat`; TTFT at the first chunk with text, counts from the final object."""
        return self._chat(prompt, max_tokens)

    def generate(self, request: GenRequest) -> Completion:
        """A timed streamed `/api/chat`. Ollama cannot be told to ignore the end-of-sequence
        token: `num_predict` is only a limit (see `chat_payload`), so `exact` asks for no more
        than it does; `eval_count` says what the engine really produced."""
        return self._chat(request.prompt, request.output_tokens, request.media)

    def _chat(self, prompt: str, num_predict: int, media: Sequence[MediaItem] = ()) -> Completion:
        model, ctx, model_id = self._target()
        url = f"{self.base_url}/api/chat"
        payload = chat_payload(
            model, prompt, num_predict, num_ctx=ctx, keep_alive=self.cfg.keep_alive, media=media
        )
        try:
            return chat(
                self._client, url, payload, timeout_s=self.cfg.request_timeout_s, model_id=model_id
            )
        except httpx.TransportError as exc:  # timeouts are EngineErrors already
            if self._spec is not None:
                self._raise_if_server_died(self._spec)
            raise EngineError(
                "request_failed", f"{type(exc).__name__} talking to {url}", model_id=model_id
            ) from exc

    def count_prompt_tokens(self, text: str) -> int:
        """Ollama has no tokenize endpoint: one `/api/chat` of `text` with `num_predict` 1 and
        its `prompt_eval_count` (the chat template included, as in `generate`).

        Cost: a whole prefill of `text` plus one decoded token. And Ollama's prompt cache then
        holds `text`: a `generate` of the very same text right after finds its prefill done
        (fast TTFT); time texts other than the ones counted (unique prefixes)."""
        model, ctx, model_id = self._target()
        payload = chat_payload(model, text, 1, num_ctx=ctx, keep_alive=self.cfg.keep_alive)
        return prompt_eval_count(
            self._client,
            f"{self.base_url}/api/chat",
            payload,
            timeout_s=self.cfg.request_timeout_s,
            model_id=model_id,
        )

    def max_concurrency(self) -> tuple[int | None, str]:
        """Ollama serves up to num_parallel requests of a model at once."""
        n, source = self.num_parallel()
        return n, f"Ollama's num_parallel {n} ({source})"

    def _target(self) -> tuple[str, int | None, str]:
        """The model a request names, the num_ctx it sends (None on an attached server), and
        the model ID errors name."""
        if self._attached is not None:
            return self._attached, None, self._attached
        spec, ctx = self._require_started()
        return spec.name, ctx, spec.raw

    # -- a server someone else runs ------------------------------------------------------------
    def attach(self, url: str, model: str) -> None:
        """Talk to the Ollama server at `url` about `model` (a model in its store): no start,
        no load with our num_ctx (requests leave its context as it is), no unload at `stop`."""
        self.stop()
        parsed = httpx.URL(url)
        cfg = self.cfg.model_copy(
            # our configured num_parallel was never applied to that server: ask it instead
            update={
                "host": parsed.host,
                "port": parsed.port or 80,
                "start_server": False,
                "num_parallel": None,
            }
        )
        self._server.stop()  # a server we started at the configured address, if any
        self._server = OllamaServer(cfg, self._client, self)
        version = self._server.probe_version()
        if version is None:
            raise EngineError("unreachable", f"nothing answers at {url}")
        self._server.version = version
        data = api.get_json(
            self._client, self.base_url, "/api/tags", kind="request_failed", model_id=model
        )
        entry = find_model([m for m in data.get("models") or [] if isinstance(m, dict)], model)
        if entry is None:
            names = [str(m.get("name")) for m in data.get("models") or [] if isinstance(m, dict)]
            raise EngineError(
                "model_not_found",
                f"the Ollama server at {self.base_url} has no model {model!r}; it has: "
                + (", ".join(repr(n) for n in names) or "none"),
            )
        self._attached = str(entry.get("name") or model)
        log.info("attached to Ollama %s at %s, model %s", version, self.base_url, self._attached)

    def root_pid(self) -> int | None:
        """The server's pid: its tree holds the runner processes that load models (None on a
        server we attached to: its memory comes from NVML only)."""
        if self._attached is not None:
            return None
        return self._server.pid()

    def memory_report(self) -> MemoryComponents | None:
        if self._spec is None:
            return None
        spec, ctx = self._spec, self._ctx
        try:
            entry = find_model(self._ps(model_id=spec.raw), spec.name)
        except EngineError as exc:
            log.warning("%s: no /api/ps answer: %s", spec.raw, exc)
            entry = None
        if entry is None:
            return self._log_components()
        size = int_or_none(entry.get("size")) or 0
        size_vram = int_or_none(entry.get("size_vram")) or 0
        if size_vram < size:
            self._warn_spilled(spec, ctx, size, size_vram)
        n_parallel, _source = self.num_parallel()
        return memory_from_ps(
            entry, self._log_components(), ours=self._server.ours, n_parallel=n_parallel
        )

    def _warn_spilled(self, spec: ModelSpec, ctx: int | None, size: int, size_vram: int) -> None:
        """Once per model and context: part of the model is in system memory."""
        if f"spill:{spec.raw}:{ctx}" in self._warned:
            return
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

    def _log_components(self) -> MemoryComponents | None:
        """llama.cpp's buffer lines in our server's log since this start (None when not ours)."""
        return self._server.log_components(self._log_offset)

    def log_tail(self, n_lines: int = 40) -> str:
        return self._server.log_tail(n_lines)

    def stop(self) -> None:
        """Unload the model we loaded and wait until /api/ps no longer lists it; safe to repeat."""
        spec, self._spec, self._ctx = self._spec, None, None
        self._join_loader()
        if spec is None or self._closed:
            return
        if self._server.died():
            return
        api.unload(self._client, self.base_url, spec, self.cfg.unload_timeout_s)

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.stop()
        finally:
            self._server.stop()
            self._closed = True
            self._client.close()

    # -- services (manage_loadout.py) ----------------------------------------------------------
    serves_many_models = True

    def status(self) -> EngineStatus:
        """Up or down at the configured address (never starts a server); /api/ps models."""
        url = self.base_url
        try:
            version = self._server.probe_version()
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
        models = api.resident_models(loaded)
        return EngineStatus(self.name, True, url, version=f"ollama {version}", models=models)

    def detach(self) -> None:
        """Leave the loaded model (and a server we started) running for a loadout."""
        self._join_loader()
        spec, ctx = self._spec, self._ctx
        self._spec, self._ctx = None, None
        if spec is not None and ctx is not None:
            # keep it loaded until told otherwise (same num_ctx, so Ollama does not reload it)
            api.keep_loaded(self._client, self.base_url, spec, ctx, self.cfg.request_timeout_s)
        self._server.detach()

    # -- helpers -----------------------------------------------------------------------------------
    def _join_loader(self) -> None:
        """Wait for the load request in flight, if any (at most start_timeout_s)."""
        loader, self._loader = self._loader, None
        if loader is not None and loader.is_alive():
            loader.join(timeout=self.cfg.start_timeout_s)

    def _require_started(self) -> tuple[ModelSpec, int]:
        if self._spec is None or self._ctx is None:
            raise RuntimeError("engine not started")
        return self._spec, self._ctx

    def _raise_if_server_died(self, spec: ModelSpec) -> None:
        proc = self._server.proc
        if proc is not None and not proc.alive():
            raise EngineError(
                "engine_crashed",
                f"the Ollama server we started exited with code {proc.returncode}",
                model_id=spec.raw,
                log_tail=self.log_tail(),
            )

    def _ps(self, *, model_id: str | None) -> list[dict[str, Any]]:
        return api.ps(self._client, self.base_url, model_id=model_id)
