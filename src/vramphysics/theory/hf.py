"""Theory from a Hugging Face `config.json`, as vLLM serves it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vramphysics.errors import ConfigError
from vramphysics.theory.common import (
    _KV_DTYPES,
    _MODEL_DTYPES,
    Theory,
    _attention_kind,
    _load_json,
    _optional_positive_int,
    _positive_int,
    _sliding_note,
    _theory,
    resolve_kv_dtype,
)
from vramphysics.theory.safetensors import _weights_from_safetensors

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


@dataclass(frozen=True)
class _HfKeys:
    """The language model's keys, and how an error names one (`prefix` + key, in `path`)."""

    text: Mapping[str, Any]
    path: Path | None
    prefix: str

    def positive_int(self, key: str, value: Any) -> int:
        return _positive_int(value, path=self.path, key=self.prefix + key)

    def need(self, key: str) -> int:
        value = self.text.get(key)
        if value is None:
            raise ConfigError(
                "missing (needed for the KV-cache size)", path=self.path, key=self.prefix + key
            )
        return self.positive_int(key, value)


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
    keys = _HfKeys(text, path, prefix)
    n_layers = keys.need("num_hidden_layers")
    model_dtype = _model_dtype(cfg, text)
    served = _serving_dtype(model_dtype, dtype, notes)
    resolved = _hf_kv_dtype(kv_dtype, served, notes)
    common: dict[str, Any] = dict(
        source="hf-config",
        arch=str(text.get("model_type")) if text.get("model_type") else None,
        kv_dtype=resolved,
        max_context_tokens=_optional_positive_int(text.get("max_position_embeddings")),
        weights_bytes=_hf_weights(weights_dir, served, model_dtype, notes),
    )
    latent = _hf_mla_latent(keys, notes)
    if latent is not None:
        return _theory(
            kv_heads_per_layer=[1] * n_layers,
            k_head_dim=latent,
            v_head_dim=0,
            attention="mla",
            notes=notes,
            **common,
        )
    n_heads, n_kv, head_dim = _hf_heads(keys, notes)
    n_cached, n_sliding, window, layer_notes = _hf_layers(text, n_layers)
    notes.extend(layer_notes)
    return _theory(
        kv_heads_per_layer=[n_kv] * n_cached + [0] * (n_layers - n_cached),
        k_head_dim=head_dim,
        v_head_dim=head_dim,
        attention=_attention_kind(n_heads, n_kv),
        upper_bound=n_sliding > 0,
        sliding_window=window if n_sliding else None,
        notes=notes,
        **common,
    )


def _hf_kv_dtype(kv_dtype: str, served: str | None, notes: list[str]) -> str:
    """The cache dtype; `auto` follows the served dtype, f16 when unknown (a note says so)."""
    resolved = resolve_kv_dtype(kv_dtype, served)
    if kv_dtype.strip().lower() == "auto":
        if served is None:
            notes.append("no torch_dtype in the config: auto KV dtype taken as f16")
        elif served.strip().lower().removeprefix("torch.") not in _MODEL_DTYPES:
            notes.append(f"torch_dtype {served!r} is not a 16/32-bit float: auto KV taken as f16")
    return resolved


def _hf_weights(
    weights_dir: Path | None, served: str | None, model_dtype: str | None, notes: list[str]
) -> int | None:
    """Weights bytes from the safetensors headers in `weights_dir`, as served; None unknown."""
    if weights_dir is None:
        notes.append("weights unknown: no safetensors folder given")
        return None
    wide_as = (  # floating-point weights as served, when that is not as stored
        _KV_DTYPES[resolve_kv_dtype(served)][1]
        if served is not None and served != model_dtype
        else None
    )
    weights, weight_notes = _weights_from_safetensors(Path(weights_dir), float_bytes=wide_as)
    notes.extend(weight_notes)
    if weights is None:
        notes.append(f"weights unknown: no *.safetensors in {weights_dir}")
    return weights


def _hf_mla_latent(keys: _HfKeys, notes: list[str]) -> int | None:
    """Values per layer of a multi-head latent attention model (`kv_lora_rank`), else None."""
    kv_lora_rank = keys.text.get("kv_lora_rank")
    if kv_lora_rank is None:
        return None
    rope_dim = int(keys.text.get("qk_rope_head_dim") or 0)
    latent = keys.positive_int("kv_lora_rank", kv_lora_rank) + rope_dim
    notes.append(
        f"multi-head latent attention: one latent of kv_lora_rank {int(kv_lora_rank)} + "
        f"qk_rope_head_dim {rope_dim} = {latent} values per layer, no separate V "
        "(as vLLM caches it; an engine without MLA support caches full K and V)"
    )
    return latent


def _hf_heads(keys: _HfKeys, notes: list[str]) -> tuple[int, int, int]:
    """(attention heads, KV heads, head dimension); an explicit `head_dim` wins."""
    n_heads = keys.need("num_attention_heads")
    kv_heads_raw = keys.text.get("num_key_value_heads")
    if kv_heads_raw is None:
        n_kv = n_heads
        notes.append(f"no num_key_value_heads: every one of the {n_heads} heads is cached (MHA)")
    else:
        n_kv = keys.positive_int("num_key_value_heads", kv_heads_raw)
    head_dim_raw = keys.text.get("head_dim")
    if head_dim_raw is not None:
        return n_heads, n_kv, keys.positive_int("head_dim", head_dim_raw)
    hidden = keys.need("hidden_size")
    if hidden % n_heads:
        raise ConfigError(
            f"hidden_size {hidden} is not a multiple of num_attention_heads {n_heads}",
            path=keys.path,
            key=keys.prefix + "hidden_size",
        )
    return n_heads, n_kv, hidden // n_heads
