"""`predict_media_tokens`: the tokens one image or video takes, from a local HF model folder.
Figures worked out by hand in the comments (the formulas: docs/vision.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vramphysics.errors import ConfigError
from vramphysics.theory.vision_load import predict_media_tokens

FIXTURES = Path(__file__).parent / "fixtures" / "theory"


def _write(folder: Path, name: str, doc: object) -> None:
    (folder / name).write_text(json.dumps(doc), encoding="utf-8")


@pytest.fixture
def qwen25(tmp_path: Path) -> Path:
    """Qwen2.5-VL-7B-Instruct's real config.json and preprocessor_config.json."""
    folder = tmp_path / "qwen25"
    folder.mkdir()
    shutil.copy(FIXTURES / "qwen2.5-vl-7b-instruct.config.json", folder / "config.json")
    shutil.copy(
        FIXTURES / "qwen2.5-vl-7b-instruct.preprocessor_config.json",
        folder / "preprocessor_config.json",
    )
    return folder


@pytest.fixture
def tiny_idefics3(tmp_path: Path) -> Path:
    """The tiny VLM's configs as `make-demo-model --vlm` writes them (no weights needed)."""
    folder = tmp_path / "tiny-vlm"
    folder.mkdir()
    _write(
        folder,
        "config.json",
        {
            "model_type": "idefics3",
            "scale_factor": 2,
            "vision_config": {"image_size": 64, "patch_size": 16},
        },
    )
    _write(
        folder,
        "preprocessor_config.json",
        {
            "image_processor_type": "Idefics3ImageProcessor",
            "size": {"longest_edge": 256},
            "max_image_size": {"longest_edge": 64},
            "do_image_splitting": True,
        },
    )
    _write(folder, "processor_config.json", {"image_seq_len": 4})
    _write(folder, "tokenizer.json", {"model": {"vocab": {"\u010a\u010a": 7, "<image>": 3}}})
    return folder


@pytest.mark.parametrize(
    ("width", "height", "tokens"),
    [
        # 448 = 16 x 28: kept; (448/14)^2 / 4 = 256 features, + vision start/end
        (448, 448, 258),
        # 1288 x 728: 92 * 52 / 4 = 1196, + 2
        (1280, 720, 1198),
    ],
)
def test_qwen25_vl_images(qwen25: Path, width: int, height: int, tokens: int) -> None:
    assert predict_media_tokens(qwen25, "image", width, height) == tokens


def test_qwen25_vl_video(qwen25: Path) -> None:
    # 20 frames -> 10 temporal steps of 92 x 52 patches, / 4 = 11960, + 2; fps does not count
    assert predict_media_tokens(qwen25, "video", 1280, 720, frames=20, fps=2.0) == 11_962
    assert predict_media_tokens(qwen25, "video", 1280, 720, frames=20) == 11_962
    # 1 frame is padded to temporal_patch_size 2: one step
    assert predict_media_tokens(qwen25, "video", 448, 448, frames=1) == 258


@pytest.mark.parametrize(
    ("width", "height", "tokens"),
    [
        # upscaled to 256x256: 4x4 tiles of 64 -> 16 * (4 + 2) + 3 row ends + 1 ("\n\n") + 4 + 3
        (64, 64, 107),
        # 256x128: 2 rows x 4 cols -> 8 * 6 + 1 + 1 + 7
        (256, 128, 57),
    ],
)
def test_tiny_idefics3_images(tiny_idefics3: Path, width: int, height: int, tokens: int) -> None:
    assert predict_media_tokens(tiny_idefics3, "image", width, height) == tokens


def test_idefics3_takes_no_videos(tiny_idefics3: Path) -> None:
    assert predict_media_tokens(tiny_idefics3, "video", 64, 64, frames=4, fps=2.0) is None


def test_a_text_model_has_no_prediction(tmp_path: Path) -> None:
    _write(tmp_path, "config.json", {"model_type": "llama", "hidden_size": 128})
    assert predict_media_tokens(tmp_path, "image", 64, 64) is None


def test_a_vision_family_without_theory_has_no_prediction(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "llava-1.5-7b-hf.config.json", tmp_path / "config.json")
    _write(tmp_path, "preprocessor_config.json", {"image_processor_type": "CLIPImageProcessor"})
    assert predict_media_tokens(tmp_path, "image", 336, 336) is None


def test_bad_kind_names_the_key(qwen25: Path) -> None:
    with pytest.raises(ConfigError, match="kind"):
        predict_media_tokens(qwen25, "audio", 64, 64)


def test_a_broken_preprocessor_config_names_the_file(qwen25: Path) -> None:
    (qwen25 / "preprocessor_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="preprocessor_config.json"):
        predict_media_tokens(qwen25, "image", 64, 64)


def test_a_known_family_without_its_preprocessor_config_is_an_error(qwen25: Path) -> None:
    (qwen25 / "preprocessor_config.json").unlink()  # config.json still has vision_config
    with pytest.raises(ConfigError, match="no preprocessor config"):
        predict_media_tokens(qwen25, "image", 64, 64)


def test_a_folder_without_config_json_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config.json"):
        predict_media_tokens(tmp_path, "image", 64, 64)
