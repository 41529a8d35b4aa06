"""Loaders: a vision-language model's processor settings from its config files.

`load_vision_processor` reads config.json, the preprocessor config beside it (or the one
given), and for Idefics3 processor_config.json (`image_seq_len`) and tokenizer.json (whether
two newlines are one token). A missing preprocessor config or a wrong field is a ConfigError
naming the file and the key; a key left out takes transformers' class default, and a note
says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vramphysics.errors import ConfigError
from vramphysics.theory.common import _load_json, _positive_int
from vramphysics.theory.vision import (
    _IDEFICS3_DEFAULT_LONGEST_EDGE,
    _IDEFICS3_DEFAULT_TILE_EDGE,
    _QWEN_DEFAULT_MAX_PIXELS,
    _QWEN_DEFAULT_MIN_PIXELS,
    IDEFICS3_TYPES,
    QWEN_TYPES,
    Idefics3Processor,
    QwenVlProcessor,
    VisionProcessor,
    image_tokens,
    video_tokens,
)

PREPROCESSOR_CONFIG = "preprocessor_config.json"
VIDEO_PREPROCESSOR_CONFIG = "video_preprocessor_config.json"


def _sub(doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = doc.get(key)
    return value if isinstance(value, Mapping) else {}


def load_vision_processor(
    hf_config: Path, preprocessor_config: Path | None = None
) -> VisionProcessor:
    """Loader: the processor settings from the preprocessor config beside `hf_config` (a
    config.json or its folder), or from `preprocessor_config` when given."""
    from vramphysics.theory.hf import load_hf_config

    hf_config = Path(hf_config)
    config_path = hf_config / "config.json" if hf_config.is_dir() else hf_config
    folder = config_path.parent
    cfg = load_hf_config(config_path)
    pre_path = Path(preprocessor_config) if preprocessor_config else folder / PREPROCESSOR_CONFIG
    if not pre_path.is_file():
        hint = "" if preprocessor_config else " beside the config: give --preprocessor-config"
        raise ConfigError(f"no preprocessor config{hint}", path=pre_path)
    pre = _json_object(pre_path, "preprocessor config")
    model_type = _family(cfg, pre, config_path, pre_path)
    if model_type in QWEN_TYPES:
        video_path = folder / VIDEO_PREPROCESSOR_CONFIG
        video = (
            _json_object(video_path, "video preprocessor config") if video_path.is_file() else None
        )
        return qwen_processor(cfg, pre, video, model_type=model_type, path=pre_path)
    processor_path = folder / "processor_config.json"
    processor = _json_object(processor_path, "processor config") if processor_path.is_file() else {}
    merges = _tokenizer_merges_newlines(folder / "tokenizer.json")
    return idefics3_processor(
        cfg, pre, processor, model_type=model_type, newline_pair_merged=merges, path=pre_path
    )


def _json_object(path: Path, what: str) -> Mapping[str, Any]:
    doc = _load_json(path, what=what)
    if not isinstance(doc, dict):
        raise ConfigError("expected a JSON object", path=path)
    return doc


def _family_of(cfg: Mapping[str, Any], pre: Mapping[str, Any]) -> str | None:
    """The family this module has a theory for, by model_type or image_processor_type."""
    model_type = str(cfg.get("model_type") or "")
    if model_type in QWEN_TYPES + IDEFICS3_TYPES:
        return model_type
    kind = str(pre.get("image_processor_type") or "")
    if kind.startswith("Qwen2VLImageProcessor"):
        return "qwen2_vl"
    if kind.startswith(("Idefics3ImageProcessor", "SmolVLMImageProcessor")):
        return "idefics3"
    return None


def _family(
    cfg: Mapping[str, Any], pre: Mapping[str, Any], config_path: Path, pre_path: Path
) -> str:
    family = _family_of(cfg, pre)
    if family is not None:
        return family
    raise ConfigError(
        f"no image-token theory for model_type {str(cfg.get('model_type') or '')!r} / "
        f"image_processor_type {str(pre.get('image_processor_type') or '')!r} "
        f"(known: {', '.join(QWEN_TYPES + IDEFICS3_TYPES)})",
        path=config_path,
        key="model_type",
    )


def _pixels(doc: Mapping[str, Any], which: str, default: int, path: Path, notes: list[str]) -> int:
    """min_pixels / max_pixels: the top-level key, else size.shortest_edge / longest_edge
    (transformers' newer spelling) or size.min_pixels / max_pixels."""
    size = _sub(doc, "size")
    edge = "shortest_edge" if which == "min_pixels" else "longest_edge"
    for key, value in (
        (which, doc.get(which)),
        (f"size.{edge}", size.get(edge)),
        (f"size.{which}", size.get(which)),
    ):
        if value is not None:
            return _positive_int(value, path=path, key=key)
    notes.append(f"{path.name} leaves out {which}: transformers' default {default} used")
    return default


def _int_key(
    doc: Mapping[str, Any], key: str, fallback: Any, default: int, path: Path, notes: list[str]
) -> int:
    value = doc.get(key, fallback)
    if value is None:
        notes.append(f"{path.name} leaves out {key}: transformers' default {default} used")
        return default
    return _positive_int(value, path=path, key=key)


def qwen_processor(
    cfg: Mapping[str, Any],
    pre: Mapping[str, Any],
    video: Mapping[str, Any] | None = None,
    *,
    model_type: str = "qwen2_vl",
    path: Path = Path(PREPROCESSOR_CONFIG),
) -> QwenVlProcessor:
    """Qwen2-VL settings from config.json (vision_config) and preprocessor_config.json."""
    notes: list[str] = []
    vision = _sub(cfg, "vision_config")
    patch = _int_key(pre, "patch_size", vision.get("patch_size"), 14, path, notes)
    merge = _int_key(pre, "merge_size", vision.get("spatial_merge_size"), 2, path, notes)
    temporal = _int_key(
        pre, "temporal_patch_size", vision.get("temporal_patch_size"), 2, path, notes
    )
    min_px = _pixels(pre, "min_pixels", _QWEN_DEFAULT_MIN_PIXELS, path, notes)
    max_px = _pixels(pre, "max_pixels", _QWEN_DEFAULT_MAX_PIXELS, path, notes)
    if min_px > max_px:
        raise ConfigError(f"min_pixels {min_px} is over max_pixels {max_px}", path=path)
    if video is not None:
        vpath = path.with_name(VIDEO_PREPROCESSOR_CONFIG)
        video_min = _pixels(video, "min_pixels", min_px, vpath, notes)
        video_max = _pixels(video, "max_pixels", max_px, vpath, notes)
    else:
        video_min, video_max = min_px, max_px
        notes.append("videos resized with the image min/max pixels (no video preprocessor config)")
    return QwenVlProcessor(
        model_type=model_type,
        patch_size=patch,
        merge_size=merge,
        temporal_patch_size=temporal,
        min_pixels=min_px,
        max_pixels=max_px,
        video_min_pixels=video_min,
        video_max_pixels=video_max,
        notes=tuple(notes),
    )


def idefics3_processor(
    cfg: Mapping[str, Any],
    pre: Mapping[str, Any],
    processor: Mapping[str, Any] | None = None,
    *,
    model_type: str = "idefics3",
    newline_pair_merged: bool | None = None,
    path: Path = Path(PREPROCESSOR_CONFIG),
) -> Idefics3Processor:
    """Idefics3 settings: size and tile edge from the preprocessor config, `image_seq_len` from
    processor_config.json or, failing that, config.json's vision tower and scale factor."""
    notes: list[str] = []
    longest = _edge(pre, "size", _IDEFICS3_DEFAULT_LONGEST_EDGE, path, notes)
    tile = _edge(pre, "max_image_size", _IDEFICS3_DEFAULT_TILE_EDGE, path, notes)
    split = pre.get("do_image_splitting", True)
    if not isinstance(split, bool):
        raise ConfigError(
            f"expected true or false, got {split!r}", path=path, key="do_image_splitting"
        )
    seq = (processor or {}).get("image_seq_len")
    if seq is not None:
        seq_len = _positive_int(
            seq, path=path.with_name("processor_config.json"), key="image_seq_len"
        )
    else:
        seq_len = _seq_len_from_config(cfg, path.with_name("config.json"))
        notes.append(
            f"image_seq_len {seq_len} from config.json: (image_size / patch_size)^2 / scale_factor^2"
        )
    if newline_pair_merged is None:
        notes.append(
            "no tokenizer.json: '\\n\\n' taken as one token (as SmolVLM's tokenizer has it)"
        )
    return Idefics3Processor(
        model_type=model_type,
        longest_edge=longest,
        tile_edge=tile,
        image_seq_len=seq_len,
        do_image_splitting=split,
        newline_pair_tokens=2 if newline_pair_merged is False else 1,
        notes=tuple(notes),
    )


def _edge(doc: Mapping[str, Any], key: str, default: int, path: Path, notes: list[str]) -> int:
    value = doc.get(key)
    if value is None:
        notes.append(f"{path.name} leaves out {key}: transformers' default longest_edge {default}")
        return default
    if not isinstance(value, Mapping) or "longest_edge" not in value:
        raise ConfigError(f'expected {{"longest_edge": N}}, got {value!r}', path=path, key=key)
    return _positive_int(value["longest_edge"], path=path, key=f"{key}.longest_edge")


def _seq_len_from_config(cfg: Mapping[str, Any], path: Path) -> int:
    vision = cfg.get("vision_config")
    if not isinstance(vision, Mapping):
        raise ConfigError("missing (needed for image_seq_len)", path=path, key="vision_config")
    size = _positive_int(vision.get("image_size"), path=path, key="vision_config.image_size")
    patch = _positive_int(vision.get("patch_size"), path=path, key="vision_config.patch_size")
    scale = _positive_int(cfg.get("scale_factor", 2), path=path, key="scale_factor")
    return (size // patch) ** 2 // scale**2


def _tokenizer_merges_newlines(path: Path) -> bool | None:
    """Whether the tokenizer has one token for two newlines (byte-level `ĊĊ`); None unknown."""
    if not path.is_file():
        return None
    doc = _json_object(path, "tokenizer")
    model = doc.get("model")
    vocab = model.get("vocab") if isinstance(model, Mapping) else None
    if not isinstance(vocab, Mapping):
        return None
    return "\u010a\u010a" in vocab or "\n\n" in vocab


MEDIA_KINDS = ("image", "video")


def has_vision_config(model_dir: Path) -> bool:
    """Whether a HF model folder describes a vision side: a `vision_config` in config.json or a
    preprocessor config beside it."""
    from vramphysics.theory.hf import load_hf_config

    if (Path(model_dir) / PREPROCESSOR_CONFIG).is_file():
        return True
    return isinstance(load_hf_config(Path(model_dir)).get("vision_config"), Mapping)


def predict_media_tokens(
    model_dir: Path,
    kind: str,
    width: int,
    height: int,
    frames: int = 1,
    fps: float | None = None,
) -> int | None:
    """The prompt tokens one `width` x `height` image (or video of `frames` frames) takes in the
    local HF model folder `model_dir`, as the engine counts them (usage.prompt_tokens with the
    item minus without: features plus markers).

    None when the folder has no vision config (a text model), when its family has no theory
    here, or for a video on a family that takes none (Idefics3). A bad or unreadable config is a
    ConfigError naming the file and key; a bad `kind`, size or frame count one naming the key.
    """
    if kind not in MEDIA_KINDS:
        raise ConfigError(f"expected one of {', '.join(MEDIA_KINDS)}, got {kind!r}", key="kind")
    model_dir = Path(model_dir)
    if not has_vision_config(model_dir):
        return None
    if _known_family(model_dir) is None:
        return None
    proc = load_vision_processor(model_dir)
    if kind == "image":
        return image_tokens(proc, width, height).tokens
    if not isinstance(proc, QwenVlProcessor):
        return None  # Idefics3 / SmolVLM take images only
    return video_tokens(proc, width, height, frames, fps if fps is not None else 1.0).tokens


def _known_family(model_dir: Path) -> str | None:
    """The family `load_vision_processor` has a theory for, or None (a LLaVA, a Gemma 3)."""
    from vramphysics.theory.hf import load_hf_config

    pre_path = model_dir / PREPROCESSOR_CONFIG
    pre = _json_object(pre_path, "preprocessor config") if pre_path.is_file() else {}
    return _family_of(load_hf_config(model_dir), pre)
