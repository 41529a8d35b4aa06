"""The llama.cpp engine: `llama-server` when it is on PATH, else `python -m llama_cpp.server`.

Each context is a fresh server process (memory freed inside one process is not returned to the
system promptly, so one process per context is the only honest measurement).
"""

from __future__ import annotations

import logging
import os
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from vramphysics.engines.base import (
    Availability,
    Completion,
    Engine,
    EngineStatus,
    GenRequest,
    MemoryComponents,
    ResidentModel,
)
from vramphysics.engines.gpus import gpu_env, pinned_indices
from vramphysics.engines.llamacpp.command import (
    API_KEY_VARIABLES,
    base_command,
    gen_payload,
    parallel_slots,
    resolve_model_path,
    server_command,
    speaks_llama_server,
    uses_llama_server,
)
from vramphysics.engines.llamacpp.config import LlamaCppConfig
from vramphysics.engines.llamacpp.log import components_from_log
from vramphysics.engines.media import refuse_media
from vramphysics.engines.openai_compat import (
    Counting,
    engine_client,
    pick_model,
    served_models,
    server_api_key,
    stream_completion,
)
from vramphysics.engines.process import DISK_FULL, ManagedProcess, read_tail
from vramphysics.errors import EngineError, SetupError
from vramphysics.setups import ModelSpec

if TYPE_CHECKING:
    from vramphysics.theory import Theory

log = logging.getLogger(__name__)

_OOM_MARKERS = ("out of memory", "failed to allocate", "cudamalloc failed", "unable to allocate")


class LlamaCppEngine(Engine):
    name = "llamacpp"

    def __init__(self, cfg: LlamaCppConfig, *, state_dir: Path, log_dir: Path) -> None:
        super().__init__(state_dir=state_dir, log_dir=log_dir)
        self.cfg = cfg
        self._proc: ManagedProcess | None = None
        self._spec: ModelSpec | None = None
        self._ctx: int | None = None
        self._uses_llama_server = uses_llama_server(cfg)
        # the server speaks llama-server's API (found on PATH, configured, or seen on attach)
        self._llama_server_api = speaks_llama_server(cfg, llama_server=self._uses_llama_server)
        # `port: auto`: none until a start takes a free one (0 answers nothing)
        self._port = cfg.port if isinstance(cfg.port, int) else 0
        self._attached: str | None = None  # the URL of a server someone else runs
        self._served_model: str | None = None  # the model name we send to an attached server
        self._props: dict[str, Any] = {}  # llama-server's /props of an attached server
        key = server_api_key([*(cfg.command or []), *cfg.extra_args], os.environ, API_KEY_VARIABLES)
        self._client = engine_client(cfg.request_timeout_s, key)

    @property
    def base_url(self) -> str:
        if self._attached is not None:
            return self._attached
        return f"http://{self.cfg.host}:{self._port}"

    def version(self) -> str:
        if self._attached is not None:
            build = self._props.get("build_info")
            if not self._llama_server_api:
                return "unknown (llama-cpp-python's server does not say)"
            return f"llama-server {build}" if isinstance(build, str) else "llama-server"
        if self._llama_server_api:
            return "llama-server"
        try:
            return f"llama-cpp-python {metadata.version('llama_cpp_python')}"
        except metadata.PackageNotFoundError:
            return "llama-cpp-python (not installed)"

    def settings(self) -> dict[str, Any]:
        return {
            "host": self.cfg.host,
            "port": self.cfg.port,
            "n_gpu_layers": self.cfg.n_gpu_layers,
            "launcher": " ".join(base_command(self.cfg, llama_server=self._uses_llama_server)),
            "extra_args": list(self.cfg.extra_args),
            "gpus": self.cfg.gpus,
        }

    def gpu_indices(self) -> tuple[int, ...] | None:
        """engines.llamacpp.gpus: the GPUs its server sees (CUDA_VISIBLE_DEVICES)."""
        return pinned_indices(self.cfg.gpus)

    def model_path(self, spec: ModelSpec) -> Path:
        return resolve_model_path(spec.name, self.cfg.model_dir)

    def validate(self, spec: ModelSpec) -> None:
        try:
            self.model_path(spec)
        except SetupError as exc:
            raise SetupError(exc.message, model_id=spec.raw) from exc

    def check_available(self, spec: ModelSpec) -> Availability:
        path = self.model_path(spec)
        if path.is_file():
            return Availability(True, f"found {path}", str(path))
        return Availability(False, f"no GGUF file at {path}", str(path))

    def theory(self, spec: ModelSpec) -> Theory | None:
        from vramphysics.theory import theory_from_gguf

        return theory_from_gguf(self.model_path(spec))

    def start(self, spec: ModelSpec, ctx: int) -> None:
        self.stop()
        self._detach_url()
        path = self.model_path(spec)
        self._port = self.claim_port(self.cfg.host, self.cfg.port, model_id=spec.raw)
        argv = server_command(
            self.cfg, llama_server=self._uses_llama_server, path=path, ctx=ctx, port=self._port
        )
        log_path = self.log_dir / f"llamacpp-{path.stem}-ctx{ctx}.log"
        log_path.unlink(missing_ok=True)
        log.debug("starting %s", argv)
        try:
            self._proc = ManagedProcess(
                argv,
                log_path=log_path,
                label=f"llamacpp {spec.raw} ctx={ctx}",
                env=gpu_env(self.cfg.gpus, docker=False),
                state_dir=self.state_dir,
            )
        except OSError as exc:
            if exc.errno in DISK_FULL:  # our own state folder is full: not the engine's fault
                raise
            raise EngineError(
                "start_failed", f"cannot run {argv[0]!r}: {exc.strerror}", model_id=spec.raw
            ) from exc
        self._spec, self._ctx = spec, ctx

    def wait_ready(self) -> None:
        proc = self._require_proc()
        deadline = time.monotonic() + self.cfg.start_timeout_s
        while time.monotonic() < deadline:
            if not proc.alive():
                raise self._exit_error(proc)
            try:
                r = self._client.get(f"{self.base_url}/v1/models", timeout=2.0)
                if r.status_code == 200:
                    self.check_listener(
                        proc.pid, self.cfg.host, self._port, model_id=self._spec_id()
                    )
                    self._check_context_applied()
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise EngineError(
            "timeout",
            f"not ready within {self.cfg.start_timeout_s:.0f} s",
            model_id=self._spec.raw if self._spec else None,
            log_tail=proc.log_tail(),
        )

    def _check_context_applied(self) -> None:
        """The server's own log must show the context we asked for: never report a lie.

        The cells are the full-attention cache's (a sliding-window model's second cache holds
        only its window), wherever the cache lives.
        """
        report = self.memory_report()
        cells = report.extra.get("kv_cells") if report else None
        if cells is not None and self._ctx is not None and cells < self._ctx:
            raise EngineError(
                "other",
                f"asked for n_ctx {self._ctx} but the KV cache has {cells} cells",
                model_id=self._spec.raw if self._spec else None,
            )

    def _exit_error(self, proc: ManagedProcess) -> EngineError:
        tail = proc.log_tail()
        code = proc.returncode
        if any(m in tail.lower() for m in _OOM_MARKERS):
            kind = "cuda_oom"
        elif code is not None and code < 0:
            kind = "engine_crashed"  # killed by a signal (the OOM killer, a user) while starting
        else:
            kind = "start_failed"
        return EngineError(
            kind,
            f"exited with code {proc.returncode} before it was ready",
            model_id=self._spec.raw if self._spec else None,
            log_tail=tail,
        )

    def check_alive(self) -> None:
        if self._attached is not None:
            return  # not ours to watch: a failed request says what happened
        proc = self._require_proc()
        if not proc.alive():
            raise EngineError(
                "engine_crashed",
                f"exited with code {proc.returncode}",
                model_id=self._spec.raw if self._spec else None,
                log_tail=proc.log_tail(),
            )

    # -- requests ----------------------------------------------------------------------------
    def _tokenize(self, text: str, *, special: bool) -> int:
        """llama-server /tokenize (`add_special`: the BOS a prompt gets), or llama-cpp-python
        /extras/tokenize (which always adds the special tokens, as its completions do)."""
        if self._llama_server_api:
            url, body = "/tokenize", {"content": text, "add_special": special}
        else:
            url, body = "/extras/tokenize", {"input": text}
        if self._served_model is not None and not self._llama_server_api:
            body["model"] = self._served_model
        try:
            r = self._client.post(
                f"{self.base_url}{url}", json=body, timeout=self.cfg.request_timeout_s
            )
        except httpx.TransportError as exc:
            raise EngineError(
                "request_failed", f"{type(exc).__name__} talking to {self.base_url}{url}"
            ) from exc
        try:
            tokens = r.json().get("tokens") if r.status_code == 200 else None
        except (ValueError, AttributeError):
            tokens = None
        if not isinstance(tokens, list):
            raise EngineError(
                "request_failed",
                f"no token list from {self.base_url}{url} (HTTP {r.status_code}: {r.text[:200]})",
            )
        return len(tokens)

    def count_prompt_tokens(self, text: str) -> int:
        """The prompt tokens of a `generate` of `text`: the engine's tokenizer with the special
        tokens its completions add (the BOS), as its own usage counts them."""
        self._require_ready()
        return self._tokenize(text, special=True)

    def _count_text_tokens(self, text: str) -> int:
        """Generated text, re-tokenized (without the BOS a prompt gets)."""
        if self._llama_server_api:
            return self._tokenize(text, special=False)
        return self._tokenize(text, special=True) - self._tokenize("", special=True)

    def generate(self, request: GenRequest) -> Completion:
        """A timed request to /v1/completions, without `logprobs` (see `gen_payload`). Media
        are refused before anything is sent: /v1/completions takes text only."""
        refuse_media(
            "llama.cpp",
            request.media,
            "vram-physics sends llama.cpp text completions (no multimodal projector yet)",
            self._spec.raw if self._spec else None,
        )
        payload = gen_payload(
            request.prompt,
            request.output_tokens,
            exact=request.exact,
            llama_server=self._llama_server_api,
        )
        return self._stream(
            payload, request.prompt, request.output_tokens, known=request.prompt_tokens
        )

    def complete(self, prompt: str, max_tokens: int) -> Completion:
        payload = gen_payload(prompt, max_tokens, exact=False, llama_server=self._llama_server_api)
        return self._stream(payload, prompt, max_tokens)

    def counts_prompts_apart(self) -> bool:
        """llama-cpp-python streams no usage: prompts are counted before the timed requests."""
        return not self._llama_server_api

    def _stream(
        self, payload: dict[str, Any], prompt: str, max_tokens: int, known: int | None = None
    ) -> Completion:
        self._require_ready()
        if self._served_model is not None:
            payload["model"] = self._served_model
        counting = Counting(
            prompt=(lambda: known)
            if known is not None
            else (lambda: self._tokenize(prompt, special=True)),
            text=self._count_text_tokens,
            max_tokens=max_tokens,
        )
        try:
            return stream_completion(
                self._client,
                f"{self.base_url}/v1/completions",
                payload,
                timeout_s=self.cfg.request_timeout_s,
                counting=counting,
                model_id=self._spec.raw if self._spec else None,
            )
        except EngineError:
            self.check_alive()
            raise

    def max_concurrency(self) -> tuple[int | None, str]:
        if not self._llama_server_api:
            return 1, "llama-cpp-python's server serializes requests"
        if self._attached is not None:
            slots = self._props.get("total_slots")
            if isinstance(slots, int) and slots > 0:
                return slots, f"llama-server's parallel slots (/props total_slots {slots})"
            return 1, "llama-server's /props does not give total_slots: assumed 1"
        argv = server_command(
            self.cfg, llama_server=self._uses_llama_server, path=Path("m.gguf"), ctx=1, port=1
        )
        slots = parallel_slots(argv) or 1
        return slots, f"llama-server's parallel slots (--parallel {slots})"

    # -- a server someone else runs ------------------------------------------------------------
    def attach(self, url: str, model: str) -> None:
        """Talk to the llama-server or llama-cpp-python server at `url` (which it is: /props
        answers only on llama-server). Nothing of ours runs: `stop` and `close` leave it."""
        self.stop()
        base = url.rstrip("/")
        entry = pick_model(served_models(self._client, base), model, base)
        self._attached, self._served_model = base, str(entry.get("id"))
        self._props = self._read_props(base)
        self._llama_server_api = bool(self._props)
        log.info(
            "attached to %s at %s, model %s",
            "llama-server" if self._props else "llama-cpp-python",
            base,
            self._served_model,
        )

    def _read_props(self, base: str) -> dict[str, Any]:
        """llama-server's /props ({} from llama-cpp-python, which has none)."""
        try:
            r = self._client.get(f"{base}/props", timeout=10.0)
        except httpx.TransportError as exc:
            raise EngineError("unreachable", f"{base}/props: {type(exc).__name__}") from exc
        if r.status_code != 200:
            return {}
        try:
            props = r.json()
        except ValueError:
            return {}
        return props if isinstance(props, dict) else {}

    def _detach_url(self) -> None:
        self._attached, self._served_model, self._props = None, None, {}
        self._llama_server_api = speaks_llama_server(self.cfg, llama_server=self._uses_llama_server)

    def _require_ready(self) -> None:
        if self._attached is None:
            self._require_proc()

    def root_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.alive() else None

    def memory_report(self) -> MemoryComponents | None:
        if self._proc is None:
            return None
        text = read_tail(self._proc.log_path, n_lines=100_000, max_bytes=4_000_000)
        return components_from_log(text, "llamacpp-log")

    def status(self) -> EngineStatus:
        url = self.base_url
        try:
            r = self._client.get(f"{url}/v1/models", timeout=3.0)
            r.raise_for_status()
            ids = [m.get("id", "?") for m in r.json().get("data", [])]
        except (httpx.HTTPError, ValueError) as exc:
            return EngineStatus(self.name, False, url, detail=type(exc).__name__)
        return EngineStatus(
            self.name,
            True,
            url,
            version=self.version(),
            models=tuple(ResidentModel(name=i) for i in ids),
        )

    def detach(self) -> None:
        if self._proc is not None:
            proc, self._proc = self._proc, None
            proc.detach()

    def log_tail(self, n_lines: int = 40) -> str:
        return self._proc.log_tail(n_lines) if self._proc is not None else ""

    def _spec_id(self) -> str | None:
        return self._spec.raw if self._spec else None

    def _require_proc(self) -> ManagedProcess:
        if self._proc is None:
            raise RuntimeError("engine not started")
        return self._proc

    def stop(self) -> None:
        if self._proc is not None:
            # forget it only once it is stopped: a signal during the stop leaves it here, and the
            # runner's clean-up (close) stops it again
            self._proc.stop(self.cfg.stop_timeout_s)
            self._proc = None

    def close(self) -> None:
        self.stop()
        self._client.close()
