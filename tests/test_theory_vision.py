"""Vision theory: image and video tokens from preprocessor configs, the tower's weights, and
`estimate --image/--video`. Figures worked out by hand in the comments."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from vramphysics.cli import main
from vramphysics.errors import ConfigError
from vramphysics.theory.vision import (
    Idefics3Processor,
    QwenVlProcessor,
    idefics3_image_tokens,
    image_tokens,
    parse_size,
    qwen_image_tokens,
    qwen_video_tokens,
    smart_resize,
    video_tokens,
)
from vramphysics.theory.vision_load import load_vision_processor
from vramphysics.theory.vision_weights import split_weights, tensor_part

FIXTURES = Path(__file__).parent / "fixtures" / "theory"
QWEN25 = FIXTURES / "qwen2.5-vl-7b-instruct.config.json"
QWEN25_PRE = FIXTURES / "qwen2.5-vl-7b-instruct.preprocessor_config.json"
QWEN2 = FIXTURES / "qwen2-vl-7b-instruct.config.json"
QWEN2_PRE = FIXTURES / "qwen2-vl-7b-instruct.preprocessor_config.json"


def qwen_folder(tmp_path: Path, config: Path = QWEN25, pre: Path | None = QWEN25_PRE) -> Path:
    """A model folder with config.json and (optionally) preprocessor_config.json beside it."""
    folder = tmp_path / "qwen"
    folder.mkdir()
    shutil.copy(config, folder / "config.json")
    if pre is not None:
        shutil.copy(pre, folder / "preprocessor_config.json")
    return folder


# --------------------------------------------------------------------------- Qwen2-VL


@pytest.mark.parametrize(
    ("width", "height", "resized", "features"),
    [
        # 448 = 16 x 28: kept; (448/14)^2 / 4 = 32 * 32 / 4
        (448, 448, (448, 448), 256),
        # round(1280/28) = 46 -> 1288, round(720/28) = 26 -> 728; 92 * 52 / 4
        (1280, 720, (1288, 728), 1196),
        # round(1920/28) = 69 -> 1932, round(1080/28) = 39 -> 1092; 138 * 78 / 4
        (1920, 1080, (1932, 1092), 2691),
    ],
)
def test_qwen25_vl_image_tokens_from_the_real_preprocessor_config(
    width: int, height: int, resized: tuple[int, int], features: int
) -> None:
    proc = load_vision_processor(QWEN25, QWEN25_PRE)
    assert isinstance(proc, QwenVlProcessor)
    assert (proc.min_pixels, proc.max_pixels, proc.patch_size, proc.merge_size) == (
        3136,
        12845056,
        14,
        2,
    )
    t = qwen_image_tokens(proc, width, height)
    assert (t.resized_width, t.resized_height) == resized
    assert t.feature_tokens == features
    assert t.tokens == features + 2  # <|vision_start|> ... <|vision_end|>
    assert t.grid == (1, resized[1] // 14, resized[0] // 14)


def test_qwen_max_pixels_scales_the_image_down() -> None:
    # 28*28*100 = 78400 pixels at most; 1000x500 rounds to 1008x504 (over), so
    # beta = sqrt(500000 / 78400) = 2.5254: floor(1000/beta/28) = 14 -> 392,
    # floor(500/beta/28) = 7 -> 196; (392/14) * (196/14) / 4 = 28 * 14 / 4 = 98
    proc = QwenVlProcessor("qwen2_vl", max_pixels=28 * 28 * 100)
    t = qwen_image_tokens(proc, 1000, 500)
    assert (t.resized_width, t.resized_height, t.feature_tokens, t.tokens) == (392, 196, 98, 100)
    assert t.resized_width * t.resized_height <= proc.max_pixels


def test_qwen_min_pixels_scales_a_tiny_image_up() -> None:
    # 60x30 rounds to 56x28 = 1568 pixels, under min 28*28*16 = 12544: beta = sqrt(12544 /
    # 1800) = 2.64; ceil(60 * 2.64 / 28) = ceil(5.66) = 6 -> 168, ceil(30 * 2.64 / 28) =
    # ceil(2.83) = 3 -> 84: (12 * 6) / 4 = 18 tokens
    proc = QwenVlProcessor("qwen2_vl", min_pixels=28 * 28 * 16)
    t = qwen_image_tokens(proc, 60, 30)
    assert (t.resized_width, t.resized_height, t.feature_tokens) == (168, 84, 18)


def test_smart_resize_agrees_with_transformers() -> None:
    """The same function as transformers' (where installed), over awkward sizes."""
    pil = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")
    sizes = [(1, 1), (27, 29), (56, 56), (100, 30), (640, 480), (1280, 720), (4000, 3000)]
    sizes += [(3000, 17), (10000, 8000), (333, 777)]
    for w, h in sizes:
        for max_px in (12845056, 28 * 28 * 256, 1003520):
            ours = smart_resize(h, w, factor=28, min_pixels=3136, max_pixels=max_px)
            theirs = pil.smart_resize(h, w, factor=28, min_pixels=3136, max_pixels=max_px)
            assert ours == tuple(theirs), (w, h, max_px)


def test_qwen_refuses_what_the_processor_refuses() -> None:
    with pytest.raises(ConfigError, match="aspect ratio 250 is over 200"):
        qwen_image_tokens(QwenVlProcessor("qwen2_vl"), 5000, 20)


def test_qwen_video_tokens() -> None:
    proc = load_vision_processor(QWEN2, QWEN2_PRE)
    # 640x360 -> 644x364 (23 x 13 steps of 28); 20 frames / temporal 2 = 10 steps:
    # 10 * 26 * 46 / 4 = 2990 <|video_pad|> + 2 markers, over 20 / 2 fps = 10 s
    v = video_tokens(proc, 640, 360, 20, 2.0)
    assert (v.grid, v.feature_tokens, v.tokens, v.seconds) == ((10, 26, 46), 2990, 2992, 10.0)
    assert v.tokens_per_second == pytest.approx(299.2)
    # an odd count is padded (the last frame repeats): 5 frames -> 3 steps
    assert qwen_video_tokens(proc, 640, 360, 5, 1.0).grid == (3, 26, 46)
    with pytest.raises(ConfigError, match="frames: must be >= 1"):
        qwen_video_tokens(proc, 640, 360, 0, 1.0)


# --------------------------------------------------------------------------- Idefics3

TINY = Idefics3Processor("idefics3", longest_edge=256, tile_edge=64, image_seq_len=4)


@pytest.mark.parametrize(
    ("width", "height", "tokens", "tiles"),
    [
        # 64x64 is upscaled to 256x256: 4 x 4 tiles + global.
        # 16 * (4 + 2) + 3 row newlines + 1 ("\n\n") + (4 + 3) = 96 + 3 + 1 + 7
        (64, 64, 107, 17),
        (256, 256, 107, 17),
        # 256x128: 2 rows x 4 cols: 8 * 6 + 1 + 1 + 7
        (256, 128, 57, 9),
        # 100x30 -> 256 x int(76.8) = 76 (even) -> rows ceil(76/64) = 2
        (100, 30, 57, 9),
    ],
)
def test_idefics3_tokens_as_on_the_tiny_model(
    width: int, height: int, tokens: int, tiles: int
) -> None:
    t = idefics3_image_tokens(TINY, width, height)
    assert (t.tokens, t.tiles, t.feature_tokens) == (tokens, tiles, tiles * 4)
    assert t.marker_tokens == tokens - tiles * 4


def test_idefics3_newlines_and_no_split() -> None:
    two_newlines = Idefics3Processor("idefics3", 256, 64, 4, newline_pair_tokens=2)
    assert idefics3_image_tokens(two_newlines, 64, 64).tokens == 108
    no_split = Idefics3Processor("idefics3", 256, 64, 4, do_image_splitting=False)
    assert idefics3_image_tokens(no_split, 1920, 1080).tokens == 4 + 3  # the global image only


def test_smolvlm_sized_image() -> None:
    # SmolVLM settings: longest edge 2048, tiles of 512, 64 tokens each. 1920x1080 -> 2048 x
    # int(2048 / (16/9)) = 1152: 3 rows x 4 cols; 12 * 66 + 2 + 1 + 67 = 862
    smol = Idefics3Processor("smolvlm", longest_edge=2048, tile_edge=512, image_seq_len=64)
    assert idefics3_image_tokens(smol, 1920, 1080).tokens == 862


def test_idefics3_takes_no_video() -> None:
    with pytest.raises(ConfigError, match="takes no videos"):
        video_tokens(TINY, 64, 64, 4, 1.0)


# --------------------------------------------------------------------------- loading


def test_preprocessor_config_is_read_from_beside_the_config(tmp_path: Path) -> None:
    folder = qwen_folder(tmp_path)
    proc = load_vision_processor(folder)
    assert image_tokens(proc, 1280, 720).tokens == 1198


def test_missing_preprocessor_config_names_the_file_and_the_option(tmp_path: Path) -> None:
    folder = qwen_folder(tmp_path, pre=None)
    with pytest.raises(ConfigError) as err:
        load_vision_processor(folder / "config.json")
    assert err.value.path == folder / "preprocessor_config.json"
    assert "--preprocessor-config" in str(err.value)


def test_wrong_field_names_the_file_and_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "pre.json"
    bad.write_text(json.dumps({"min_pixels": "lots", "max_pixels": 100000}))
    with pytest.raises(ConfigError) as err:
        load_vision_processor(QWEN25, bad)
    assert (err.value.path, err.value.key) == (bad, "min_pixels")
    bad.write_text(json.dumps({"min_pixels": 1000, "max_pixels": 10}))
    with pytest.raises(ConfigError, match="min_pixels 1000 is over max_pixels 10"):
        load_vision_processor(QWEN25, bad)


def test_newer_size_spelling_and_defaults(tmp_path: Path) -> None:
    pre = tmp_path / "pre.json"
    pre.write_text(json.dumps({"size": {"shortest_edge": 3136, "longest_edge": 1003520}}))
    proc = load_vision_processor(QWEN25, pre)
    assert isinstance(proc, QwenVlProcessor)
    assert (proc.min_pixels, proc.max_pixels) == (3136, 1003520)
    assert proc.patch_size == 14 and proc.merge_size == 2  # from vision_config


def test_text_model_has_no_image_theory(tmp_path: Path) -> None:
    pre = tmp_path / "pre.json"
    pre.write_text("{}")
    with pytest.raises(ConfigError) as err:
        load_vision_processor(FIXTURES / "llama-3.1-8b.config.json", pre)
    assert err.value.key == "model_type" and "llama" in str(err.value)


def test_parse_size() -> None:
    assert parse_size("1280x720", key="--image") == (1280, 720)
    for bad in ("1280", "axb", "0x10", "12x-3"):
        with pytest.raises(ConfigError, match="--image"):
            parse_size(bad, key="--image")


# --------------------------------------------------------------------------- weights


def test_tensor_names_are_sorted_into_parts() -> None:
    assert tensor_part("visual.blocks.0.attn.qkv.weight") == "vision"  # Qwen2-VL
    assert tensor_part("visual.merger.mlp.0.weight") == "vision"
    assert tensor_part("model.vision_model.encoder.layers.0.mlp.fc1.weight") == "vision"
    assert tensor_part("vision_tower.vision_model.embeddings.patch_embedding.weight") == "vision"
    assert tensor_part("model.connector.modality_projection.proj.weight") == "projector"
    assert tensor_part("multi_modal_projector.linear_1.weight") == "projector"
    assert tensor_part("model.layers.0.self_attn.q_proj.weight") == "language"
    assert tensor_part("lm_head.weight") == "language"
    w = split_weights({"visual.a": 10, "visual.b": 5, "model.connector.p": 3, "lm_head.weight": 7})
    assert (w.vision_bytes, w.projector_bytes, w.language_bytes, w.total_bytes) == (15, 3, 7, 25)
    assert (w.vision_tensors, w.projector_tensors, w.language_tensors) == (2, 1, 1)


# --------------------------------------------------------------------------- estimate


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, Any]:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_estimate_image_and_video_tokens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = qwen_folder(tmp_path)
    shards = {
        "visual.blocks.0.mlp.weight": np.zeros((4, 8), dtype=np.float16),  # 64 bytes
        "model.layers.0.mlp.weight": np.zeros((16, 8), dtype=np.float16),  # 256 bytes
    }
    save_file(shards, str(folder / "model.safetensors"))
    doc = run_json(capsys, ["estimate", "--hf-config", str(folder), "--image", "1280x720"])
    assert doc["image_tokens"] == 1198 and doc["image"]["feature_tokens"] == 1196
    assert doc["vision_weights"]["vision_bytes"] == 64
    assert doc["vision_weights"]["language_bytes"] == 256
    assert doc["kv_bytes_per_token"] == 28 * 4 * 128 * 2 * 2  # the text side is unchanged
    doc = run_json(
        capsys,
        ["estimate", "--hf-config", str(QWEN2), "--preprocessor-config", str(QWEN2_PRE)]
        + ["--video", "640x360", "--frames", "20", "--fps", "2"],
    )
    assert doc["video_tokens"] == 2992 and doc["video"]["seconds"] == 10.0
    assert "image_tokens" not in doc


def test_estimate_text_output_names_the_tokens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = qwen_folder(tmp_path)
    assert main(["estimate", "--hf-config", str(folder), "--image", "448x448"]) == 0
    out = capsys.readouterr().out
    assert "image:    448x448 -> 448x448: 258 tokens (256 features + 2 markers)" in out


def test_estimate_vision_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = qwen_folder(tmp_path, pre=None)
    assert main(["estimate", "--hf-config", str(folder), "--image", "64x64"]) == 2
    assert "preprocessor_config.json" in capsys.readouterr().err
    gguf_like = tmp_path / "m.gguf"
    gguf_like.write_bytes(b"")
    assert main(["estimate", "--gguf", str(gguf_like), "--image", "64x64"]) == 2
    assert "needs --hf-config" in capsys.readouterr().err
    assert main(["estimate", "--hf-config", str(QWEN2), "--video", "64x64"]) == 2
    assert "--frames" in capsys.readouterr().err
