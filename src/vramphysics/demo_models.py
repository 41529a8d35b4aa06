"""Tiny random models the project generates itself (no hub): a GGUF for llama.cpp/Ollama.

The models are random, so their output is gibberish, but their shapes are real: llama.cpp and
vLLM allocate weights, KV cache and compute buffers for them exactly as for a large model, which
is all a memory calibration needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import gguf
    from transformers import PreTrainedTokenizerFast

_WORDS = (
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "with",
    "was",
    "on",
    "be",
    "at",
    "by",
    "this",
    "memory",
    "model",
    "context",
    "token",
    "cache",
    "GPU",
    "fast",
)


@dataclass(frozen=True)
class TinyModelShape:
    """The shape of a generated llama-architecture model (GGUF or HF)."""

    n_layers: int = 8
    n_embd: int = 256
    n_heads: int = 4
    n_kv_heads: int = 2
    n_ff: int = 512
    n_vocab: int = 512
    n_ctx_train: int = 32768

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_heads

    def kv_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        """Theory for an f16 cache: K and V, per layer, per KV head, per head dimension."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * bytes_per_value


def _vocabulary(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece-style vocabulary: special tokens, the 256 byte tokens, then words."""
    from gguf import TokenType

    tokens = ["<unk>", "<s>", "</s>"]
    types = [int(TokenType.UNKNOWN), int(TokenType.CONTROL), int(TokenType.CONTROL)]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [int(TokenType.BYTE)] * 256
    words = [f"\u2581{w}" for w in _WORDS] + list(_WORDS)
    i = 0
    while len(tokens) < n_vocab:
        tokens.append(words[i] if i < len(words) else f"\u2581w{i}")
        types.append(int(TokenType.NORMAL))
        i += 1
    if len(tokens) > n_vocab:
        raise ValueError(f"n_vocab {n_vocab} is too small for the byte vocabulary (>= 300)")
    scores = [0.0] * 259 + [-float(k) for k in range(len(tokens) - 259)]
    return tokens, scores, types


def write_tiny_gguf(
    path: Path,
    shape: TinyModelShape | None = None,
    *,
    seed: int = 0,
    name: str = "tiny-llama",
    sliding_window: int | None = None,
) -> Path:
    """Write a random model with f16 weights and a byte-fallback tokenizer to `path`.

    A llama model by default; with `sliding_window` (tokens) a Gemma 2 model instead, whose
    every other layer attends to that window only, so that llama.cpp gives it two KV caches
    (full attention and sliding window), as it does Gemma 2/3 and gpt-oss.
    """
    import gguf

    shape = shape or TinyModelShape()
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window must be >= 1, not {sliding_window}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    arch = "llama" if sliding_window is None else "gemma2"
    writer = gguf.GGUFWriter(str(tmp), arch)
    writer.add_name(name)
    _add_hparams(writer, shape)
    if sliding_window is not None:
        writer.add_sliding_window(sliding_window)
        writer.add_key_length(shape.head_dim)
        writer.add_value_length(shape.head_dim)
        writer.add_attn_logit_softcapping(50.0)
        writer.add_final_logit_softcapping(30.0)
    _add_tokenizer(writer, shape.n_vocab)
    _add_tensors(writer, shape, np.random.default_rng(seed), gemma2=sliding_window is not None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)
    return path


def _add_hparams(writer: gguf.GGUFWriter, shape: TinyModelShape) -> None:
    import gguf

    writer.add_block_count(shape.n_layers)
    writer.add_context_length(shape.n_ctx_train)
    writer.add_embedding_length(shape.n_embd)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_heads)
    writer.add_head_count_kv(shape.n_kv_heads)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(shape.n_vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)


def _add_tokenizer(writer: gguf.GGUFWriter, n_vocab: int) -> None:
    tokens, scores, types = _vocabulary(n_vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)


def _add_tensors(
    writer: gguf.GGUFWriter, shape: TinyModelShape, rng: np.random.Generator, *, gemma2: bool
) -> None:
    """The llama tensors; Gemma 2 adds a norm after attention and one after the feed-forward."""

    def weight(*dims: int) -> np.ndarray:
        return (rng.standard_normal(dims) * 0.02).astype(np.float16)

    def norm() -> np.ndarray:
        return np.ones(shape.n_embd, dtype=np.float32)

    kv_dim = shape.n_kv_heads * shape.head_dim
    writer.add_tensor("token_embd.weight", weight(shape.n_vocab, shape.n_embd))
    writer.add_tensor("output_norm.weight", norm())
    if not gemma2:  # Gemma 2 ties its output to the token embeddings
        writer.add_tensor("output.weight", weight(shape.n_vocab, shape.n_embd))
    for i in range(shape.n_layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", norm())
        writer.add_tensor(f"blk.{i}.attn_q.weight", weight(shape.n_embd, shape.n_embd))
        writer.add_tensor(f"blk.{i}.attn_k.weight", weight(kv_dim, shape.n_embd))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weight(kv_dim, shape.n_embd))
        writer.add_tensor(f"blk.{i}.attn_output.weight", weight(shape.n_embd, shape.n_embd))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", norm())
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(shape.n_ff, shape.n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(shape.n_ff, shape.n_embd))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(shape.n_embd, shape.n_ff))
        if gemma2:
            writer.add_tensor(f"blk.{i}.post_attention_norm.weight", norm())
            writer.add_tensor(f"blk.{i}.post_ffw_norm.weight", norm())


HF_SHAPE = TinyModelShape(n_layers=4)  # the HF demo model (vLLM): 2048 B/token in bf16


_SPECIALS = ("<unk>", "<s>", "</s>")
# Words of the chat template and of the benchmark prompt, so that they are single tokens.
_HF_WORDS = (
    "user",
    "assistant",
    "system",
    "Hello",
    "Explain",
    "two",
    "sentences",
    "why",
    "KV",
    "grows",
    "length",
)
_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


def _tiny_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level WordLevel tokenizer: specials, the 256 byte symbols, then whole words.

    Every byte has its own token, so any text encodes (an unknown word becomes `<unk>`, since
    WordLevel does not split words) and every token decodes to text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    words = [w for base in (*_HF_WORDS, *_WORDS) for w in (base, "\u0120" + base)]
    vocab: dict[str, int] = {}
    for token in (*_SPECIALS, *byte_symbols, *words):
        vocab.setdefault(token, len(vocab))
    filler = 0
    while len(vocab) < vocab_size:
        vocab.setdefault(f"\u0120w{filler}", len(vocab))
        filler += 1
    if len(vocab) > vocab_size:
        raise ValueError(f"vocab_size {vocab_size} is too small for the byte vocabulary")
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        chat_template=_CHAT_TEMPLATE,
        model_max_length=32768,
    )


def write_tiny_hf(folder: Path, shape: TinyModelShape = HF_SHAPE, *, seed: int = 0) -> Path:
    """Write a random llama model (bf16 safetensors) with its tokenizer into `folder`.

    Needs `torch` and `transformers` (installed with vLLM). The folder is written beside its
    final place and renamed in one step, so a half-written model is never found.
    """
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=shape.n_vocab,
        hidden_size=shape.n_embd,
        intermediate_size=shape.n_ff,
        num_hidden_layers=shape.n_layers,
        num_attention_heads=shape.n_heads,
        num_key_value_heads=shape.n_kv_heads,
        max_position_embeddings=shape.n_ctx_train,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).bfloat16()  # save_pretrained records dtype bfloat16
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    _tiny_tokenizer(shape.n_vocab).save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder
