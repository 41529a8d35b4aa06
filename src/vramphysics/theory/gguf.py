"""Theory from GGUF keys: a GGUF file's (llama.cpp), or Ollama's `model_info` of the same shape."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vramphysics.errors import ConfigError
from vramphysics.theory.common import (
    Theory,
    _attention_kind,
    _optional_positive_int,
    _positive_int,
    _sliding_note,
    _theory,
    resolve_kv_dtype,
)


@dataclass(frozen=True)
class _GgufKeys:
    """GGUF metadata keys, and how an error names one (`key_prefix` + key, in `path`)."""

    meta: Mapping[str, Any]
    path: Path | None
    key_prefix: str = ""

    def get(self, key: str) -> Any:
        return self.meta.get(key)

    def where(self, key: str) -> str:
        return f"{self.key_prefix}{key}"

    def positive_int(self, key: str, value: Any) -> int:
        return _positive_int(value, path=self.path, key=self.where(key))


def _theory_from_gguf_metadata(
    meta: Mapping[str, Any],
    *,
    source: str,
    kv_dtype: str,
    weights_bytes: int | None,
    path: Path | None,
    key_prefix: str = "",
    notes: Sequence[str] = (),
    n_seq: int = 1,
) -> Theory:
    """The formula over GGUF keys (`general.architecture`, `<arch>.block_count`, ...)."""
    keys = _GgufKeys(meta, path, key_prefix)
    arch = keys.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise ConfigError(
            "no general.architecture: not a model's metadata", path=path, key=keys.where("general")
        )
    n_layers = keys.positive_int(f"{arch}.block_count", keys.get(f"{arch}.block_count"))
    heads_per_layer, kv_per_layer = _gguf_head_counts(keys, arch, n_layers)
    k_dim, v_dim = _gguf_head_dims(keys, arch, heads_per_layer)

    out_notes = list(notes)
    window_raw = keys.get(f"{arch}.attention.sliding_window")
    window = int(window_raw) if isinstance(window_raw, (int, float)) and window_raw > 0 else None
    if window is not None:
        out_notes.append(_sliding_note(window, None, n_layers))
    common: dict[str, Any] = dict(
        source=source,
        arch=arch,
        kv_dtype=kv_dtype,
        weights_bytes=weights_bytes,
        n_seq=n_seq,
        max_context_tokens=_optional_positive_int(keys.get(f"{arch}.context_length")),
    )
    mla = _gguf_mla(keys, n_layers, kv_per_layer, k_dim, v_dim)
    if mla is not None:
        latent, mla_note = mla
        return _theory(
            kv_heads_per_layer=[1] * n_layers,
            k_head_dim=latent,
            v_head_dim=0,
            attention="mla",
            notes=[*out_notes, mla_note],
            **common,
        )
    return _theory(
        kv_heads_per_layer=kv_per_layer,
        k_head_dim=k_dim,
        v_head_dim=v_dim,
        attention=_attention_kind(max(heads_per_layer), max(kv_per_layer)),
        upper_bound=window is not None,
        sliding_window=window,
        notes=out_notes,
        **common,
    )


def _gguf_head_counts(keys: _GgufKeys, arch: str, n_layers: int) -> tuple[list[int], list[int]]:
    """(attention heads, KV heads) per layer; a single number stands for every layer."""
    heads_key = f"{arch}.attention.head_count"
    heads_raw = keys.get(heads_key)
    if isinstance(heads_raw, list):
        heads_per_layer = [int(h) for h in heads_raw]
    elif heads_raw is None:
        raise ConfigError(
            "missing: the number of attention heads", path=keys.path, key=keys.where(heads_key)
        )
    else:
        heads_per_layer = [keys.positive_int(heads_key, heads_raw)] * n_layers

    kv_key = f"{arch}.attention.head_count_kv"
    kv_raw = keys.get(kv_key)
    if kv_raw is None:
        kv_per_layer = list(heads_per_layer)  # llama.cpp: no head_count_kv means every head
    elif isinstance(kv_raw, list):
        kv_per_layer = [int(h) for h in kv_raw]
    else:
        kv_per_layer = [int(kv_raw)] * n_layers
    if len(kv_per_layer) != n_layers or len(heads_per_layer) != n_layers:
        raise ConfigError(
            f"per-layer head counts do not match block_count {n_layers}",
            path=keys.path,
            key=keys.where(kv_key),
        )
    return heads_per_layer, kv_per_layer


def _gguf_head_dims(keys: _GgufKeys, arch: str, heads_per_layer: Sequence[int]) -> tuple[int, int]:
    """(K, V) head dimensions: key_length/value_length, else embedding_length / heads."""
    k_len = keys.get(f"{arch}.attention.key_length")
    v_len = keys.get(f"{arch}.attention.value_length")
    if k_len is None or v_len is None:
        embd = keys.get(f"{arch}.embedding_length")
        n_head0 = next((h for h in heads_per_layer if h > 0), 0)
        if embd is None or n_head0 <= 0:
            raise ConfigError(
                "missing: key_length/value_length and embedding_length",
                path=keys.path,
                key=keys.where(f"{arch}.attention.key_length"),
            )
        default_dim = int(embd) // n_head0
        k_len = default_dim if k_len is None else k_len
        v_len = default_dim if v_len is None else v_len
    return int(k_len), int(v_len)


def _gguf_mla(
    keys: _GgufKeys,
    n_layers: int,
    kv_per_layer: Sequence[int],
    k_dim: int,
    v_dim: int,
) -> tuple[int, str] | None:
    """(latent values per layer, note) of a multi-head latent attention GGUF, else None.

    llama.cpp caches one latent per layer and token: `kv_lora_rank` plus the RoPE part of the
    key (`rope.dimension_count`), not the full K and V of every head.
    """
    arch = keys.get("general.architecture")
    rank_raw = keys.get(f"{arch}.attention.kv_lora_rank")
    if rank_raw is None:
        return None
    rank = keys.positive_int(f"{arch}.attention.kv_lora_rank", rank_raw)
    rope_raw = keys.get(f"{arch}.rope.dimension_count")
    if rope_raw is None:  # an MLA conversion declares key_length = kv_lora_rank + RoPE part
        has_mla_keys = keys.get(f"{arch}.attention.key_length_mla") is not None
        rope = k_dim - rank if has_mla_keys and k_dim > rank else 0
    else:
        rope = keys.positive_int(f"{arch}.rope.dimension_count", rope_raw)
    latent = rank + rope
    full = sum(kv_per_layer) * (k_dim + v_dim) // max(n_layers, 1)
    note = (
        f"multi-head latent attention: one latent of kv_lora_rank {rank} + RoPE dimension "
        f"{rope} = {latent} values per layer (as llama.cpp caches it), not the full K+V of "
        f"{full} values per layer"
    )
    if keys.get(f"{arch}.attention.key_length_mla") is None:
        note += (
            "; this file has no attention.key_length_mla (converted before llama.cpp's MLA "
            "support): a llama.cpp that cannot use MLA on it caches the full K+V"
        )
    return latent, note


def _read_gguf(path: Path) -> tuple[dict[str, Any], int]:
    """Loader: the GGUF's architecture keys and the exact bytes of its tensors."""
    import gguf

    if not path.is_file():
        raise ConfigError("no such GGUF file", path=path)
    try:
        reader = gguf.GGUFReader(path)
    except (OSError, ValueError, IndexError) as exc:
        raise ConfigError(f"not a readable GGUF file: {exc}", path=path) from exc
    arch_field = reader.get_field("general.architecture")
    arch = arch_field.contents() if arch_field is not None else None
    meta: dict[str, Any] = {"general.architecture": arch}
    if isinstance(arch, str):
        for name, field in reader.fields.items():
            if name.startswith(f"{arch}."):
                meta[name] = field.contents()
    weights = sum(int(t.n_bytes) for t in reader.tensors)
    return meta, weights


def theory_from_gguf(path: Path, kv_dtype: str = "auto") -> Theory:
    """Theory for a GGUF file; weights are the exact bytes of its tensors.

    `auto` is f16, llama.cpp's default cache type (`--cache-type-k/-v`).
    """
    meta, weights = _read_gguf(Path(path))
    resolved = resolve_kv_dtype(kv_dtype, "float16")
    return _theory_from_gguf_metadata(
        meta, source="gguf", kv_dtype=resolved, weights_bytes=weights, path=Path(path)
    )
