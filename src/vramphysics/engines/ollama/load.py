"""Loading a model: `POST /api/generate` with an empty prompt (Ollama loads the model at the
request's num_ctx), run in a thread while memory is probed, and what its answer means."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx

from vramphysics.engines.ollama.api import error_text
from vramphysics.errors import EngineError
from vramphysics.setups import ModelSpec

log = logging.getLogger(__name__)

_NOT_ENOUGH_MEMORY = ("requires more system memory", "insufficient memory", "not enough memory")
_OOM_MARKERS = ("out of memory", "cudamalloc failed", "unable to allocate", "failed to allocate")


@dataclass(frozen=True)
class LoadResult:
    """The answer to the load request (`POST /api/generate`, empty prompt)."""

    status: int | None
    body: str
    error: BaseException | None = None


def load(
    client: httpx.Client, base_url: str, payload: dict[str, Any], timeout_s: float
) -> LoadResult:
    """`POST /api/generate` with an empty prompt: Ollama loads the model (run in a thread)."""
    try:
        r = client.post(
            f"{base_url}/api/generate",
            json=payload,
            timeout=httpx.Timeout(timeout_s, connect=5.0),
        )
        return LoadResult(r.status_code, r.text)
    except httpx.HTTPError as exc:
        return LoadResult(None, "", exc)


def load_failed(res: LoadResult) -> bool:
    """The load request got no answer, or not HTTP 200."""
    return res.error is not None or res.status != 200


def load_error(
    res: LoadResult,
    spec: ModelSpec,
    base_url: str,
    *,
    died: bool,
    exit_code: int | None,
    log_tail: str,
) -> EngineError:
    """The error of a failed load; `died`: the server we started has exited (`exit_code`)."""
    if res.error is not None:
        if died:
            return EngineError(
                "engine_crashed",
                f"the Ollama server exited with code {exit_code} while loading",
                model_id=spec.raw,
                log_tail=log_tail,
            )
        kind = "timeout" if isinstance(res.error, httpx.TimeoutException) else "start_failed"
        return EngineError(
            kind,
            f"loading the model: {type(res.error).__name__} from {base_url}/api/generate",
            model_id=spec.raw,
            log_tail=log_tail,
        )
    message = error_text(res.body)
    if res.status == 404:
        return EngineError(
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
    return EngineError(
        kind,
        f"loading the model: HTTP {res.status}: {message}",
        model_id=spec.raw,
        log_tail=log_tail,
    )


def check_context_length(spec: ModelSpec, ctx: int, applied: Any) -> None:
    """/api/ps's context_length must be the num_ctx we asked for."""
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
