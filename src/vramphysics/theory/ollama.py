"""Theory from an Ollama `POST /api/show` answer."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vramphysics.errors import ConfigError
from vramphysics.theory.common import Theory, _load_json, resolve_kv_dtype
from vramphysics.theory.gguf import _theory_from_gguf_metadata


def load_ollama_show(path_or_json: Path | str) -> Mapping[str, Any]:
    """Loader: an Ollama `POST /api/show` answer from a file (or from JSON text)."""
    if isinstance(path_or_json, str) and path_or_json.lstrip().startswith("{"):
        path = None
        try:
            doc = json.loads(path_or_json)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"invalid JSON: {exc.msg}", line=exc.lineno) from exc
    else:
        path = Path(path_or_json)
        doc = _load_json(path, what="Ollama /api/show answer")
    if not isinstance(doc, dict):
        raise ConfigError("expected a JSON object", path=path)
    return doc


def _ollama_weights_bytes(tensors: Any) -> tuple[int | None, str | None]:
    """Exact bytes from `/api/show`'s tensor list (name, type, shape), or why not."""
    import gguf

    if not isinstance(tensors, list) or not tensors:
        return None, (
            "weights unknown: this /api/show answer lists no tensors "
            "(general.parameter_count is a count of parameters, not bytes)"
        )
    total = 0
    for t in tensors:
        type_name = str(t.get("type", "")) if isinstance(t, dict) else ""
        qtype = gguf.GGMLQuantizationType.__members__.get(type_name.upper())
        shape = t.get("shape") if isinstance(t, dict) else None
        if qtype is None or not isinstance(shape, list):
            return None, f"weights unknown: tensor type {type_name!r} has no known size"
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        n = math.prod(int(s) for s in shape)
        total += n // block * type_size
    return total, None


def theory_from_ollama_show(
    show: Mapping[str, Any], kv_dtype: str = "f16", num_parallel: int = 1
) -> Theory:
    """Theory from an Ollama `/api/show` answer; `num_parallel` sequences share the cache.

    `kv_bytes_per_token` is for one sequence; Ollama allocates `num_ctx * num_parallel` cache
    cells, so `total_bytes(ctx)` multiplies by `n_seq = num_parallel`. `auto` is f16
    (OLLAMA_KV_CACHE_TYPE's default). Weights are exact when the answer lists the tensors.
    """
    if num_parallel < 1:
        raise ConfigError(f"num_parallel must be >= 1, got {num_parallel}", key="num_parallel")
    info = show.get("model_info")
    prefix = "model_info."
    if info is None and "general.architecture" in show:
        info, prefix = show, ""
    if not isinstance(info, Mapping):
        raise ConfigError("no model_info: not an Ollama /api/show answer", key="model_info")
    weights, why = _ollama_weights_bytes(show.get("tensors"))
    notes = [why] if why else []
    if num_parallel > 1:
        notes.append(
            f"Ollama caches num_ctx x num_parallel = ctx x {num_parallel} tokens; "
            "total_bytes multiplies by n_seq"
        )
    resolved = resolve_kv_dtype(kv_dtype, "float16")
    return _theory_from_gguf_metadata(
        info,
        source="ollama-show",
        kv_dtype=resolved,
        weights_bytes=weights,
        path=None,
        key_prefix=prefix,
        notes=notes,
        n_seq=num_parallel,
    )
