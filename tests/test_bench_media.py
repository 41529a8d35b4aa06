"""Media for benchmark requests: made here, in each API's shape."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from vramphysics.bench.media import MediaSpec, make_media
from vramphysics.engines.media import ollama_images, openai_content, refuse_media
from vramphysics.errors import EngineError


def test_images_have_the_asked_size_and_differ_per_request() -> None:
    spec = MediaSpec("image", 2, 320, 200)
    a, b = make_media(spec, 0), make_media(spec, 1)
    assert a == make_media(spec, 0)  # deterministic
    assert len({x.data for x in (*a, *b)}) == 4
    with Image.open(io.BytesIO(a[0].data)) as img:
        assert img.size == (320, 200) and img.format == "JPEG"
    assert spec.label == "2 images 320x200" and spec.suffix == "-i2x320x200"
    assert make_media(None, 3) == ()


def test_a_video_is_an_mp4_clip() -> None:
    pytest.importorskip("cv2", reason="videos need OpenCV, which vLLM installs")
    spec = MediaSpec("video", 1, 64, 48, frames=8, fps=2.0)
    (clip,) = make_media(spec, 0)
    assert clip.mime == "video/mp4" and clip.data[4:8] == b"ftyp"
    assert (clip.frames, clip.fps) == (8, 2.0)
    assert spec.label == "1 video 64x48, 8 frames at 2 fps" and spec.suffix == "-v1x64x48f8"


def test_openai_parts_and_ollama_images() -> None:
    (img,) = make_media(MediaSpec("image", 1, 8, 8), 0)
    assert openai_content("hi", ()) == "hi"
    parts = openai_content("hi", (img,))
    assert isinstance(parts, list)
    assert parts[0]["type"] == "image_url"
    assert parts[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert parts[-1] == {"type": "text", "text": "hi"}
    assert base64.b64decode(ollama_images((img,))[0]) == img.data


def test_video_where_it_cannot_go_fails_before_sending() -> None:
    pytest.importorskip("cv2", reason="videos need OpenCV, which vLLM installs")
    (clip,) = make_media(MediaSpec("video", 1, 16, 16, frames=2, fps=1.0), 0)
    with pytest.raises(EngineError, match="images only"):
        ollama_images((clip,))
    with pytest.raises(EngineError, match="cannot take video here: no projector"):
        refuse_media("llama.cpp", (clip,), "no projector", None)
    refuse_media("llama.cpp", (), "no projector", None)  # nothing to refuse


def test_each_engine_sends_media_in_its_own_shape() -> None:
    from vramphysics.engines.ollama.chat import chat_payload
    from vramphysics.engines.vllm.requests import request_body

    media = make_media(MediaSpec("image", 2, 8, 8), 0)
    path, body = request_body("m", "hi", 4, exact=True, chat=True, media=media)
    assert path == "/v1/chat/completions"
    parts = body["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"]
    with pytest.raises(EngineError, match="no chat template"):
        request_body("m", "hi", 4, exact=True, chat=False, media=media)
    assert request_body("m", "hi", 4, exact=True, chat=False)[1]["prompt"] == "hi"
    payload = chat_payload("m", "hi", 4, num_ctx=None, keep_alive="5m", media=media)
    assert len(payload["messages"][0]["images"]) == 2
    assert "images" not in chat_payload("m", "hi", 4, num_ctx=None, keep_alive="5m")["messages"][0]
