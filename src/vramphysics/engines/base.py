"""The one engine interface. The runner drives every engine through it and never asks which.

Life of an engine in a calibration step::

    engine.check_available(spec)        # soft: never downloads
    engine.start(spec, ctx)             # launch bound to the configured host (127.0.0.1)
    engine.wait_ready()                 # raises EngineError(kind="timeout" | "start_failed" ...)
    engine.complete(prompt, n)          # a streamed request, timed
    engine.memory_report()              # the engine's own figures (log, /metrics), if any
    engine.stop()                       # the whole process tree / container, always
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

from vramphysics.errors import EngineError
from vramphysics.setups import ModelSpec

if TYPE_CHECKING:
    from vramphysics.theory import Theory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Availability:
    """Is the model on disk (or in the engine's store)? `location` says where it was found."""

    present: bool
    detail: str
    location: str | None = None


@dataclass(frozen=True)
class Usage:
    """Token counts from the engine itself; `source` says how they were obtained."""

    prompt_tokens: int | None
    completion_tokens: int | None
    # where the counts come from: "engine-usage" (the engine's usage object / Ollama's counts),
    # "engine-timings" (llama-server `timings`), "engine-length" (the engine stopped at
    # max_tokens: finish_reason "length"), "engine-tokenizer" (the engine's own tokenizer on the
    # text), "none"
    source: str
    # where `prompt_tokens` came from when not from `source` (e.g. "engine-tokenizer" beside an
    # "engine-length" output count); "" when both come from `source`
    prompt_source: str = ""


@dataclass(frozen=True)
class MediaItem:
    """One image or video sent with a request, encoded (`mime`: image/jpeg, video/mp4)."""

    kind: str  # "image" | "video"
    mime: str
    data: bytes
    width: int
    height: int
    frames: int = 1
    fps: float | None = None

    def data_url(self) -> str:
        import base64

        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"


@dataclass(frozen=True)
class GenRequest:
    """One timed benchmark request: a prompt and the exact number of tokens to produce.

    `exact`: ask the engine to produce exactly `output_tokens` however the model wants to stop
    (vLLM `min_tokens` + `ignore_eos`, llama.cpp `min_tokens`/`ignore_eos`, Ollama `num_predict`),
    so that every request of a cell decodes the same number of tokens. Timed requests never ask
    for `logprobs` (they make the engine compute a softmax per token and slow the decode)."""

    prompt: str
    output_tokens: int
    exact: bool = True
    media: tuple[MediaItem, ...] = ()  # sent with the prompt, in the engine's own shape
    # the engine's own count of this prompt, made before the timed requests (see
    # `Engine.counts_prompts_apart`): used where the stream carries no usage
    prompt_tokens: int | None = None


@dataclass(frozen=True)
class Completion:
    """One streamed request. Times are `time.monotonic()` seconds."""

    sent_s: float
    first_text_s: float | None
    last_text_s: float | None
    end_s: float
    usage: Usage
    n_chunks: int
    engine_timings: Mapping[str, float] = field(default_factory=dict)
    # the arrival time of every content event (a chunk with non-empty text, `delta.content`,
    # `delta.reasoning_content` / `delta.reasoning`, or Ollama `message.content` /
    # `message.thinking`), in order; first = first_text_s, last = last_text_s
    content_times_s: tuple[float, ...] = ()
    finish_reason: str | None = None  # the engine's own: "length", "stop", ...

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first_text_s is None else (self.first_text_s - self.sent_s) * 1e3


@dataclass(frozen=True)
class MemoryComponents:
    """Memory the engine reports about itself (bytes), with where it read them."""

    source: str
    weights_bytes: int | None = None
    kv_pool_bytes: int | None = None
    kv_tokens: int | None = None
    compute_bytes: int | None = None
    cuda_graph_bytes: int | None = None
    total_bytes: int | None = (
        None  # the engine's own figure of its whole footprint (Ollama /api/ps size)
    )
    calibration: str | None = (
        None  # "engine-kv": cost per token from the engine's KV figures (vLLM)
    )
    device_resident: bool = True  # False when the buffers live in host memory (CPU engine)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def kv_bytes_per_token(self) -> float | None:
        if self.kv_pool_bytes and self.kv_tokens:
            return self.kv_pool_bytes / self.kv_tokens
        return None


@dataclass(frozen=True)
class ResidentModel:
    """A model an engine holds now, with the memory it reports for it."""

    name: str
    size_bytes: int | None = None
    vram_bytes: int | None = None
    ctx: int | None = None


@dataclass(frozen=True)
class EngineStatus:
    """Is the engine up at its configured address, and what does it hold?"""

    name: str
    up: bool
    url: str
    version: str | None = None
    models: tuple[ResidentModel, ...] = ()
    detail: str = ""


class Engine(abc.ABC):
    """An inference engine we can start at a context size, query, measure and stop."""

    name: ClassVar[str]

    def __init__(self, *, state_dir: Path, log_dir: Path) -> None:
        self.state_dir = state_dir
        self.log_dir = log_dir

    # -- what we run -----------------------------------------------------------------------
    @abc.abstractmethod
    def version(self) -> str:
        """The engine's version string (for every row we write)."""

    def validate(self, spec: ModelSpec) -> None:
        """Reject a model ID this engine can never serve (SetupError naming it); no I/O.

        Called for every model before the first engine starts, so bad input fails fast.
        """
        return None

    @abc.abstractmethod
    def check_available(self, spec: ModelSpec) -> Availability:
        """Is the model present? Never downloads."""

    def download(self, spec: ModelSpec) -> None:
        """Fetch a missing model (only with --force-download)."""
        raise EngineError(
            "download_failed", f"{self.name} cannot download models", model_id=spec.raw
        )

    def theory(self, spec: ModelSpec) -> Theory | None:
        """Theory from the model's own metadata, when the engine can read it."""
        return None

    def calibration_contexts(self, sweep: Sequence[int]) -> list[int]:
        """The contexts to start at for a calibration (default: the whole sweep).

        An engine whose own figures give the cost per token (vLLM) needs fewer starts.
        """
        return list(sweep)

    def settings(self) -> dict[str, Any]:
        """Launch settings that a reader needs to reproduce a figure."""
        return {}

    # -- one start ---------------------------------------------------------------------------
    @abc.abstractmethod
    def start(self, spec: ModelSpec, ctx: int) -> None:
        """Launch (or load) the model at context `ctx`, bound to the configured host."""

    @abc.abstractmethod
    def wait_ready(self) -> None:
        """Block until it answers; EngineError on timeout or early exit."""

    @abc.abstractmethod
    def complete(self, prompt: str, max_tokens: int) -> Completion:
        """One streamed completion, timed; usage from the engine."""

    def warm_up(self, max_tokens: int = 4) -> Completion:
        """A short request, so that lazy allocations happen before we measure. It is the first
        request after the engine is ready: its TTFT is the benchmark's cold TTFT."""
        return self.complete("Hello", max_tokens)

    # -- benchmarks ----------------------------------------------------------------------------
    def generate(self, request: GenRequest) -> Completion:
        """One timed benchmark request (no logprobs; exactly `output_tokens` when `exact`),
        with the engine's own token counts and the time of every content event."""
        raise EngineError("other", f"{self.name} cannot run benchmark requests")

    def count_prompt_tokens(self, text: str) -> int:
        """The prompt tokens a `generate` of `text` will be counted as by the engine itself
        (its tokenizer, special tokens and chat template included)."""
        raise EngineError("other", f"{self.name} cannot count tokens")

    def counts_prompts_apart(self) -> bool:
        """True when this engine's stream carries no prompt-token count, so that `generate`
        would ask the engine's tokenizer after each request; the benchmark then counts every
        prompt before its cell's timed requests and passes `GenRequest.prompt_tokens` (a
        tokenizer call between timed requests slows the next request's prefill: seen on
        llama-cpp-python, 28 -> 45 ms for 124 tokens)."""
        return False

    def max_concurrency(self) -> tuple[int | None, str]:
        """How many requests this engine serves at once (None: no limit we know of), and why
        when it is limited (e.g. "llama-cpp-python's server serializes requests")."""
        return None, ""

    def attach(self, url: str, model: str) -> None:
        """Talk to a server someone else runs at `url`, serving `model`: no start, and `stop`
        and `close` leave it running. EngineError `unreachable` (one line naming the URL) when
        nothing answers there, `model_not_found` (naming the models it serves) for a wrong name.
        """
        raise EngineError("other", f"{self.name} cannot attach to a running server")

    def gpu_indices(self) -> tuple[int, ...] | None:
        """The GPUs (NVML indices) this engine's starts are pinned to; None: not pinned, it may use
        every GPU it sees; (): no GPU. The NVML probe and the guardrail look at exactly these."""
        return None

    @abc.abstractmethod
    def root_pid(self) -> int | None:
        """The root of the engine's process tree (None when it is not ours to see)."""

    def memory_report(self) -> MemoryComponents | None:
        """The engine's own memory figures for the current start (log lines, /metrics)."""
        return None

    def log_tail(self, n_lines: int = 40) -> str:
        return ""

    def check_alive(self) -> None:
        """Raise EngineError(kind='engine_crashed') when the engine died under us."""
        return None

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop everything this start launched; safe to call twice."""

    def close(self) -> None:
        """Release what the engine holds across starts (a server we launched)."""
        self.stop()

    # -- services (manage_loadout.py) ----------------------------------------------------------
    serves_many_models: ClassVar[bool] = False  # one server holds several models (Ollama)

    def status(self) -> EngineStatus:
        """Ask the configured address whether the engine is up and what it holds (no start)."""
        raise NotImplementedError(f"{type(self).__name__}.status")

    def detach(self) -> None:
        """Leave what `start` launched running on purpose (a loadout); `close` will not stop it."""
        raise EngineError("other", f"{self.name} cannot leave a model running")

    def kill_managed(self) -> list[str]:
        """Stop every service of this engine that this tool started or manages; say what."""
        from vramphysics.engines.process import kill_leftovers

        stopped = kill_leftovers(
            self.state_dir, include_live_launchers=True, include_kept=True, engine=self.name
        )
        return [f"{r.label} (pid {r.pid})" for r in stopped]

    # -- the port a server we start listens on ------------------------------------------------
    def claim_port(self, host: str, port: int | str, *, model_id: str | None = None) -> int:
        """Before a start: the port our server will listen on. A configured port must be free
        (EngineError `port_in_use` naming the process that holds it); `auto` takes a free one.

        Another server on the port (a user's own llama-server) would otherwise answer our
        readiness checks and requests while our engine dies on its bind."""
        from vramphysics.engines.process import ensure_port_free, free_port

        if port == "auto":
            chosen = free_port(host)
            log.info("%s: port auto: %s:%d", self.name, host, chosen)
            return chosen
        ensure_port_free(host, int(port), model_id=model_id)
        return int(port)

    def check_listener(
        self, root_pid: int, host: str, port: int, *, model_id: str | None = None
    ) -> None:
        """Readiness counts only from our own server: the socket listening on `port` must
        belong to the process tree of `root_pid`; EngineError `port_in_use` otherwise."""
        from vramphysics.engines.process import port_in_use, tree_listens_on

        ours = tree_listens_on(root_pid, port)
        if ours is None:
            log.debug(
                "%s: psutil may not list the sockets of pid %d: relying on the free-port check "
                "made before the start",
                self.name,
                root_pid,
            )
        elif not ours:
            raise port_in_use(host, port, model_id=model_id)

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
