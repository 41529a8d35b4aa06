"""vLLM: the Engine implementation, on a native server process or a Docker container.

How a server is launched (and stopped, watched, detached) is the launcher's business
(`launcher.py`: `NativeLauncher`, `DockerLauncher`, chosen by `cfg.mode`); the memory budget of
each start and the physics it learns are `budget.py`'s; the server's own words are read by
`log.py`. This module holds what is the same for both launchers: where the model is, one start,
readiness, requests and the engine's own memory figures.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from vramphysics import hf_cache
from vramphysics.engines.base import (
    Availability,
    Completion,
    Engine,
    EngineStatus,
    GenRequest,
    MediaItem,
    MemoryComponents,
)
from vramphysics.engines.gpus import pinned_indices
from vramphysics.engines.openai_compat import (
    Counting,
    engine_client,
    server_api_key,
    stream_completion,
)
from vramphysics.engines.process import read_tail
from vramphysics.engines.vllm.args import kv_cache_dtype, sanitize_container_name
from vramphysics.engines.vllm.budget import KvBudget
from vramphysics.engines.vllm.config import VllmConfig
from vramphysics.engines.vllm.launcher import Launch, make_launcher, native_command
from vramphysics.engines.vllm.log import (
    VllmMetricsFacts,
    classify_failure,
    parse_log,
    parse_metrics,
)
from vramphysics.engines.vllm.models import download_snapshot, validate_model_name
from vramphysics.engines.vllm.requests import (
    Attached,
    attach,
    ready_models,
    request_body,
    server_status,
    tokenize_body,
    tokenize_count,
)
from vramphysics.errors import EngineError
from vramphysics.redact import redact, redact_args
from vramphysics.setups import ModelSpec

if TYPE_CHECKING:
    from vramphysics.theory import Theory

log = logging.getLogger(__name__)

_LOG_BYTES = 8_000_000  # enough for a whole start-up log (about 100 kB on CPU)
_POLL_S = 0.5


class VllmEngine(Engine):
    name = "vllm"

    def __init__(
        self,
        cfg: VllmConfig,
        *,
        state_dir: Path,
        log_dir: Path,
        physics_path: Path | None = None,
        docker_client_factory: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__(state_dir=state_dir, log_dir=log_dir)
        self.cfg = cfg
        self._launcher = make_launcher(
            cfg,
            state_dir=state_dir,
            run_label=log_dir.name,
            docker_client_factory=docker_client_factory,
        )
        # `port: auto`: none until a start takes a free one (0 answers nothing)
        self._port = cfg.port if isinstance(cfg.port, int) else 0
        key_env = self._launcher.api_key_env()
        key = server_api_key([*cfg.command, *cfg.extra_args], key_env, ("VLLM_API_KEY",))
        self._client = engine_client(cfg.request_timeout_s, key)
        self._budget = KvBudget(cfg, physics_path, self.settings)
        self._log_version: str | None = None
        self._attached: Attached | None = None  # a server someone else runs (`attach`)
        self._reset_start()

    def _reset_start(self) -> None:
        self._log_path: Path | None = None
        self._spec: ModelSpec | None = None
        self._ctx: int | None = None
        self._served_model: str | None = None
        self._chat = False
        self._kv_space_gib: int | None = None
        self._utilization: float | None = None
        self._utilization_source = ""
        self._metrics: VllmMetricsFacts | None = None

    @property
    def physics_path(self) -> Path | None:
        """The physics database the smart allocation reads (settable, e.g. by a test)."""
        return self._budget.physics_path

    @physics_path.setter
    def physics_path(self, path: Path | None) -> None:
        self._budget.physics_path = path

    # -- what we run -------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        if self._attached is not None:
            return self._attached.base_url
        return f"http://{self.cfg.host}:{self._port}"

    def version(self) -> str:
        if self._attached is not None:
            return self._attached.version
        installed = self._launcher.installed_version()
        if installed:
            return installed
        if self._log_version:
            return f"vllm {self._log_version}"
        return self._launcher.unknown_version()

    def settings(self) -> dict[str, Any]:
        launcher = self._launcher.description()
        return {
            "mode": self.cfg.mode,
            "host": self.cfg.host,
            "port": self.cfg.port,
            "launcher": launcher,
            "gpus": self.cfg.gpus,
            "extra_args": redact_args(self.cfg.extra_args),
            "env_keys": sorted(self.cfg.env),
            "cpu_kvcache_space_gib": list(self.cfg.cpu_kvcache_space_gib),
            "default_gpu_memory_utilization": self.cfg.default_gpu_memory_utilization,
            "utilization_margin": self.cfg.utilization_margin,
            "calibration": "engine-kv: KV pool from vLLM's /metrics, 2 starts with different KV budgets",
        }

    def calibration_contexts(self, sweep: Sequence[int]) -> list[int]:
        """The smallest and the largest context of the sweep: two starts.

        The cost per token is vLLM's own figure at each start; two starts with different KV
        budgets check `base = measured - KV pool`, and any part of the base that grows with
        `--max-model-len` shows as a spread between the smallest and the largest context.
        The largest is also the benchmark's context, so the benchmark needs no start of its own.
        """
        return self._budget.calibration_contexts(sweep)

    def gpu_indices(self) -> tuple[int, ...] | None:
        """The GPUs each start is pinned to (NVML indices): None when not pinned (every GPU the
        environment shows), () for none (a start without a GPU)."""
        return pinned_indices(self.cfg.gpus)

    # -- where the model is ------------------------------------------------------------------
    def hub(self) -> hf_cache.HubCache:
        return hf_cache.hub_cache(self.cfg.hf_cache)

    def lookup(self, spec: ModelSpec) -> hf_cache.ModelLookup:
        return hf_cache.locate(spec.name, hub_dir=self.hub().hub_dir, model_dir=self.cfg.model_dir)

    def validate(self, spec: ModelSpec) -> None:
        """A path (absolute, `./`, `../`, `~`), a plain name for `model_dir`, or `org/name`."""
        validate_model_name(spec, self.cfg.model_dir)

    def check_available(self, spec: ModelSpec) -> Availability:
        found = self.lookup(spec)
        return Availability(
            found.present, found.detail, str(found.folder) if found.folder else None
        )

    def download(self, spec: ModelSpec) -> None:
        """Fetch the snapshot into the hub cache with `huggingface_hub` (a tqdm bar shows it)."""
        download_snapshot(spec, self.lookup(spec), self.cfg.hf_cache)

    def theory(self, spec: ModelSpec) -> Theory | None:
        from vramphysics.theory import theory_from_hf_config

        found = self.lookup(spec)
        if not found.present or found.folder is None:
            return None
        return theory_from_hf_config(
            found.folder, kv_dtype=kv_cache_dtype(self.cfg.extra_args), weights_dir=found.folder
        )

    # -- memory budget of one start (budget.py) ---------------------------------------------
    def kv_space_gib(self, ctx: int) -> int:
        """VLLM_CPU_KVCACHE_SPACE of the start at `ctx`: its calibration rank, else the last."""
        return self._budget.kv_space_gib(ctx)

    def gpu_memory_utilization(self, spec: ModelSpec, ctx: int) -> tuple[float, str]:
        """`--gpu-memory-utilization` for a start at `ctx`, and where it came from."""
        return self._budget.gpu_memory_utilization(spec, ctx)

    # -- one start ---------------------------------------------------------------------------
    def start(self, spec: ModelSpec, ctx: int) -> None:
        self.stop()
        self._attached = None
        found = self.lookup(spec)
        self._port = self.claim_port(self.cfg.host, self.cfg.port, model_id=spec.raw)
        self._spec, self._ctx = spec, ctx
        self._chat = found.folder is not None and hf_cache.has_chat_template(found.folder)
        self._kv_space_gib = self.kv_space_gib(ctx)
        self._utilization, self._utilization_source = self.gpu_memory_utilization(spec, ctx)
        if "VLLM_CPU_KVCACHE_SPACE" in self.cfg.env:
            log.warning(
                "engines.vllm.env VLLM_CPU_KVCACHE_SPACE is replaced by cpu_kvcache_space_gib"
            )
        stem = sanitize_container_name(spec.name)
        self._log_path = self.log_dir / f"vllm-{stem}-ctx{ctx}.log"
        self._log_path.unlink(missing_ok=True)
        log.info(
            "vLLM %s ctx=%d: KV space %d GiB (CPU build), gpu utilization %s (%s)",
            spec.raw,
            ctx,
            self._kv_space_gib,
            self._utilization,
            self._utilization_source,
        )
        self._launcher.start(self._launch(spec, ctx, found))

    def _launch(self, spec: ModelSpec, ctx: int, found: hf_cache.ModelLookup) -> Launch:
        assert self._utilization is not None and self._kv_space_gib is not None
        assert self._log_path is not None
        return Launch(
            spec=spec,
            ctx=ctx,
            found=found,
            port=self._port,
            gpu_memory_utilization=self._utilization,
            kv_space_gib=self._kv_space_gib,
            log_path=self._log_path,
        )

    def native_launch(
        self, spec: ModelSpec, ctx: int, found: hf_cache.ModelLookup
    ) -> tuple[list[str], dict[str, str]]:
        """The argv of a native start and the variables it adds to our environment."""
        return native_command(self.cfg, self._launch(spec, ctx, found))

    def wait_ready(self) -> None:
        """Poll /health, then /v1/models, while the server lives; stop it on any failure."""
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        if self._spec is None:
            raise RuntimeError("engine not started")
        deadline = time.monotonic() + self.cfg.start_timeout_s
        while time.monotonic() < deadline:
            exited = self._launcher.exit_status()
            if exited is not None:
                raise self._exit_error(exited)
            if self._ready():
                self._check_context_applied()
                return
            time.sleep(_POLL_S)
        failure = classify_failure(self._log_text())
        seen = f"; the log shows {failure.kind}: {failure.message[:300]}" if failure else ""
        raise EngineError(
            "timeout",
            redact(f"not ready within {self.cfg.start_timeout_s:.0f} s{seen}"),
            model_id=self._spec.raw,
            log_tail=redact(self.log_tail()),
        )

    def _ready(self) -> bool:
        data = ready_models(self._client, self.base_url)
        if not data:
            return False
        pid = self._launcher.listener_pid()
        if pid is not None:  # native: the answer must come from our server
            self.check_listener(
                pid,
                self.cfg.host,
                self._port,
                model_id=self._spec.raw if self._spec else None,
            )
        self._served_model = str(data[0].get("id"))
        served_len = data[0].get("max_model_len")
        if isinstance(served_len, int) and self._ctx is not None and served_len != self._ctx:
            raise EngineError(
                "other",
                f"asked for --max-model-len {self._ctx} but the server reports {served_len}",
                model_id=self._spec.raw if self._spec else None,
            )
        return True

    def _check_context_applied(self) -> None:
        """The KV pool must hold one sequence of the context we asked for: never report a lie."""
        mem = self.memory_report()
        if (
            mem is not None
            and mem.kv_tokens is not None
            and self._ctx is not None
            and mem.kv_tokens < self._ctx
        ):
            raise EngineError(
                "kv_too_small",
                f"the KV cache holds {mem.kv_tokens} tokens, less than --max-model-len {self._ctx}",
                model_id=self._spec.raw if self._spec else None,
                max_context=mem.kv_tokens,
            )

    def _exit_error(self, how: str) -> EngineError:
        self._launcher.flush_log()
        text = self._log_text()
        failure = classify_failure(text)
        model_id = self._spec.raw if self._spec else None
        tail = redact(self.log_tail())
        if failure is None:
            return EngineError(
                "start_failed", f"{how} before it was ready", model_id=model_id, log_tail=tail
            )
        return EngineError(
            failure.kind,
            redact(failure.message),
            model_id=model_id,
            log_tail=tail,
            max_context=failure.max_context,
        )

    def check_alive(self) -> None:
        if self._attached is not None:
            return  # not ours to watch: a failed request says what happened
        exited = self._launcher.exit_status()
        if exited is not None:
            raise EngineError(
                "engine_crashed",
                exited,
                model_id=self._spec.raw if self._spec else None,
                log_tail=redact(self.log_tail()),
            )

    # -- requests ----------------------------------------------------------------------------
    def _count_tokens(self, text: str) -> int:
        r = self._client.post(
            f"{self.base_url}/tokenize",
            json={"model": self._served_model, "prompt": text, "add_special_tokens": False},
            timeout=self.cfg.request_timeout_s,
        )
        r.raise_for_status()
        return int(r.json()["count"])

    def count_prompt_tokens(self, text: str) -> int:
        """/tokenize as `generate` sends `text`: with the chat template and generation prompt
        when the model has one, else with the special tokens (see `tokenize_body`)."""
        model = self._require_model()
        body = tokenize_body(model, text, chat=self._chat)
        return tokenize_count(self._client, self.base_url, body, self.cfg.request_timeout_s)

    def generate(self, request: GenRequest) -> Completion:
        """A timed request (see `request_body`); counts from the stream's usage object."""
        return self._stream(
            request.prompt, request.output_tokens, exact=request.exact, media=request.media
        )

    def complete(self, prompt: str, max_tokens: int) -> Completion:
        """A streamed chat completion when the model has a chat template, else a completion."""
        return self._stream(prompt, max_tokens, exact=False)

    def _stream(
        self, prompt: str, max_tokens: int, *, exact: bool, media: Sequence[MediaItem] = ()
    ) -> Completion:
        model = self._require_model()
        path, payload = request_body(
            model, prompt, max_tokens, exact=exact, chat=self._chat, media=media
        )
        counting = Counting(
            prompt=lambda: self.count_prompt_tokens(prompt),
            text=self._count_tokens,
            max_tokens=max_tokens,
        )
        try:
            return stream_completion(
                self._client,
                f"{self.base_url}{path}",
                payload,
                timeout_s=self.cfg.request_timeout_s,
                counting=counting,
                model_id=self._spec.raw if self._spec else None,
            )
        except EngineError:
            self.check_alive()
            raise

    def _require_model(self) -> str:
        if self._served_model is None or (self._spec is None and self._attached is None):
            raise RuntimeError("engine not ready")
        return self._served_model

    def max_concurrency(self) -> tuple[int | None, str]:
        """vLLM batches requests continuously: no limit we know of."""
        return None, ""

    def attach(self, url: str, model: str) -> None:
        """Talk to a vLLM server someone else runs (native or in a container, the HTTP side is
        the same): requests, /tokenize, /version; `stop` and `close` never touch it."""
        self.stop()
        self._attached = attach(self._client, url, model)
        self._served_model = self._attached.served_model
        self._chat = self._attached.chat
        log.info(
            "attached to vLLM at %s, model %s (%s)",
            self._attached.base_url,
            self._served_model,
            "chat template" if self._chat else "no chat template",
        )

    def root_pid(self) -> int | None:
        return self._launcher.root_pid()

    # -- the engine's own figures ------------------------------------------------------------
    def _log_text(self) -> str:
        if self._log_path is None:
            return ""
        return read_tail(self._log_path, n_lines=10**7, max_bytes=_LOG_BYTES)

    def _read_metrics(self) -> VllmMetricsFacts | None:
        try:
            r = self._client.get(f"{self.base_url}/metrics", timeout=5.0)
        except httpx.TransportError as exc:
            log.debug("no /metrics: %s", exc)
            return self._metrics
        if r.status_code == 200:
            self._metrics = parse_metrics(r.text)
        return self._metrics

    def memory_report(self) -> MemoryComponents | None:
        """KV pool and tokens from /metrics (exact bytes), else from the log (GiB, 2 decimals)."""
        if self._spec is None:
            return None
        metrics = self._read_metrics()
        facts = parse_log(self._log_text(), metrics=metrics)
        self._log_version = facts.vllm_version or self._log_version
        mem = self._budget.components(
            metrics,
            facts,
            kv_space_gib=self._kv_space_gib,
            utilization=self._utilization,
            utilization_source=self._utilization_source,
        )
        if mem is not None:
            self._budget.learn(self._spec, self._utilization, mem)
        return mem

    def log_tail(self, n_lines: int = 40) -> str:
        return read_tail(self._log_path, n_lines) if self._log_path is not None else ""

    # -- services (manage_loadout.py) ----------------------------------------------------------
    def status(self) -> EngineStatus:
        return server_status(self._client, self.name, self.base_url, self.version)

    def detach(self) -> None:
        """Leave the server running (a loadout): a process keeps its record, marked `keep`; a
        container keeps its `vramphysics.managed` label, so `kill_managed` finds both."""
        self._reset_start()
        self._launcher.detach()

    def kill_managed(self) -> list[str]:
        stopped = super().kill_managed()
        return stopped + self._launcher.kill_managed()

    # -- stopping ----------------------------------------------------------------------------
    def stop(self) -> None:
        if self._attached is not None:
            return  # a server someone else runs: nothing of ours to stop
        self._reset_start()
        self._launcher.stop()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self._client.close()
            self._launcher.close()
