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

Modules: `common` (the Theory record, cache dtypes, the formula), `gguf`, `hf` (config.json),
`ollama` (/api/show), `safetensors` (weights bytes) and `load` (one entry point for the CLI).
The vision side: `vision` (the prompt tokens an image or a video becomes, from the processor's
settings), `vision_load` (those settings from preprocessor_config.json and friends) and
`vision_weights` (the vision tower's bytes vs the language model's, from the headers);
`predict_media_tokens` is the one call for "how many tokens does this image take in this folder".
"""

from vramphysics.theory.common import KV_DTYPES, Theory, kv_dtype_bytes, resolve_kv_dtype
from vramphysics.theory.gguf import theory_from_gguf
from vramphysics.theory.hf import load_hf_config, theory_from_hf_config
from vramphysics.theory.load import load_theory
from vramphysics.theory.ollama import load_ollama_show, theory_from_ollama_show
from vramphysics.theory.safetensors import (
    SAFETENSORS_DTYPE_BYTES,
    SAFETENSORS_INDEX,
    weights_bytes_from_safetensors,
)
from vramphysics.theory.vision_load import predict_media_tokens

__all__ = [
    "kv_dtype_bytes",
    "KV_DTYPES",
    "load_hf_config",
    "load_ollama_show",
    "load_theory",
    "predict_media_tokens",
    "resolve_kv_dtype",
    "SAFETENSORS_DTYPE_BYTES",
    "SAFETENSORS_INDEX",
    "Theory",
    "theory_from_gguf",
    "theory_from_hf_config",
    "theory_from_ollama_show",
    "weights_bytes_from_safetensors",
]
