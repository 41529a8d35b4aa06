"""Vision theory: the prompt tokens an image or a video becomes, from the preprocessor config.

Two families, each computed exactly as the processor (and vLLM's prompt replacement) does:

Qwen2-VL / Qwen2.5-VL (`qwen2_vl`, `qwen2_5_vl`)
    `smart_resize` rounds each side to a multiple of factor = patch_size x merge_size (28),
    then scales the image into [min_pixels, max_pixels] keeping the aspect ratio. The vision
    tower sees (h / 14) x (w / 14) patches; merge_size^2 of them become one `<|image_pad|>`
    token: (h / 14) * (w / 14) / 4. The chat template frames the image with
    `<|vision_start|>` and `<|vision_end|>`, so the prompt grows by that plus 2: `tokens`
    counts them (what usage.prompt_tokens shows), `feature_tokens` does not. A video's frames
    are padded to a multiple of temporal_patch_size (2) and every 2 frames become one grid
    step: ceil(frames / 2) x (h / 14) x (w / 14) / 4 `<|video_pad|>` tokens, plus the 2 markers.

Idefics3 / SmolVLM (`idefics3`, `smolvlm`)
    The image is resized so that its longest edge is `size.longest_edge` (upscaled too), then
    cut into rows x cols tiles of `max_image_size.longest_edge` plus one global image; each
    becomes `image_seq_len` `<image>` tokens. Each tile is framed by
    `<fake_token_around_image><row_R_col_C>`, each row ends with a newline, and the global
    image is `\\n<fake_token_around_image><global-img>` + tokens + `<fake_token_around_image>`.
    So tokens = rows*cols*(seq + 2) + (rows - 1) + newline pair + (seq + 3), where the newline
    pair (the last row's and the global image's) is 1 token when the tokenizer merges `\\n\\n`
    (SmolVLM's does) and 2 otherwise. An image that needs no split is `seq + 3` tokens.

Pure functions over plain values; `vision_load` reads the configs into these records.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from vramphysics.errors import ConfigError

QWEN_TYPES = ("qwen2_vl", "qwen2_5_vl")
IDEFICS3_TYPES = ("idefics3", "smolvlm")

# transformers' class defaults, used (with a note) where a preprocessor config leaves a key out.
_QWEN_DEFAULT_MIN_PIXELS = 56 * 56
_QWEN_DEFAULT_MAX_PIXELS = 28 * 28 * 1280
_IDEFICS3_DEFAULT_LONGEST_EDGE = 4 * 364
_IDEFICS3_DEFAULT_TILE_EDGE = 364
_IDEFICS3_MAX_IMAGE_SIZE = 4096  # the processor scales anything larger below this
_QWEN_MAX_ASPECT = 200  # the processor refuses images more elongated than this


@dataclass(frozen=True)
class QwenVlProcessor:
    """Qwen2-VL / Qwen2.5-VL image processor settings (preprocessor_config.json)."""

    model_type: str
    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    min_pixels: int = _QWEN_DEFAULT_MIN_PIXELS
    max_pixels: int = _QWEN_DEFAULT_MAX_PIXELS
    video_min_pixels: int = _QWEN_DEFAULT_MIN_PIXELS
    video_max_pixels: int = _QWEN_DEFAULT_MAX_PIXELS
    notes: tuple[str, ...] = ()

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size


@dataclass(frozen=True)
class Idefics3Processor:
    """Idefics3 / SmolVLM image processor settings (preprocessor and processor configs)."""

    model_type: str
    longest_edge: int = _IDEFICS3_DEFAULT_LONGEST_EDGE  # size.longest_edge
    tile_edge: int = _IDEFICS3_DEFAULT_TILE_EDGE  # max_image_size.longest_edge
    image_seq_len: int = 169
    do_image_splitting: bool = True
    newline_pair_tokens: int = 1  # "\n\n": 1 when the tokenizer merges it, else 2
    notes: tuple[str, ...] = ()


VisionProcessor = QwenVlProcessor | Idefics3Processor


@dataclass(frozen=True)
class MediaTokens:
    """What one image (or video) adds to the prompt, as the engine counts it."""

    kind: str  # "image" | "video"
    model_type: str
    width: int
    height: int
    resized_width: int
    resized_height: int
    tokens: int  # what usage.prompt_tokens grows by: features plus markers
    feature_tokens: int  # the tokens the vision tower's output fills
    marker_tokens: int  # framing tokens (vision start/end, tile markers, newlines)
    tiles: int | None = None  # Idefics3: tiles plus the global image
    grid: tuple[int, int, int] | None = None  # Qwen: (t, h, w) in patches of patch_size
    frames: int | None = None  # video: frames given (before padding)
    seconds: float | None = None  # video: frames / fps
    notes: tuple[str, ...] = ()

    @property
    def tokens_per_second(self) -> float | None:
        return self.tokens / self.seconds if self.seconds else None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["notes"] = list(self.notes)
        d["grid"] = list(self.grid) if self.grid is not None else None
        d["tokens_per_second"] = self.tokens_per_second
        return d


# --------------------------------------------------------------------------- Qwen2-VL


def smart_resize(
    height: int, width: int, *, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """(height, width) as Qwen2-VL's processor resizes: multiples of `factor`, within
    [min_pixels, max_pixels], aspect ratio kept (transformers' `smart_resize`)."""
    if max(height, width) / min(height, width) > _QWEN_MAX_ASPECT:
        raise ConfigError(
            f"aspect ratio {max(height, width) / min(height, width):.0f} is over "
            f"{_QWEN_MAX_ASPECT}: the processor refuses a {width}x{height} image",
            key="image",
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


_QWEN_MARKERS = 2  # <|vision_start|> and <|vision_end|> around each image or video


def qwen_image_tokens(proc: QwenVlProcessor, width: int, height: int) -> MediaTokens:
    """Tokens of one image for Qwen2-VL / Qwen2.5-VL."""
    _check_size(width, height)
    h, w = smart_resize(
        height, width, factor=proc.factor, min_pixels=proc.min_pixels, max_pixels=proc.max_pixels
    )
    grid = (1, h // proc.patch_size, w // proc.patch_size)
    features = grid[1] * grid[2] // proc.merge_size**2
    return MediaTokens(
        kind="image",
        model_type=proc.model_type,
        width=width,
        height=height,
        resized_width=w,
        resized_height=h,
        tokens=features + _QWEN_MARKERS,
        feature_tokens=features,
        marker_tokens=_QWEN_MARKERS,
        grid=grid,
        notes=(
            *proc.notes,
            "tokens count <|vision_start|> and <|vision_end|>, which the chat template puts "
            "around each image; feature_tokens are the <|image_pad|> tokens alone",
        ),
    )


def qwen_video_tokens(
    proc: QwenVlProcessor, width: int, height: int, frames: int, fps: float
) -> MediaTokens:
    """Tokens of one video of `frames` frames (as given to the model) at `fps`."""
    _check_size(width, height)
    if frames < 1:
        raise ConfigError(f"must be >= 1, got {frames}", key="frames")
    if not (fps > 0 and math.isfinite(fps)):
        raise ConfigError(f"must be a positive number, got {fps}", key="fps")
    h, w = smart_resize(
        height,
        width,
        factor=proc.factor,
        min_pixels=proc.video_min_pixels,
        max_pixels=proc.video_max_pixels,
    )
    steps = math.ceil(frames / proc.temporal_patch_size)  # the last frame repeats to fill
    grid = (steps, h // proc.patch_size, w // proc.patch_size)
    features = grid[0] * grid[1] * grid[2] // proc.merge_size**2
    return MediaTokens(
        kind="video",
        model_type=proc.model_type,
        width=width,
        height=height,
        resized_width=w,
        resized_height=h,
        tokens=features + _QWEN_MARKERS,
        feature_tokens=features,
        marker_tokens=_QWEN_MARKERS,
        grid=grid,
        frames=frames,
        seconds=frames / fps,
        notes=(
            *proc.notes,
            f"{frames} frames as given to the model (after any sampling), padded to a multiple "
            f"of temporal_patch_size {proc.temporal_patch_size}; an engine that samples frames "
            "itself (vLLM's video loader, transformers' fps sampling) may give it fewer",
        ),
    )


# --------------------------------------------------------------------------- Idefics3


def _rescale_to_longest_edge(height: int, width: int, longest: int) -> tuple[int, int]:
    """transformers' `_resize_output_size_rescale_to_max_len`: the longest edge becomes
    `longest` (upscaling too), the other follows the aspect ratio, rounded up to even."""
    aspect = width / height
    if width >= height:
        width = longest
        height = int(width / aspect)
        height += height % 2
    else:
        height = longest
        width = int(height * aspect)
        width += width % 2
    return max(height, 1), max(width, 1)


def _below_upper_bound(height: int, width: int, bound: int) -> tuple[int, int]:
    aspect = width / height
    if width >= height and width > bound:
        width, height = bound, int(bound / aspect)
    elif height > width and height > bound:
        height, width = bound, int(bound * aspect)
    return max(height, 1), max(width, 1)


def idefics3_grid(proc: Idefics3Processor, width: int, height: int) -> tuple[int, int, int, int]:
    """(rows, cols, resized height, resized width) as the image processor's
    `get_number_of_image_patches` gives them (vLLM builds the prompt from these)."""
    if not proc.do_image_splitting:
        return 0, 0, proc.tile_edge, proc.tile_edge
    h, w = _rescale_to_longest_edge(height, width, proc.longest_edge)
    h, w = _below_upper_bound(h, w, _IDEFICS3_MAX_IMAGE_SIZE)
    tile = proc.tile_edge
    rh, rw = math.ceil(h / tile) * tile, math.ceil(w / tile) * tile
    if rh > tile or rw > tile:
        return math.ceil(rh / tile), math.ceil(rw / tile), rh, rw
    return 0, 0, rh, rw


def idefics3_image_tokens(proc: Idefics3Processor, width: int, height: int) -> MediaTokens:
    """Tokens of one image for Idefics3 / SmolVLM, as vLLM's prompt replacement has them."""
    _check_size(width, height)
    rows, cols, rh, rw = idefics3_grid(proc, width, height)
    seq = proc.image_seq_len
    global_image = seq + 3  # <fake><global-img> seq x <image> <fake>
    if rows == 0 and cols == 0:
        tokens, tiles = global_image, 1
    else:
        tile_part = rows * cols * (seq + 2)  # <fake><row_R_col_C> seq x <image>
        newlines = (rows - 1) + proc.newline_pair_tokens
        tokens, tiles = tile_part + newlines + global_image, rows * cols + 1
    features = tiles * seq
    return MediaTokens(
        kind="image",
        model_type=proc.model_type,
        width=width,
        height=height,
        resized_width=rw,
        resized_height=rh,
        tokens=tokens,
        feature_tokens=features,
        marker_tokens=tokens - features,
        tiles=tiles,
        notes=(
            *proc.notes,
            f"{rows} x {cols} tiles of {proc.tile_edge} px plus a global image, "
            f"{seq} <image> tokens each"
            if tiles > 1
            else f"no split: one global image of {seq} <image> tokens",
        ),
    )


# --------------------------------------------------------------------------- dispatch


def image_tokens(proc: VisionProcessor, width: int, height: int) -> MediaTokens:
    """Tokens of one `width` x `height` image for this model family."""
    if isinstance(proc, QwenVlProcessor):
        return qwen_image_tokens(proc, width, height)
    return idefics3_image_tokens(proc, width, height)


def video_tokens(
    proc: VisionProcessor, width: int, height: int, frames: int, fps: float
) -> MediaTokens:
    """Tokens of one video; only the Qwen2-VL family takes videos."""
    if isinstance(proc, QwenVlProcessor):
        return qwen_video_tokens(proc, width, height, frames, fps)
    raise ConfigError(
        f"model_type {proc.model_type!r} takes no videos (Idefics3's processor has images only)",
        key="video",
    )


def parse_size(text: str, *, key: str) -> tuple[int, int]:
    """`WxH` (e.g. 1280x720) as (width, height)."""
    parts = text.lower().replace("\u00d7", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"expected WIDTHxHEIGHT such as 1280x720, got {text!r}", key=key)
    width, height = (int(p) for p in parts)
    _check_size(width, height, key=key)
    return width, height


def _check_size(width: int, height: int, key: str = "image") -> None:
    if width < 1 or height < 1:
        raise ConfigError(f"width and height must be >= 1, got {width}x{height}", key=key)
