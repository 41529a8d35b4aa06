"""A tiny random vision-language model the project generates itself (no hub, no internet).

Idefics3 architecture (what SmolVLM uses), the one vision-language family vLLM's CPU build
serves without torchvision: a SigLIP-style vision tower, a pixel-shuffle connector and a llama
language model, with the processor (Idefics3's PIL image processor), a tokenizer that knows the
vision special tokens, and a chat template that places each image where the request puts it.

The shapes are tiny but real, so vLLM expands images into exactly as many prompt tokens as the
processor config says, and sizes its KV pool and encoder cache as for a large model:

- an image is resized so that its longest edge is `size_longest_edge` (256), then split into
  tiles of `tile_edge` (64) plus one global image; each tile and the global image become
  `image_seq_len` = (64 / 16)^2 / 2^2 = 4 `<image>` tokens, framed by marker tokens;
- the language model caches 2 layers x 2 KV heads x 32 dims x (K + V) x 2 bytes = 512 bytes
  per token.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# The vision special tokens of Idefics3's processor; row/column markers go up to 6 x 6.
IMAGE_TOKEN = "<image>"
FAKE_TOKEN = "<fake_token_around_image>"
GLOBAL_TOKEN = "<global-img>"
END_OF_UTTERANCE = "<end_of_utterance>"
_GRID = 6
_ROW_COL_TOKENS = tuple(
    f"<row_{r}_col_{c}>" for r in range(1, _GRID + 1) for c in range(1, _GRID + 1)
)
_SPECIALS = ("<unk>", "<s>", "</s>")
_WORDS = ("user", "assistant", "Describe", "this", "image", "picture", "the", "a", "in", "words")

# Both plain-text content and OpenAI-style content lists: vLLM then passes the parts in order,
# so `<image>` stands exactly where the request puts the image (no separator is added).
_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['role'] }}:"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] in ('image', 'image_url') %}{{ '<image>' }}{% endif %}{% endfor %}"
    "{% endif %}{{ '<end_of_utterance>' }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@dataclass(frozen=True)
class TinyVlmShape:
    """The shape of the generated Idefics3 model and its processor settings."""

    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    text_ff: int = 256
    vocab: int = 512
    max_positions: int = 8192
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    vision_ff: int = 128
    tile_edge: int = 64  # the vision tower's image_size, the image processor's max_image_size
    patch: int = 16
    scale_factor: int = 2
    size_longest_edge: int = 256  # images are resized to this longest edge, then tiled

    @property
    def image_seq_len(self) -> int:
        """`<image>` tokens per tile: (tile / patch)^2 patches, merged scale_factor^2 at a time."""
        return (self.tile_edge // self.patch) ** 2 // self.scale_factor**2

    def kv_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        head_dim = self.text_hidden // self.text_heads
        return 2 * self.text_layers * self.text_kv_heads * head_dim * bytes_per_value


VLM_SHAPE = TinyVlmShape()


def _vlm_tokenizer(shape: TinyVlmShape) -> PreTrainedTokenizerFast:
    """A byte-level WordLevel tokenizer with the vision special tokens as single tokens.

    Every byte has its own token; `\\n\\n` is one token, as in SmolVLM's BPE tokenizer (the
    processor's formula asks the tokenizer whether it merges the pair).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vision = (IMAGE_TOKEN, FAKE_TOKEN, GLOBAL_TOKEN, END_OF_UTTERANCE, *_ROW_COL_TOKENS)
    words = [w for base in _WORDS for w in (base, "\u0120" + base)] + ["\u010a\u010a"]
    vocab: dict[str, int] = {}
    for token in (*_SPECIALS, *vision, *byte_symbols, *words):
        vocab.setdefault(token, len(vocab))
    filler = 0
    while len(vocab) < shape.vocab:
        vocab.setdefault(f"\u0120w{filler}", len(vocab))
        filler += 1
    if len(vocab) > shape.vocab:
        raise ValueError(f"vocab {shape.vocab} is too small for the byte and vision tokens")
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=list(vision),
        chat_template=_CHAT_TEMPLATE,
        model_max_length=shape.max_positions,
    )


def _config(shape: TinyVlmShape) -> object:
    from transformers import Idefics3Config, LlamaConfig

    text = LlamaConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.text_hidden,
        intermediate_size=shape.text_ff,
        num_hidden_layers=shape.text_layers,
        num_attention_heads=shape.text_heads,
        num_key_value_heads=shape.text_kv_heads,
        max_position_embeddings=shape.max_positions,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    vision = {
        "hidden_size": shape.vision_hidden,
        "intermediate_size": shape.vision_ff,
        "num_hidden_layers": shape.vision_layers,
        "num_attention_heads": shape.vision_heads,
        "image_size": shape.tile_edge,
        "patch_size": shape.patch,
    }
    return Idefics3Config(
        text_config=text.to_dict(),
        vision_config=vision,
        scale_factor=shape.scale_factor,
        pad_token_id=None,
        image_token_id=3,  # IMAGE_TOKEN's id: the first after the three specials
        tie_word_embeddings=False,
    )


def write_tiny_vlm(folder: Path, shape: TinyVlmShape = VLM_SHAPE, *, seed: int = 0) -> Path:
    """Write a random Idefics3 model (bf16 safetensors), its processor and tokenizer to `folder`.

    Needs `torch` and `transformers` (installed with vLLM). The folder is written beside its
    final place and renamed in one step, so a half-written model is never found.
    """
    import torch
    from transformers import (
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )

    torch.manual_seed(seed)
    tokenizer = _vlm_tokenizer(shape)
    if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) != 3:
        raise ValueError("the image token must have id 3 (the config names it)")
    model = Idefics3ForConditionalGeneration(_config(shape)).to(torch.bfloat16)  # type: ignore[arg-type]
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": shape.size_longest_edge},
        max_image_size={"longest_edge": shape.tile_edge},
        do_image_splitting=True,
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=shape.image_seq_len,
        chat_template=_CHAT_TEMPLATE,
    )
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    processor.save_pretrained(tmp)
    image_processor.save_pretrained(tmp)  # preprocessor_config.json, as hub checkpoints have
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder
