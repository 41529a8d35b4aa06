"""The Theory record, cache dtypes and the KV formula shared by every metadata source."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vramphysics.errors import ConfigError

# Bytes per cached value. q8_0 / q4_0 (llama.cpp cache types) store blocks of 32 values with
# one f16 scale: 32 + 2 = 34 and 16 + 2 = 18 bytes per block.
_KV_DTYPES: Mapping[str, tuple[str, float]] = {
    "f16": ("f16", 2.0),
    "fp16": ("f16", 2.0),
    "float16": ("f16", 2.0),
    "half": ("f16", 2.0),
    "bf16": ("bf16", 2.0),
    "bfloat16": ("bf16", 2.0),
    "f32": ("f32", 4.0),
    "fp32": ("f32", 4.0),
    "float32": ("f32", 4.0),
    "fp8": ("fp8", 1.0),
    "fp8_e4m3": ("fp8_e4m3", 1.0),
    "fp8_e5m2": ("fp8_e5m2", 1.0),
    "q8_0": ("q8_0", 34 / 32),
    "q4_0": ("q4_0", 18 / 32),
    "q4_1": ("q4_1", 20 / 32),
    "q5_0": ("q5_0", 22 / 32),
    "q5_1": ("q5_1", 24 / 32),
    "iq4_nl": ("iq4_nl", 18 / 32),
}

KV_DTYPES: tuple[str, ...] = ("auto", *sorted(_KV_DTYPES))

# `torch_dtype` of a checkpoint -> the cache dtype vLLM's `--kv-cache-dtype auto` uses.
_MODEL_DTYPES: Mapping[str, str] = {
    "float16": "f16",
    "fp16": "f16",
    "half": "f16",
    "bfloat16": "bf16",
    "bf16": "bf16",
    "float32": "f32",
    "fp32": "f32",
    "float": "f32",
}


@dataclass(frozen=True)
class Theory:
    """The memory a model needs in theory: weights plus `kv_bytes_per_token` per token."""

    source: str  # "gguf" | "hf-config" | "ollama-show"
    arch: str | None
    n_layers: int
    n_kv_heads: int | None  # the largest per-layer count when layers differ
    k_head_dim: int | None
    v_head_dim: int | None
    kv_dtype: str  # resolved cache dtype name ("f16", "bf16", "fp8", "q8_0", ...)
    kv_bytes_per_token: float  # ONE sequence, all layers, K + V
    weights_bytes: int | None
    upper_bound: bool = False
    notes: tuple[str, ...] = ()
    kv_values_per_token: int = 0  # cached values per token (all layers, K + V)
    attention: str = "mha"  # "mha" | "gqa" | "mqa" | "mla"
    sliding_window: int | None = None
    n_seq: int = 1  # sequences the engine caches at once (Ollama's num_parallel)
    max_context_tokens: int | None = None  # the model's own limit (max position embeddings)

    def kv_bytes(self, ctx: int, n_seq: int | None = None) -> float:
        """KV cache for `ctx` tokens in each of `n_seq` sequences (default: this theory's)."""
        seqs = self.n_seq if n_seq is None else n_seq
        return ctx * seqs * self.kv_bytes_per_token

    def total_bytes(self, ctx: int, n_seq: int | None = None) -> float | None:
        """weights + ctx * n_seq * kv_bytes_per_token; None when the weights are unknown."""
        if self.weights_bytes is None:
            return None
        return self.weights_bytes + self.kv_bytes(ctx, n_seq)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["notes"] = list(self.notes)
        return d


def resolve_kv_dtype(dtype: str, model_dtype: str | None = None) -> str:
    """The canonical cache dtype name; `auto` becomes the model's dtype (f16 when unknown)."""
    name = dtype.strip().lower()
    if name == "auto":
        if model_dtype is None:
            return "f16"
        return _MODEL_DTYPES.get(model_dtype.strip().lower().removeprefix("torch."), "f16")
    if name not in _KV_DTYPES:
        raise ConfigError(
            f"unknown KV-cache dtype {dtype!r}; valid: {', '.join(KV_DTYPES)}", key="kv_dtype"
        )
    return _KV_DTYPES[name][0]


def kv_dtype_bytes(dtype: str, model_dtype: str | None = None) -> float:
    """Bytes per cached value for a cache dtype (`auto`: the model's dtype, default 2)."""
    return _KV_DTYPES[resolve_kv_dtype(dtype, model_dtype)][1]


def _attention_kind(n_heads: int | None, n_kv_heads: int | None) -> str:
    if n_kv_heads is None or n_heads is None or n_kv_heads >= n_heads:
        return "mha"
    return "mqa" if n_kv_heads == 1 else "gqa"


def _theory(
    *,
    source: str,
    arch: str | None,
    kv_heads_per_layer: Sequence[int],
    k_head_dim: int,
    v_head_dim: int,
    kv_dtype: str,
    weights_bytes: int | None,
    attention: str,
    upper_bound: bool = False,
    sliding_window: int | None = None,
    notes: Sequence[str] = (),
    n_seq: int = 1,
    max_context_tokens: int | None = None,
) -> Theory:
    bytes_per_value = _KV_DTYPES[kv_dtype][1]
    values = sum(kv_heads_per_layer) * (k_head_dim + v_head_dim)
    return Theory(
        source=source,
        arch=arch,
        n_layers=len(kv_heads_per_layer),
        n_kv_heads=max(kv_heads_per_layer) if kv_heads_per_layer else None,
        k_head_dim=k_head_dim,
        v_head_dim=v_head_dim,
        kv_dtype=kv_dtype,
        kv_bytes_per_token=values * bytes_per_value,
        weights_bytes=weights_bytes,
        upper_bound=upper_bound,
        notes=tuple(notes),
        kv_values_per_token=values,
        attention=attention,
        sliding_window=sliding_window,
        n_seq=n_seq,
        max_context_tokens=max_context_tokens,
    )


def _optional_positive_int(value: Any) -> int | None:
    """A whole positive number, or None for anything else (absent, 0, text)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return int(value) if value > 0 and value == int(value) else None


def _positive_int(value: Any, *, path: Path | None, key: str) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value != int(value)
    ):
        raise ConfigError(f"expected a whole number, got {value!r}", path=path, key=key)
    if int(value) <= 0:
        raise ConfigError(f"expected a positive number, got {value!r}", path=path, key=key)
    return int(value)


def _sliding_note(window: int, n_sliding: int | None, n_layers: int) -> str:
    which = "some layers" if n_sliding is None else f"{n_sliding} of {n_layers} layers"
    return (
        f"sliding-window attention: {which} attend to the last {window} tokens only; "
        f"kv_bytes_per_token counts every layer in full, an upper bound past {window} tokens "
        "(engines that drop out-of-window blocks need less)"
    )


def _load_json(path: Path, *, what: str) -> Any:
    if not path.is_file():
        raise ConfigError(f"no such {what} file", path=path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"invalid JSON: {exc.msg}", path=path, line=exc.lineno) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what}: {exc}", path=path) from exc
