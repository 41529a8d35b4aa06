"""Media in a request, in the shape each API takes.

- OpenAI-style chat (vLLM, llama-server with a multimodal projector): the user message's content
  is a list of parts: the images as `image_url` data URLs and the videos as `video_url` data URLs
  (vLLM), then the text.
- Ollama `/api/chat`: the user message's `images`, base64 without a data-URL prefix; Ollama takes
  no video (a request with one fails before it is sent, naming why).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from vramphysics.engines.base import MediaItem
from vramphysics.errors import EngineError


def openai_content(prompt: str, media: Sequence[MediaItem]) -> str | list[dict[str, Any]]:
    """The user message's `content`: the plain prompt without media, else a list of parts."""
    if not media:
        return prompt
    parts: list[dict[str, Any]] = []
    for item in media:
        key = "image_url" if item.kind == "image" else "video_url"
        parts.append({"type": key, key: {"url": item.data_url()}})
    parts.append({"type": "text", "text": prompt})
    return parts


def ollama_images(media: Sequence[MediaItem], *, model_id: str | None = None) -> list[str]:
    """The `images` of an Ollama chat message; a video is refused (Ollama takes none)."""
    if any(m.kind != "image" for m in media):
        raise EngineError(
            "request_failed", "Ollama's /api/chat takes images only, not video", model_id=model_id
        )
    return [base64.b64encode(m.data).decode("ascii") for m in media]


def refuse_media(engine: str, media: Sequence[MediaItem], why: str, model_id: str | None) -> None:
    """A request with media to an endpoint that cannot take them fails before it is sent."""
    if media:
        kinds = sorted({m.kind for m in media})
        raise EngineError(
            "request_failed",
            f"{engine} cannot take {' or '.join(kinds)} here: {why}",
            model_id=model_id,
        )
