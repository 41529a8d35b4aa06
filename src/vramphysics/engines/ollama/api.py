"""Ollama's HTTP API (docs/api.md in ollama/ollama): the requests the engine makes, and the pure
parsing of their answers (model names, NDJSON streams, error bodies, timings)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
from tqdm import tqdm

from vramphysics.engines.base import Availability, ResidentModel
from vramphysics.errors import EngineError
from vramphysics.setups import ModelSpec

log = logging.getLogger(__name__)


def normalize_model_name(name: str) -> str:
    """Ollama's names are `[namespace/]model[:tag]`, case-insensitive, with tag `latest` by default.

    `qwen2.5` and `qwen2.5:latest` are the same model; `qwen2.5:7b` and `qwen2.5:7b-instruct` are not.
    """
    text = name.strip().lower()
    head, slash, last = text.rpartition("/")
    if ":" not in last:
        last += ":latest"
    return f"{head}{slash}{last}"


# -- requests ---------------------------------------------------------------------------------------


def probe_version(client: httpx.Client, base_url: str) -> str | None:
    """The server's version, None when nothing answers; start_failed when it is not Ollama."""
    url = f"{base_url}/api/version"
    try:
        r = client.get(url, timeout=3.0)
    except httpx.TransportError:
        return None
    try:
        version = r.json().get("version") if r.status_code == 200 else None
    except (json.JSONDecodeError, AttributeError):
        version = None
    if not isinstance(version, str):
        raise EngineError(
            "start_failed",
            f"something that is not Ollama answers at {base_url} "
            f"(HTTP {r.status_code} on /api/version); set engines.ollama.host/port",
        )
    return version


def get_json(
    client: httpx.Client, base_url: str, path: str, *, kind: str, model_id: str | None
) -> dict[str, Any]:
    """`GET path` answered by a JSON object; EngineError `kind` (or `timeout`) otherwise."""
    url = f"{base_url}{path}"
    try:
        r = client.get(url, timeout=10.0)
    except httpx.TimeoutException as exc:
        raise EngineError("timeout", f"no answer from {url}", model_id=model_id) from exc
    except httpx.TransportError as exc:
        raise EngineError(
            kind, f"{type(exc).__name__} talking to {url}", model_id=model_id
        ) from exc
    if r.status_code != 200:
        raise EngineError(
            kind, f"HTTP {r.status_code} from {url}: {error_text(r.text)}", model_id=model_id
        )
    try:
        data = r.json()
    except json.JSONDecodeError as exc:
        raise EngineError(kind, f"not JSON from {url}: {r.text[:80]!r}", model_id=model_id) from exc
    if not isinstance(data, dict):
        raise EngineError(kind, f"unexpected answer from {url}: {r.text[:80]!r}", model_id=model_id)
    return data


def ps(client: httpx.Client, base_url: str, *, model_id: str | None) -> list[dict[str, Any]]:
    """The models `/api/ps` lists as loaded."""
    data = get_json(client, base_url, "/api/ps", kind="request_failed", model_id=model_id)
    return [m for m in data.get("models") or [] if isinstance(m, dict)]


def store_availability(data: dict[str, Any], spec: ModelSpec, base_url: str) -> Availability:
    """Whether `/api/tags` (`data`) lists the model: where, and its name@digest as revision."""
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
        f"{spec.name} is not in the store of the Ollama server at {base_url} "
        f"(`ollama pull {spec.name}`, or run with --force-download)",
        None,
    )


def resident_models(loaded: list[dict[str, Any]]) -> tuple[ResidentModel, ...]:
    """`/api/ps` entries as records."""
    return tuple(
        ResidentModel(
            name=str(m.get("name") or m.get("model") or "?"),
            size_bytes=int_or_none(m.get("size")),
            vram_bytes=int_or_none(m.get("size_vram")),
            ctx=int_or_none(m.get("context_length")),
        )
        for m in loaded
    )


def unload(client: httpx.Client, base_url: str, spec: ModelSpec, timeout_s: float) -> None:
    """`keep_alive: 0`, then wait until /api/ps no longer lists the model (warnings, no raise)."""
    try:
        r = client.post(
            f"{base_url}/api/generate",
            json={"model": spec.name, "keep_alive": 0},
            timeout=timeout_s,
        )
    except httpx.HTTPError as exc:
        log.warning("%s: unload request failed: %s", spec.raw, exc)
        return
    if r.status_code not in (200, 404):
        log.warning("%s: unload: HTTP %d %s", spec.raw, r.status_code, error_text(r.text))
    _wait_unlisted(client, base_url, spec, timeout_s)


def _wait_unlisted(client: httpx.Client, base_url: str, spec: ModelSpec, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if find_model(ps(client, base_url, model_id=spec.raw), spec.name) is None:
                return
        except EngineError as exc:
            log.warning("%s: cannot confirm the unload: %s", spec.raw, exc)
            return
        if time.monotonic() > deadline:
            log.warning(
                "%s: still listed by /api/ps %.0f s after keep_alive 0; the next start may "
                "share memory with it",
                spec.raw,
                timeout_s,
            )
            return
        time.sleep(0.1)


def keep_loaded(
    client: httpx.Client, base_url: str, spec: ModelSpec, ctx: int, timeout_s: float
) -> None:
    """`keep_alive: -1` at the same num_ctx (so Ollama does not reload it)."""
    r = client.post(
        f"{base_url}/api/generate",
        json={"model": spec.name, "keep_alive": -1, "options": {"num_ctx": ctx}},
        timeout=timeout_s,
    )
    if r.status_code != 200:
        raise EngineError(
            "request_failed", f"keep_alive -1: HTTP {r.status_code}", model_id=spec.raw
        )


def refuse(response: httpx.Response, url: str, kind: str, model_id: str) -> None:
    """Raise `kind` for an answer that is not HTTP 200, with Ollama's error text."""
    if response.status_code != 200:
        response.read()
        raise EngineError(
            kind,
            f"HTTP {response.status_code} from {url}: {error_text(response.text)}",
            model_id=model_id,
        )


# -- POST /api/pull ---------------------------------------------------------------------------------


def pull(client: httpx.Client, base_url: str, spec: ModelSpec, *, silence_s: float) -> None:
    """`POST /api/pull`, streamed: byte progress per layer; the stream must end in `success`."""
    url = f"{base_url}/api/pull"
    timeout = httpx.Timeout(connect=10.0, read=silence_s, write=30.0, pool=10.0)
    bars: dict[str, tqdm[Any]] = {}
    log.info("pulling %s from the Ollama library", spec.name)
    try:
        success = _stream_pull(client, url, spec, timeout, bars)
    except httpx.TimeoutException as exc:
        raise EngineError(
            "timeout",
            f"pulling {spec.name}: no progress from {url} for {silence_s:.0f} s",
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


def _stream_pull(
    client: httpx.Client,
    url: str,
    spec: ModelSpec,
    timeout: httpx.Timeout,
    bars: dict[str, tqdm[Any]],
) -> bool:
    """Follow the pull's stream; whether it said `success`."""
    success = False
    with client.stream(
        "POST", url, json={"model": spec.name, "stream": True}, timeout=timeout
    ) as response:
        refuse(response, url, "download_failed", spec.raw)
        for event in iter_ndjson(response.iter_lines(), kind="download_failed", model_id=spec.raw):
            if _show_pull_progress(event, spec, bars) == "success":
                success = True
    return success


def _show_pull_progress(event: dict[str, Any], spec: ModelSpec, bars: dict[str, tqdm[Any]]) -> str:
    """One event of the pull: a layer's byte progress on its bar, or its status logged."""
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
    return status


# -- parsing ----------------------------------------------------------------------------------------


def engine_timings(final: Mapping[str, Any]) -> dict[str, float]:
    """Rates from Ollama's final object (durations in nanoseconds)."""
    out: dict[str, float] = {}
    n_eval, eval_ns = final.get("eval_count"), final.get("eval_duration")
    if isinstance(n_eval, int) and isinstance(eval_ns, int) and eval_ns > 0:
        out["decode_tokens_per_s"] = n_eval / (eval_ns / 1e9)
    n_prompt, prompt_ns = final.get("prompt_eval_count"), final.get("prompt_eval_duration")
    cached = final.get("prompt_eval_cached_count")  # newer Ollama: part of prompt_eval_count
    if isinstance(cached, int):
        out["prompt_cached_tokens"] = float(cached)
        n_prompt = n_prompt - cached if isinstance(n_prompt, int) else n_prompt
    if isinstance(n_prompt, int) and isinstance(prompt_ns, int) and prompt_ns > 0:
        out["prefill_tokens_per_s"] = n_prompt / (prompt_ns / 1e9)
    load_ns = final.get("load_duration")
    if isinstance(load_ns, int):
        out["load_s"] = load_ns / 1e9
    return out


def iter_ndjson(
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


def find_model(models: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The entry of `models` whose name or model is `name` (Ollama's name rules)."""
    want = normalize_model_name(name)
    for m in models:
        for key in ("name", "model"):
            value = m.get(key)
            if isinstance(value, str) and normalize_model_name(value) == want:
                return m
    return None


def error_text(body: str) -> str:
    """Ollama's `{"error": ...}` text, or the start of the body."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return body.strip()[:200]
    if isinstance(data, dict) and "error" in data:
        return str(data["error"])
    return body.strip()[:200]


def int_or_none(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
