"""Every memory formula from model metadata: weights bytes and KV-cache bytes per token.

Three sources describe a model's layout: a GGUF file (llama.cpp, Ollama), a Hugging Face
`config.json` (vLLM, with the safetensors headers beside it for the weights), and Ollama's
`POST /api/show` answer. Each becomes one `Theory` record:

    kv_bytes_per_token = sum over layers of n_kv_heads * (k_head_dim + v_head_dim) * bytes_per_value
    total_bytes(ctx)   = weights_bytes + ctx * n_seq * kv_bytes_per_token

The figure is for ONE sequence and counts K and V of every layer. Multi-head latent attention
(DeepSeek-V2/V3) caches one latent of `kv_lora_rank + qk_rope_head_dim` values per layer
instead. Sliding-window layers are counted in full, so the figure is then an upper bound
(`upper_bound=True`, and a note says so). Engines also need activations, compute buffers and a
CUDA context on top: calibration measures those; theory does not.

Files are read only by the small loaders (`load_hf_config`, `load_ollama_show`, the GGUF and
safetensors readers); everything else is a pure function over plain values.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vramphysics.errors import ConfigError

log = logging.getLogger(__name__)

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

# Bytes per element of the safetensors dtype codes.
SAFETENSORS_DTYPE_BYTES: Mapping[str, float] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    "C64": 8,
}
_SAFETENSORS_MAX_HEADER_BYTES = 100 * 2**20
SAFETENSORS_INDEX = "model.safetensors.index.json"

# Sub-configs of multimodal models that hold the language model, in order of preference.
_TEXT_CONFIG_KEYS = ("text_config", "llm_config", "language_config")

# Other spellings of the keys we read (GPT-2, GPT-J, OLMo, Falcon, ...).
_HF_ALIASES: Mapping[str, tuple[str, ...]] = {
    "num_hidden_layers": ("n_layer", "n_layers", "num_layers"),
    "num_attention_heads": ("n_head", "n_heads", "num_heads"),
    "num_key_value_heads": ("num_kv_heads", "n_head_kv"),
    "hidden_size": ("n_embd", "d_model"),
}

# transformers' class defaults for keys that real configs leave out. llava-1.5's text_config
# names only model_type "llama" and a few keys; gemma-3-4b-it's omits the head counts.
_HF_DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    "llama": {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32},
    "mistral": {
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "sliding_window": 4096,
    },
    "gemma3_text": {
        "hidden_size": 2304,
        "num_hidden_layers": 26,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "sliding_window": 4096,
        "sliding_window_pattern": 6,
    },
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


# --------------------------------------------------------------------------- dtypes


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


# --------------------------------------------------------------------------- the formula


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


# --------------------------------------------------------------------------- GGUF metadata


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

    def get(key: str) -> Any:
        return meta.get(key)

    def where(key: str) -> str:
        return f"{key_prefix}{key}"

    arch = get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise ConfigError(
            "no general.architecture: not a model's metadata", path=path, key=where("general")
        )
    n_layers = _positive_int(
        get(f"{arch}.block_count"), path=path, key=where(f"{arch}.block_count")
    )

    heads_key = f"{arch}.attention.head_count"
    heads_raw = get(heads_key)
    if isinstance(heads_raw, list):
        heads_per_layer = [int(h) for h in heads_raw]
    elif heads_raw is None:
        raise ConfigError("missing: the number of attention heads", path=path, key=where(heads_key))
    else:
        heads_per_layer = [_positive_int(heads_raw, path=path, key=where(heads_key))] * n_layers

    kv_key = f"{arch}.attention.head_count_kv"
    kv_raw = get(kv_key)
    if kv_raw is None:
        kv_per_layer = list(heads_per_layer)  # llama.cpp: no head_count_kv means every head
    elif isinstance(kv_raw, list):
        kv_per_layer = [int(h) for h in kv_raw]
    else:
        kv_per_layer = [int(kv_raw)] * n_layers
    if len(kv_per_layer) != n_layers or len(heads_per_layer) != n_layers:
        raise ConfigError(
            f"per-layer head counts do not match block_count {n_layers}",
            path=path,
            key=where(kv_key),
        )

    k_len, v_len = get(f"{arch}.attention.key_length"), get(f"{arch}.attention.value_length")
    if k_len is None or v_len is None:
        embd = get(f"{arch}.embedding_length")
        n_head0 = next((h for h in heads_per_layer if h > 0), 0)
        if embd is None or n_head0 <= 0:
            raise ConfigError(
                "missing: key_length/value_length and embedding_length",
                path=path,
                key=where(f"{arch}.attention.key_length"),
            )
        default_dim = int(embd) // n_head0
        k_len = default_dim if k_len is None else k_len
        v_len = default_dim if v_len is None else v_len
    k_dim, v_dim = int(k_len), int(v_len)

    out_notes = list(notes)
    upper = False
    window_raw = get(f"{arch}.attention.sliding_window")
    window = int(window_raw) if isinstance(window_raw, (int, float)) and window_raw > 0 else None
    if window is not None:
        upper = True
        out_notes.append(_sliding_note(window, None, n_layers))
    max_tokens = _optional_positive_int(get(f"{arch}.context_length"))
    mla = _gguf_mla(get, where, path, n_layers, kv_per_layer, k_dim, v_dim)
    if mla is not None:
        latent, mla_note = mla
        return _theory(
            source=source,
            arch=arch,
            kv_heads_per_layer=[1] * n_layers,
            k_head_dim=latent,
            v_head_dim=0,
            kv_dtype=kv_dtype,
            weights_bytes=weights_bytes,
            attention="mla",
            notes=[*out_notes, mla_note],
            n_seq=n_seq,
            max_context_tokens=max_tokens,
        )
    attention = _attention_kind(max(heads_per_layer), max(kv_per_layer))
    return _theory(
        source=source,
        arch=arch,
        kv_heads_per_layer=kv_per_layer,
        k_head_dim=k_dim,
        v_head_dim=v_dim,
        kv_dtype=kv_dtype,
        weights_bytes=weights_bytes,
        attention=attention,
        upper_bound=upper,
        sliding_window=window,
        notes=out_notes,
        n_seq=n_seq,
        max_context_tokens=max_tokens,
    )


def _gguf_mla(
    get: Any,
    where: Any,
    path: Path | None,
    n_layers: int,
    kv_per_layer: Sequence[int],
    k_dim: int,
    v_dim: int,
) -> tuple[int, str] | None:
    """(latent values per layer, note) of a multi-head latent attention GGUF, else None.

    llama.cpp caches one latent per layer and token: `kv_lora_rank` plus the RoPE part of the
    key (`rope.dimension_count`), not the full K and V of every head.
    """
    arch = get("general.architecture")
    rank_raw = get(f"{arch}.attention.kv_lora_rank")
    if rank_raw is None:
        return None
    rank = _positive_int(rank_raw, path=path, key=where(f"{arch}.attention.kv_lora_rank"))
    rope_raw = get(f"{arch}.rope.dimension_count")
    if rope_raw is None:  # an MLA conversion declares key_length = kv_lora_rank + RoPE part
        has_mla_keys = get(f"{arch}.attention.key_length_mla") is not None
        rope = k_dim - rank if has_mla_keys and k_dim > rank else 0
    else:
        rope = _positive_int(rope_raw, path=path, key=where(f"{arch}.rope.dimension_count"))
    latent = rank + rope
    full = sum(kv_per_layer) * (k_dim + v_dim) // max(n_layers, 1)
    note = (
        f"multi-head latent attention: one latent of kv_lora_rank {rank} + RoPE dimension "
        f"{rope} = {latent} values per layer (as llama.cpp caches it), not the full K+V of "
        f"{full} values per layer"
    )
    if get(f"{arch}.attention.key_length_mla") is None:
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


# --------------------------------------------------------------------------- Ollama /api/show


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


# --------------------------------------------------------------------------- HF config.json


def _load_json(path: Path, *, what: str) -> Any:
    if not path.is_file():
        raise ConfigError(f"no such {what} file", path=path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"invalid JSON: {exc.msg}", path=path, line=exc.lineno) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what}: {exc}", path=path) from exc


def load_hf_config(path: Path) -> Mapping[str, Any]:
    """Loader: a Hugging Face `config.json` (or the folder that holds one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    doc = _load_json(path, what="HF config.json")
    if not isinstance(doc, dict):
        raise ConfigError("expected a JSON object", path=path)
    return doc


def _text_part(cfg: Mapping[str, Any]) -> tuple[dict[str, Any], str, list[str]]:
    """The language model's keys: text_config over the top level, then class defaults."""
    merged = {k: v for k, v in cfg.items() if not isinstance(v, Mapping)}
    prefix = ""
    for key in _TEXT_CONFIG_KEYS:
        sub = cfg.get(key)
        if isinstance(sub, Mapping):
            merged.update({k: v for k, v in sub.items() if v is not None or k not in merged})
            prefix = f"{key}."
            break
    for canonical, aliases in _HF_ALIASES.items():
        if merged.get(canonical) is None:
            for alias in aliases:
                if merged.get(alias) is not None:
                    merged[canonical] = merged[alias]
                    break
    notes: list[str] = []
    model_type = merged.get("model_type")
    defaults = _HF_DEFAULTS.get(str(model_type), {})
    filled = [k for k in defaults if k not in merged]
    if filled:
        for k in filled:
            merged[k] = defaults[k]
        notes.append(
            f"{prefix.rstrip('.') or 'config'} leaves out {', '.join(filled)}: filled with "
            f"transformers' defaults for model_type {model_type!r} "
            f"({', '.join(f'{k}={defaults[k]}' for k in filled)})"
        )
    return merged, prefix, notes


def _model_dtype(cfg: Mapping[str, Any], text: Mapping[str, Any]) -> str | None:
    for source in (cfg, text):
        for key in ("torch_dtype", "dtype"):
            value = source.get(key)
            if isinstance(value, str):
                return value
    return None


def _is_cached_attention(layer_type: str) -> bool:
    """Layers whose cache grows per token: full or sliding attention, not linear/recurrent."""
    t = layer_type.lower()
    return "attention" in t and "linear" not in t


def _hf_layers(text: Mapping[str, Any], n_layers: int) -> tuple[int, int, int | None, list[str]]:
    """(layers with a per-token cache, of which sliding, the window, notes)."""
    notes: list[str] = []
    window_raw = text.get("sliding_window")
    window = int(window_raw) if isinstance(window_raw, (int, float)) and window_raw > 0 else None
    layer_types = text.get("layer_types")
    interval = text.get("full_attention_interval")
    if isinstance(layer_types, list) and layer_types:
        types = [str(t) for t in layer_types]
        cached = [t for t in types if _is_cached_attention(t)]
        n_cached = len(cached)
        n_sliding = sum(1 for t in cached if "sliding" in t or "local" in t) if window else 0
    elif isinstance(interval, int) and interval > 0:
        n_cached, n_sliding = n_layers // interval, 0  # Qwen3-Next: every interval-th is full
    else:
        n_cached, n_sliding = n_layers, _sliding_layers(text, window, n_layers)
    if n_cached < n_layers:
        notes.append(
            f"{n_layers - n_cached} of {n_layers} layers are linear-attention/recurrent: their "
            "state has a fixed size and is not counted per token"
        )
    if window is not None and n_sliding == 0 and text.get("use_sliding_window") is False:
        notes.append(f"sliding_window {window} is set but use_sliding_window is false: not applied")
    if window is not None and n_sliding:
        notes.append(_sliding_note(window, n_sliding, n_layers))
    return n_cached, n_sliding, window, notes


def _sliding_layers(text: Mapping[str, Any], window: int | None, n_layers: int) -> int:
    """How many layers use the sliding window, for configs without `layer_types`."""
    if window is None or text.get("use_sliding_window") is False:
        return 0
    max_pos = text.get("max_position_embeddings")
    if isinstance(max_pos, int) and window >= max_pos:
        return 0  # a window as long as the context changes nothing
    pattern = text.get("sliding_window_pattern") or text.get("_sliding_window_pattern")
    if isinstance(pattern, int) and pattern > 0:
        return n_layers - n_layers // pattern  # Gemma 3: every pattern-th layer is global
    if text.get("model_type") == "gemma2":
        return n_layers // 2  # Gemma 2 alternates local and global layers
    max_window_layers = text.get("max_window_layers")
    if text.get("use_sliding_window") is True and isinstance(max_window_layers, int):
        return max(0, n_layers - max_window_layers)  # Qwen2: layers from max_window_layers on
    return n_layers  # Mistral 7B v0.1: every layer


def _serving_dtype(model_dtype: str | None, dtype: str, notes: list[str]) -> str | None:
    """The dtype vLLM serves the weights in: `dtype` when given, else the checkpoint's, except
    that vLLM's `--dtype auto` serves a float32 checkpoint in 16 bits."""
    given = dtype.strip().lower()
    if given != "auto":
        if given not in _KV_DTYPES:
            raise ConfigError(
                f"unknown dtype {dtype!r}; valid: auto, {', '.join(sorted(_KV_DTYPES))}",
                key="dtype",
            )
        return given
    if model_dtype is not None and resolve_kv_dtype("auto", model_dtype) == "f32":
        notes.append(
            f"{model_dtype} checkpoint: vLLM's --dtype auto serves it in 16 bits, so weights "
            "and the auto KV cache are counted at 2 bytes per value (give --dtype float32 "
            "for a model served in 32 bits)"
        )
        return "float16"
    return model_dtype


def theory_from_hf_config(
    config: Mapping[str, Any] | Path,
    kv_dtype: str = "auto",
    weights_dir: Path | None = None,
    dtype: str = "auto",
) -> Theory:
    """Theory from a Hugging Face `config.json` (a mapping, or the path to load), as vLLM
    serves it.

    Reads the language model's part (`text_config` of vision-language models), honours an
    explicit `head_dim`, multi-head latent attention (`kv_lora_rank`) and sliding windows.
    `dtype` is vLLM's `--dtype`: `auto` serves the checkpoint's `torch_dtype`, except float32
    which vLLM serves in 16 bits. The KV `auto` follows the served dtype (f16 when unknown).
    Weights come from the safetensors headers in `weights_dir` when given.
    """
    path: Path | None = None
    if isinstance(config, Path):
        path = config / "config.json" if config.is_dir() else config
        cfg: Mapping[str, Any] = load_hf_config(path)
    else:
        cfg = config
    text, prefix, notes = _text_part(cfg)

    def need(key: str) -> int:
        value = text.get(key)
        if value is None:
            raise ConfigError("missing (needed for the KV-cache size)", path=path, key=prefix + key)
        return _positive_int(value, path=path, key=prefix + key)

    n_layers = need("num_hidden_layers")
    model_dtype = _model_dtype(cfg, text)
    served = _serving_dtype(model_dtype, dtype, notes)
    resolved = resolve_kv_dtype(kv_dtype, served)
    if kv_dtype.strip().lower() == "auto":
        if served is None:
            notes.append("no torch_dtype in the config: auto KV dtype taken as f16")
        elif served.strip().lower().removeprefix("torch.") not in _MODEL_DTYPES:
            notes.append(f"torch_dtype {served!r} is not a 16/32-bit float: auto KV taken as f16")
    max_tokens = _optional_positive_int(text.get("max_position_embeddings"))

    weights: int | None = None
    if weights_dir is not None:
        wide_as = (  # floating-point weights as served, when that is not as stored
            _KV_DTYPES[resolve_kv_dtype(served)][1]
            if served is not None and served != model_dtype
            else None
        )
        weights, weight_notes = _weights_from_safetensors(Path(weights_dir), float_bytes=wide_as)
        notes.extend(weight_notes)
        if weights is None:
            notes.append(f"weights unknown: no *.safetensors in {weights_dir}")
    else:
        notes.append("weights unknown: no safetensors folder given")

    kv_lora_rank = text.get("kv_lora_rank")
    if kv_lora_rank is not None:
        rope_dim = int(text.get("qk_rope_head_dim") or 0)
        latent = _positive_int(kv_lora_rank, path=path, key=prefix + "kv_lora_rank") + rope_dim
        notes.append(
            f"multi-head latent attention: one latent of kv_lora_rank {int(kv_lora_rank)} + "
            f"qk_rope_head_dim {rope_dim} = {latent} values per layer, no separate V "
            "(as vLLM caches it; an engine without MLA support caches full K and V)"
        )
        return _theory(
            source="hf-config",
            arch=str(text.get("model_type")) if text.get("model_type") else None,
            kv_heads_per_layer=[1] * n_layers,
            k_head_dim=latent,
            v_head_dim=0,
            kv_dtype=resolved,
            weights_bytes=weights,
            attention="mla",
            notes=notes,
            max_context_tokens=max_tokens,
        )

    n_heads = need("num_attention_heads")
    kv_heads_raw = text.get("num_key_value_heads")
    if kv_heads_raw is None:
        n_kv = n_heads
        notes.append(f"no num_key_value_heads: every one of the {n_heads} heads is cached (MHA)")
    else:
        n_kv = _positive_int(kv_heads_raw, path=path, key=prefix + "num_key_value_heads")
    head_dim_raw = text.get("head_dim")
    if head_dim_raw is not None:
        head_dim = _positive_int(head_dim_raw, path=path, key=prefix + "head_dim")
    else:
        hidden = need("hidden_size")
        if hidden % n_heads:
            raise ConfigError(
                f"hidden_size {hidden} is not a multiple of num_attention_heads {n_heads}",
                path=path,
                key=prefix + "hidden_size",
            )
        head_dim = hidden // n_heads

    n_cached, n_sliding, window, layer_notes = _hf_layers(text, n_layers)
    notes.extend(layer_notes)
    return _theory(
        source="hf-config",
        arch=str(text.get("model_type")) if text.get("model_type") else None,
        kv_heads_per_layer=[n_kv] * n_cached + [0] * (n_layers - n_cached),
        k_head_dim=head_dim,
        v_head_dim=head_dim,
        kv_dtype=resolved,
        weights_bytes=weights,
        attention=_attention_kind(n_heads, n_kv),
        upper_bound=n_sliding > 0,
        sliding_window=window if n_sliding else None,
        notes=notes,
        max_context_tokens=max_tokens,
    )


# --------------------------------------------------------------------------- safetensors


def _safetensors_header(path: Path) -> Mapping[str, Any]:
    """Loader: the JSON header of one safetensors file (8-byte little-endian length first)."""
    try:
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ConfigError("not a safetensors file: shorter than 8 bytes", path=path)
            (length,) = struct.unpack("<Q", head)
            size = path.stat().st_size
            if length > min(_SAFETENSORS_MAX_HEADER_BYTES, size - 8):
                raise ConfigError(
                    f"not a safetensors file: header length {length} for a {size}-byte file",
                    path=path,
                )
            raw = f.read(length)
    except OSError as exc:
        raise ConfigError(f"cannot read safetensors file: {exc}", path=path) from exc
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not a safetensors file: bad header JSON ({exc})", path=path) from exc
    if not isinstance(header, dict):
        raise ConfigError("not a safetensors file: header is not an object", path=path)
    return header


_FLOAT_CODES = frozenset({"F16", "BF16", "F32", "F64"})


def _tensor_bytes(name: str, info: Any, *, path: Path, float_bytes: float | None = None) -> int:
    """Bytes of one tensor; with `float_bytes`, floating-point tensors count at that size
    (the dtype the engine casts them to), integer and quantized ones as stored."""
    if not isinstance(info, dict) or "dtype" not in info or "shape" not in info:
        raise ConfigError("tensor entry lacks dtype/shape", path=path, key=name)
    n = math.prod(int(s) for s in info["shape"])
    size = SAFETENSORS_DTYPE_BYTES.get(str(info["dtype"]))
    if float_bytes is not None and str(info["dtype"]) in _FLOAT_CODES:
        _tensor_bytes(name, info, path=path)  # the stored span is still checked
        return int(n * float_bytes)
    offsets = info.get("data_offsets")
    span = (
        int(offsets[1]) - int(offsets[0])
        if isinstance(offsets, list) and len(offsets) == 2
        else None
    )
    if size is None:
        if span is None:
            raise ConfigError(f"unknown dtype {info['dtype']!r}", path=path, key=name)
        return span  # sub-byte or new dtype: the stored span is exact
    nbytes = int(n * size)
    if span is not None and span != nbytes:
        raise ConfigError(
            f"shape x dtype gives {nbytes} bytes but data_offsets span {span}", path=path, key=name
        )
    return nbytes


def _weights_from_safetensors(
    folder: Path, float_bytes: float | None = None
) -> tuple[int | None, list[str]]:
    notes: list[str] = []
    index_path = folder / SAFETENSORS_INDEX
    if index_path.is_file():
        index = _load_json(index_path, what="safetensors index")
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict):
            raise ConfigError("no weight_map", path=index_path, key="weight_map")
        files = [folder / name for name in sorted(set(map(str, weight_map.values())))]
        for f in files:
            if not f.is_file():
                raise ConfigError(f"shard {f.name} is listed but missing", path=index_path)
    else:
        files = sorted(folder.glob("*.safetensors"))
        index = None
    if not files:
        return None, notes
    total = 0
    for f in files:
        header = _safetensors_header(f)
        total += sum(
            _tensor_bytes(name, info, path=f, float_bytes=float_bytes)
            for name, info in header.items()
            if name != "__metadata__"
        )
    declared = index.get("metadata", {}).get("total_size") if isinstance(index, dict) else None
    if float_bytes is not None:
        notes.append(f"floating-point weights counted at {float_bytes:g} bytes per value")
    elif isinstance(declared, (int, float)) and int(declared) != total:
        notes.append(
            f"{SAFETENSORS_INDEX} declares total_size {int(declared)} but the headers sum to "
            f"{total}; using the headers"
        )
        log.warning("%s: total_size %s != %s from headers", index_path, declared, total)
    notes.append(f"weights: {total} bytes from {len(files)} safetensors file(s)")
    return total, notes


def weights_bytes_from_safetensors(folder: Path) -> int | None:
    """Sum of prod(shape) x dtype size over every tensor of the folder's safetensors files.

    Reads only the headers (tensors are never loaded). Uses the shards that
    `model.safetensors.index.json` names when present, else every `*.safetensors`; None when
    the folder has none.
    """
    return _weights_from_safetensors(Path(folder))[0]


# --------------------------------------------------------------------------- one entry point


def load_theory(
    *,
    hf_config: Path | None = None,
    gguf: Path | None = None,
    ollama_show: Path | None = None,
    kv_dtype: str = "auto",
    num_parallel: int = 1,
    dtype: str = "auto",
) -> Theory:
    """Loader for the CLI: theory from exactly one source file.

    With `hf_config`, the weights come from the safetensors files in the same folder, and
    `dtype` is vLLM's `--dtype` (GGUF and Ollama models are served as stored).
    """
    given = [p for p in (hf_config, gguf, ollama_show) if p is not None]
    if len(given) != 1:
        raise ConfigError("give exactly one of an HF config, a GGUF file or an Ollama show answer")
    if hf_config is not None:
        path = Path(hf_config)
        folder = path if path.is_dir() else path.parent
        return theory_from_hf_config(path, kv_dtype=kv_dtype, weights_dir=folder, dtype=dtype)
    if gguf is not None:
        return theory_from_gguf(Path(gguf), kv_dtype=kv_dtype)
    assert ollama_show is not None
    try:
        show = load_ollama_show(Path(ollama_show))
        return theory_from_ollama_show(show, kv_dtype=kv_dtype, num_parallel=num_parallel)
    except ConfigError as exc:
        if exc.path is None:
            raise ConfigError(exc.message, path=ollama_show, line=exc.line, key=exc.key) from exc
        raise
