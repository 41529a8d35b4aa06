"""theory.py: every figure here is worked out by hand from the model's shape.

KV bytes per token = layers x KV heads x (K dim + V dim) x bytes per value, for one sequence.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import yaml
from safetensors.numpy import save_file

from vramphysics.demo_models import TinyModelShape, write_tiny_gguf
from vramphysics.errors import ConfigError
from vramphysics.theory import (
    Theory,
    kv_dtype_bytes,
    load_hf_config,
    load_ollama_show,
    load_theory,
    resolve_kv_dtype,
    theory_from_gguf,
    theory_from_hf_config,
    theory_from_ollama_show,
    weights_bytes_from_safetensors,
)

FIXTURES = Path(__file__).parent / "fixtures" / "theory"


def hf(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.config.json").read_text())


def show(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"ollama-show-{name}.json").read_text())


# --------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        ("fp16", 2),
        ("f16", 2),
        ("float16", 2),
        ("bf16", 2),
        ("bfloat16", 2),
        ("fp8", 1),
        ("fp8_e4m3", 1),
        ("fp8_e5m2", 1),
        ("q8_0", 34 / 32),  # 32 int8 values + one f16 scale per block
        ("q4_0", 18 / 32),  # 32 4-bit values (16 bytes) + one f16 scale
        ("f32", 4),
        ("fp32", 4),
        ("Q8_0", 1.0625),  # case does not matter
    ],
)
def test_kv_dtype_bytes(dtype: str, expected: float) -> None:
    assert kv_dtype_bytes(dtype) == expected


@pytest.mark.parametrize(
    ("model_dtype", "expected", "name"),
    [
        ("bfloat16", 2, "bf16"),
        ("float16", 2, "f16"),
        ("float32", 4, "f32"),
        ("torch.float32", 4, "f32"),
        (None, 2, "f16"),
    ],
)
def test_auto_is_the_models_dtype(model_dtype: str | None, expected: float, name: str) -> None:
    assert kv_dtype_bytes("auto", model_dtype) == expected
    assert resolve_kv_dtype("auto", model_dtype) == name


def test_unknown_kv_dtype_names_it_and_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as exc:
        kv_dtype_bytes("int3")
    assert "'int3'" in str(exc.value)
    assert "q8_0" in str(exc.value) and "fp8_e4m3" in str(exc.value)


# --------------------------------------------------------------------------- GGUF


def test_gguf_tiny_default_shape(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    t = theory_from_gguf(path)
    # 8 layers, 4 heads, 2 KV heads, embd 256 -> head_dim 64; f16 (llama.cpp's default):
    # 2 (K, V) x 8 x 2 x 64 x 2 bytes
    assert t.kv_bytes_per_token == 2 * 8 * 2 * 64 * 2 == 4096
    assert (t.n_layers, t.n_kv_heads, t.k_head_dim, t.v_head_dim) == (8, 2, 64, 64)
    assert (t.source, t.arch, t.kv_dtype, t.attention) == ("gguf", "llama", "f16", "gqa")
    assert t.upper_bound is False
    # Weights: f16 matrices, f32 norms. vocab 512, embd 256, ff 512, kv_dim 2 x 64 = 128.
    token_embd = output = 512 * 256 * 2
    output_norm = 256 * 4
    per_layer = (
        256 * 4  # attn_norm
        + 256 * 256 * 2  # attn_q
        + 128 * 256 * 2  # attn_k
        + 128 * 256 * 2  # attn_v
        + 256 * 256 * 2  # attn_output
        + 256 * 4  # ffn_norm
        + 3 * 512 * 256 * 2  # ffn_gate, ffn_up, ffn_down
    )
    assert per_layer == 1_181_696
    assert t.weights_bytes == token_embd + output + output_norm + 8 * per_layer == 9_978_880
    assert t.total_bytes(2048) == 9_978_880 + 2048 * 4096


def test_gguf_other_shape_and_quantized_cache(tmp_path: Path) -> None:
    shape = TinyModelShape(n_layers=4, n_embd=256, n_heads=4, n_kv_heads=4, n_vocab=512)
    t = theory_from_gguf(write_tiny_gguf(tmp_path / "mha.gguf", shape), kv_dtype="q8_0")
    # MHA: 4 layers x 4 heads x (64 + 64) = 2048 values, q8_0 = 34 bytes per 32 values
    assert t.kv_values_per_token == 4 * 4 * 128 == 2048
    assert t.kv_bytes_per_token == 2048 * 34 / 32 == 2176
    assert t.attention == "mha"
    assert theory_from_gguf(tmp_path / "mha.gguf", kv_dtype="q4_0").kv_bytes_per_token == 1152


def test_gguf_per_layer_kv_heads_and_sliding_window(tmp_path: Path) -> None:
    path = tmp_path / "hybrid.gguf"
    w = gguf.GGUFWriter(str(path), "lfm2")
    w.add_block_count(4)
    w.add_head_count(8)
    w.add_head_count_kv([0, 2, 0, 2])  # recurrent layers cache nothing per token
    w.add_key_length(128)
    w.add_value_length(64)
    w.add_sliding_window(512)
    w.add_tensor("output_norm.weight", np.ones(100, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    t = theory_from_gguf(path)
    # (0 + 2 + 0 + 2) heads x (128 + 64) x 2 bytes
    assert t.kv_bytes_per_token == 4 * 192 * 2 == 1536
    assert t.n_kv_heads == 2
    assert t.weights_bytes == 400
    assert t.upper_bound is True and t.sliding_window == 512
    assert any("upper bound" in n for n in t.notes)


def test_gguf_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such GGUF file") as exc:
        theory_from_gguf(tmp_path / "absent.gguf")
    assert exc.value.path == tmp_path / "absent.gguf"
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"PK\x03\x04 not a model at all")
    with pytest.raises(ConfigError, match="not a readable GGUF") as exc:
        theory_from_gguf(bad)
    assert exc.value.path == bad


# --------------------------------------------------------------------------- HF config.json


def test_llama_3_1_8b_gqa_bf16_and_other_cache_dtypes() -> None:
    cfg = hf("llama-3.1-8b")
    t = theory_from_hf_config(cfg)
    # 32 layers x 8 KV heads x (128 + 128) x 2 bytes (torch_dtype bfloat16)
    assert t.kv_bytes_per_token == 32 * 8 * 256 * 2 == 131_072
    assert (t.kv_dtype, t.attention, t.upper_bound) == ("bf16", "gqa", False)
    assert theory_from_hf_config(cfg, kv_dtype="fp8").kv_bytes_per_token == 65_536
    assert theory_from_hf_config(cfg, kv_dtype="q8_0").kv_bytes_per_token == 65_536 * 34 / 32
    assert theory_from_hf_config(cfg, kv_dtype="q4_0").kv_bytes_per_token == 36_864
    assert theory_from_hf_config(cfg, kv_dtype="fp32").kv_bytes_per_token == 262_144


def test_qwen2_5_7b_window_not_applied() -> None:
    t = theory_from_hf_config(hf("qwen2.5-7b"))
    # 28 layers x 4 KV heads x 256 x 2; sliding_window 131072 but use_sliding_window false
    assert t.kv_bytes_per_token == 28 * 4 * 256 * 2 == 57_344
    assert t.upper_bound is False and t.sliding_window is None
    assert any("use_sliding_window is false" in n for n in t.notes)


def test_mistral_7b_v0_1_sliding_window_is_an_upper_bound() -> None:
    t = theory_from_hf_config(hf("mistral-7b-v0.1"))
    assert t.kv_bytes_per_token == 32 * 8 * 256 * 2 == 131_072
    assert t.upper_bound is True and t.sliding_window == 4096
    assert any("32 of 32 layers" in n and "upper bound" in n for n in t.notes)


def test_gemma_2_explicit_head_dim_and_alternating_window() -> None:
    t = theory_from_hf_config(hf("gemma-2-2b-it"))
    # head_dim 256, not hidden 2304 / 8 heads = 288: 26 x 4 x (256 + 256) x 2
    assert t.k_head_dim == 256
    assert t.kv_bytes_per_token == 26 * 4 * 512 * 2 == 106_496
    assert t.upper_bound is True
    assert any("13 of 26 layers" in n for n in t.notes)


def test_gemma_3_sparse_text_config_takes_transformers_defaults() -> None:
    t = theory_from_hf_config(hf("gemma-3-4b-it"))
    # text_config gives 34 layers and window 1024; heads 8, KV heads 4, head_dim 256 are
    # Gemma3TextConfig's defaults: 34 x 4 x 512 x 2 bytes (bf16 at the top level)
    assert t.kv_bytes_per_token == 34 * 4 * 512 * 2 == 139_264
    assert t.arch == "gemma3_text"
    # every 6th layer is global: 34 // 6 = 5 global, 29 sliding
    assert any("29 of 34 layers" in n for n in t.notes)
    assert any("num_key_value_heads" in n and "defaults" in n for n in t.notes)


def test_no_num_key_value_heads_is_mha() -> None:
    t = theory_from_hf_config(hf("llama-7b"))
    # 32 layers x 32 heads x (128 + 128) x 2 bytes (float16)
    assert t.kv_bytes_per_token == 32 * 32 * 256 * 2 == 524_288
    assert (t.n_kv_heads, t.kv_dtype, t.attention) == (32, "f16", "mha")


def test_gpt2_spelling() -> None:
    t = theory_from_hf_config(hf("gpt2"))
    # n_layer 12, n_head 12, n_embd 768 -> head_dim 64; no torch_dtype -> f16
    assert t.kv_bytes_per_token == 12 * 12 * 128 * 2 == 36_864


def test_qwen2_vl_reads_the_top_level_not_vision_config() -> None:
    t = theory_from_hf_config(hf("qwen2-vl-7b-instruct"))
    # vision_config also has hidden_size 3584 and num_heads 16: not the language model
    assert t.kv_bytes_per_token == 28 * 4 * 256 * 2 == 57_344
    assert t.upper_bound is False


def test_llava_text_config_naming_only_the_model_type() -> None:
    t = theory_from_hf_config(hf("llava-1.5-7b-hf"))
    # Vicuna-7B under LlamaConfig defaults: 32 layers x 32 heads x 256 x 2 bytes (float16)
    assert t.kv_bytes_per_token == 524_288
    assert t.arch == "llama"


def test_deepseek_v2_lite_mla_one_latent_per_layer() -> None:
    cfg = hf("deepseek-v2-lite-chat")
    t = theory_from_hf_config(cfg)
    # 27 layers x (kv_lora_rank 512 + qk_rope_head_dim 64) x 2 bytes; no factor 2 for K, V.
    # num_key_value_heads 16 and head_dim 64 in the same file are ignored.
    assert t.kv_bytes_per_token == 27 * 576 * 2 == 31_104
    assert (t.attention, t.n_kv_heads, t.k_head_dim, t.v_head_dim) == ("mla", 1, 576, 0)
    assert theory_from_hf_config(cfg, kv_dtype="fp8").kv_bytes_per_token == 27 * 576 == 15_552


def test_llama_class_defaults_fill_a_truncated_config_and_say_so() -> None:
    cfg = hf("llama-3.1-8b")
    del cfg["num_hidden_layers"]
    t = theory_from_hf_config(cfg)
    assert t.n_layers == 32  # LlamaConfig's default, as transformers and vLLM would read it
    assert any("num_hidden_layers=32" in n for n in t.notes)


def test_head_dim_null_falls_back_to_hidden_over_heads() -> None:
    cfg = hf("llama-3.1-8b") | {"head_dim": None}
    assert theory_from_hf_config(cfg).k_head_dim == 4096 // 32 == 128


def test_float32_checkpoint_is_served_in_16_bits_by_vllm(tmp_path: Path) -> None:
    cfg = hf("llama-3.1-8b") | {"torch_dtype": "float32"}
    # vLLM's --dtype auto serves float32 in 16 bits: 32 x 8 x (128 + 128) x 2 bytes
    assert theory_from_hf_config(cfg).kv_bytes_per_token == 131_072
    assert any("16 bits" in n for n in theory_from_hf_config(cfg).notes)
    # served in 32 bits only when asked
    assert theory_from_hf_config(cfg, dtype="float32").kv_bytes_per_token == 262_144
    # an explicit cache dtype is kept
    assert theory_from_hf_config(cfg, kv_dtype="f32").kv_bytes_per_token == 262_144
    # weights: float tensors at 2 bytes per value, integer ones as stored
    folder = tmp_path / "m"
    folder.mkdir()
    save_file(
        {
            "w": np.zeros((100, 16), dtype=np.float32),  # 1600 values: 6400 stored, 3200 served
            "idx": np.zeros(10, dtype=np.int64),  # 80 bytes either way
        },
        str(folder / "model.safetensors"),
    )
    assert theory_from_hf_config(cfg, weights_dir=folder).weights_bytes == 3200 + 80
    assert theory_from_hf_config(cfg, weights_dir=folder, dtype="float32").weights_bytes == 6480
    bf16 = hf("llama-3.1-8b") | {"torch_dtype": "bfloat16"}
    assert theory_from_hf_config(bf16, weights_dir=folder).weights_bytes == 6480  # as stored
    with pytest.raises(ConfigError, match="unknown dtype 'float8x'"):
        theory_from_hf_config(cfg, dtype="float8x")


def test_max_position_embeddings_is_the_models_maximum_context() -> None:
    assert theory_from_hf_config(hf("llama-3.1-8b")).max_context_tokens == 131_072
    assert (
        theory_from_hf_config(
            hf("llama-3.1-8b") | {"max_position_embeddings": None}
        ).max_context_tokens
        is None
    )


DEEPSEEK_V2_LITE_GGUF = {
    "general.architecture": "deepseek2",
    "deepseek2.block_count": 27,
    "deepseek2.context_length": 163_840,
    "deepseek2.embedding_length": 2048,
    "deepseek2.attention.head_count": 16,
    "deepseek2.attention.kv_lora_rank": 512,
    "deepseek2.rope.dimension_count": 64,
}
# converted before llama.cpp's MLA support: full K (128 + 64) and V (128) per head
OLD_MLA = DEEPSEEK_V2_LITE_GGUF | {
    "deepseek2.attention.head_count_kv": 16,
    "deepseek2.attention.key_length": 192,
    "deepseek2.attention.value_length": 128,
}
# converted for MLA: one KV head of key_length 512 + 64, with the per-head lengths as *_mla
NEW_MLA = DEEPSEEK_V2_LITE_GGUF | {
    "deepseek2.attention.head_count_kv": 1,
    "deepseek2.attention.key_length": 576,
    "deepseek2.attention.value_length": 512,
    "deepseek2.attention.key_length_mla": 192,
    "deepseek2.attention.value_length_mla": 128,
}


@pytest.mark.parametrize("meta", [OLD_MLA, NEW_MLA], ids=["old-conversion", "mla-conversion"])
def test_gguf_mla_caches_one_latent_per_layer(meta: dict[str, Any]) -> None:
    t = theory_from_ollama_show(meta)  # bare GGUF keys: the GGUF path
    # 27 layers x (kv_lora_rank 512 + RoPE 64) x 2 bytes, not 27 x 16 x (192 + 128) x 2
    assert t.kv_bytes_per_token == 27 * 576 * 2 == 31_104
    assert (t.attention, t.k_head_dim, t.v_head_dim) == ("mla", 576, 0)
    assert t.max_context_tokens == 163_840
    assert any("multi-head latent attention" in n for n in t.notes)
    assert any("key_length_mla" in n for n in t.notes) == (meta is OLD_MLA)
    no_rope = {k: v for k, v in meta.items() if k != "deepseek2.rope.dimension_count"}
    if meta is NEW_MLA:  # the RoPE part from key_length - kv_lora_rank
        assert theory_from_ollama_show(no_rope).kv_bytes_per_token == 31_104


def test_linear_attention_layers_are_not_counted_per_token() -> None:
    cfg = {
        "model_type": "qwen3_next",
        "num_hidden_layers": 8,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "head_dim": 256,
        "layer_types": (["linear_attention"] * 3 + ["full_attention"]) * 2,
        "torch_dtype": "bfloat16",
    }
    t = theory_from_hf_config(cfg)
    # only the 2 full-attention layers: 2 x 2 x 512 x 2 bytes
    assert t.kv_bytes_per_token == 2 * 2 * 512 * 2 == 4096
    assert t.n_layers == 8
    assert any("6 of 8 layers" in n for n in t.notes)


def test_missing_key_names_file_and_key(tmp_path: Path) -> None:
    cfg = hf("qwen2.5-7b")  # no class defaults are filled in for qwen2
    del cfg["num_hidden_layers"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError) as exc:
        theory_from_hf_config(path)
    assert exc.value.path == path and exc.value.key == "num_hidden_layers"
    # a vision-language model names the key inside text_config
    vl = hf("gemma-3-4b-it")
    del vl["text_config"]["num_hidden_layers"]
    vl["text_config"]["model_type"] = "unknown_text"
    with pytest.raises(ConfigError) as exc:
        theory_from_hf_config(vl)
    assert exc.value.key == "text_config.num_hidden_layers"


def test_invalid_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{\n  "num_hidden_layers": 32,\n  oops\n}')
    with pytest.raises(ConfigError) as exc:
        load_hf_config(tmp_path)
    assert exc.value.path == path and exc.value.line == 3


# --------------------------------------------------------------------------- safetensors


def _write_shards(folder: Path) -> int:
    """Two shards and an index; returns the bytes worked out by hand."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "embed.weight": np.zeros((100, 16), dtype=np.float16),  # 100 x 16 x 2 = 3200
            "norm.weight": np.zeros(16, dtype=np.float32),  # 16 x 4 = 64
        },
        str(folder / "model-00001-of-00002.safetensors"),
        metadata={"format": "pt"},
    )
    save_file(
        {
            "layer.q": np.zeros((16, 16), dtype=np.int8),  # 256
            "layer.scale": np.zeros((4, 3), dtype=np.int64),  # 12 x 8 = 96
            "layer.mask": np.zeros(7, dtype=np.bool_),  # 7
        },
        str(folder / "model-00002-of-00002.safetensors"),
    )
    return 3200 + 64 + 256 + 96 + 7


def test_safetensors_weights_are_exact(tmp_path: Path) -> None:
    expected = _write_shards(tmp_path / "m")
    assert expected == 3623
    assert weights_bytes_from_safetensors(tmp_path / "m") == 3623


def test_safetensors_index_picks_the_shards(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    _write_shards(folder)
    save_file({"stray": np.zeros(1000, dtype=np.float32)}, str(folder / "unrelated.safetensors"))
    index: dict[str, Any] = {
        "metadata": {"total_size": 3623},
        "weight_map": {
            "embed.weight": "model-00001-of-00002.safetensors",
            "norm.weight": "model-00001-of-00002.safetensors",
            "layer.q": "model-00002-of-00002.safetensors",
        },
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert weights_bytes_from_safetensors(folder) == 3623  # the stray 4000 bytes are not counted
    index["metadata"]["total_size"] = 9999
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    t = theory_from_hf_config(hf("qwen2.5-7b"), weights_dir=folder)
    assert t.weights_bytes == 3623  # the headers win over a wrong total_size, and a note says so
    assert any("declares total_size 9999" in n for n in t.notes)
    index["weight_map"]["extra"] = "model-00003-of-00003.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ConfigError, match="model-00003-of-00003.safetensors"):
        weights_bytes_from_safetensors(folder)


def test_safetensors_none_when_absent_and_error_when_corrupt(tmp_path: Path) -> None:
    assert weights_bytes_from_safetensors(tmp_path) is None
    bad = tmp_path / "model.safetensors"
    bad.write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(ConfigError, match="header length") as exc:
        weights_bytes_from_safetensors(tmp_path)
    assert exc.value.path == bad


def test_hf_config_with_its_safetensors_gives_a_total(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    _write_shards(folder)
    (folder / "config.json").write_text(json.dumps(hf("qwen2.5-7b")))
    t = load_theory(hf_config=folder / "config.json")
    assert t.weights_bytes == 3623
    assert t.total_bytes(1000) == 3623 + 1000 * 57_344
    assert t.total_bytes(1000, n_seq=2) == 3623 + 2000 * 57_344


# --------------------------------------------------------------------------- Ollama /api/show


def test_ollama_llama3_1_with_tensor_list() -> None:
    t = theory_from_ollama_show(show("llama3.1-dolphin3"))
    # key_length = value_length = 128: 32 x 8 x 256 x 2 bytes (f16, Ollama's default)
    assert t.kv_bytes_per_token == 131_072
    assert (t.source, t.arch, t.kv_dtype) == ("ollama-show", "llama", "f16")
    # Weights from the listed tensors (GGML sizes: Q4_K 144 B / 256, Q6_K 210 B / 256):
    rope_freqs = 64 * 4
    token_embd = 4096 * 128258 // 256 * 144
    block = (
        2 * 4096 * 4  # attn_norm, ffn_norm (F32)
        + 14336 * 4096 // 256 * 210  # ffn_down Q6_K
        + 2 * 4096 * 14336 // 256 * 144  # ffn_gate, ffn_up Q4_K
        + 4096 * 1024 // 256 * 144  # attn_k Q4_K
        + 2 * 4096 * 4096 // 256 * 144  # attn_output, attn_q Q4_K
        + 4096 * 1024 // 256 * 210  # attn_v Q6_K
    )
    assert t.weights_bytes == rope_freqs + token_embd + 2 * block == 573_379_328


def test_ollama_num_parallel_multiplies_the_total() -> None:
    t = theory_from_ollama_show(show("llama3.1-dolphin3"), kv_dtype="q8_0", num_parallel=4)
    assert t.kv_bytes_per_token == 65_536 * 34 / 32 == 69_632  # per sequence
    assert t.n_seq == 4
    assert t.total_bytes(8192) == 573_379_328 + 8192 * 4 * 69_632
    assert any("num_parallel" in n for n in t.notes)


def test_ollama_gemma3_sliding_window_and_no_tensors() -> None:
    t = theory_from_ollama_show(show("gemma3"))
    # gemma3.* keys, not gemma3.vision.*: 34 x 4 x (256 + 256) x 2
    assert t.kv_bytes_per_token == 139_264
    assert t.upper_bound is True and t.sliding_window == 1024
    assert t.weights_bytes is None and t.total_bytes(4096) is None
    assert any("parameter_count" in n for n in t.notes)


def test_ollama_qwen2_5_coder_and_bare_model_info() -> None:
    doc = show("qwen2.5-coder-7b")
    assert theory_from_ollama_show(doc).kv_bytes_per_token == 57_344
    assert theory_from_ollama_show(doc["model_info"]).kv_bytes_per_token == 57_344
    no_kv = {k: v for k, v in doc["model_info"].items() if "head_count_kv" not in k}
    # no head_count_kv: every head cached, 28 x 28 x 256 x 2
    assert theory_from_ollama_show(no_kv).kv_bytes_per_token == 401_408


def test_ollama_errors() -> None:
    with pytest.raises(ConfigError) as exc:
        theory_from_ollama_show({"details": {}})
    assert exc.value.key == "model_info"
    info = show("qwen2.5-coder-7b")
    del info["model_info"]["qwen2.block_count"]
    with pytest.raises(ConfigError) as exc:
        theory_from_ollama_show(info)
    assert exc.value.key == "model_info.qwen2.block_count"


def test_load_ollama_show_from_file_or_text(tmp_path: Path) -> None:
    path = FIXTURES / "ollama-show-gemma3.json"
    assert load_ollama_show(path)["details"]["family"] == "gemma3"
    assert load_ollama_show(path.read_text())["details"]["family"] == "gemma3"
    bad = tmp_path / "show.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object") as exc:
        load_ollama_show(bad)
    assert exc.value.path == bad
    with pytest.raises(ConfigError) as exc:
        load_theory(ollama_show=tmp_path / "absent.json")
    assert exc.value.path == tmp_path / "absent.json"


# --------------------------------------------------------------------------- the record


def test_to_dict_is_json_and_yaml_safe() -> None:
    t = theory_from_hf_config(hf("mistral-7b-v0.1"))
    d = t.to_dict()
    for key in (
        "kv_bytes_per_token",
        "weights_bytes",
        "kv_dtype",
        "source",
        "upper_bound",
        "n_layers",
        "n_kv_heads",
        "k_head_dim",
        "v_head_dim",
        "notes",
    ):
        assert key in d
    assert json.loads(json.dumps(d)) == d
    assert yaml.safe_load(yaml.safe_dump(d)) == d
    assert Theory(**{**d, "notes": tuple(d["notes"])}) == t


def test_total_is_none_without_weights_and_kv_scales_linearly() -> None:
    t = theory_from_hf_config(hf("llama-3.1-8b"))
    assert t.total_bytes(8192) is None
    assert t.kv_bytes(8192) == 8192 * 131_072 == 2**30  # 1 GiB at 8k
    assert t.kv_bytes(8192, n_seq=3) == 3 * 2**30
