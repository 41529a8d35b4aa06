"""Images and videos for benchmark requests, made here (no download): Pillow for images, OpenCV
(which vLLM brings) for videos.

Every request gets media of its own (seeded by the request's index), so no cache of processed
images or encoder outputs hides the work, as the unique text prefix does for the prompt.
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vramphysics.engines.base import MediaItem
from vramphysics.errors import ConfigError


@dataclass(frozen=True)
class MediaSpec:
    """What each request of a cell carries: `count` images, or videos of `frames` at `fps`."""

    kind: str  # "image" | "video"
    count: int
    width: int
    height: int
    frames: int = 1
    fps: float | None = None

    @property
    def label(self) -> str:
        """For people: "4 images 256x256", "1 video 320x240, 8 frames at 2 fps"."""
        noun = self.kind + ("s" if self.count != 1 else "")
        text = f"{self.count} {noun} {self.width}x{self.height}"
        if self.kind == "video":
            text += f", {self.frames} frames at {self.fps:g} fps"
        return text

    @property
    def suffix(self) -> str:
        """For cell IDs: "-i4x256x256", "-v1x320x240f8"."""
        tag = "i" if self.kind == "image" else "v"
        frames = f"f{self.frames}" if self.kind == "video" else ""
        return f"-{tag}{self.count}x{self.width}x{self.height}{frames}"


def _pixels(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth colour gradient with noise: compresses like a photo, differs per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack(
        [(x * 255 // max(1, width - 1)), (y * 255 // max(1, height - 1)), ((x + y) % 256)],
        axis=-1,
    )
    noise = rng.integers(0, 48, size=(height, width, 3))
    return ((base + noise) % 256).astype(np.uint8)


def image(width: int, height: int, seed: int) -> MediaItem:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_pixels(width, height, seed), "RGB").save(buf, format="JPEG", quality=85)
    return MediaItem("image", "image/jpeg", buf.getvalue(), width, height)


def video(width: int, height: int, frames: int, fps: float, seed: int) -> MediaItem:
    """An MP4 clip; needs OpenCV (`cv2`), which vLLM installs."""
    try:
        import cv2
    except ImportError as exc:
        raise ConfigError(
            "bench.videos: making a test video needs OpenCV (pip install opencv-python-headless)"
        ) from exc
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (width, height))
        try:
            for i in range(frames):
                writer.write(_pixels(width, height, seed * 1000 + i))
        finally:
            writer.release()
        data = path.read_bytes()
    return MediaItem("video", "video/mp4", data, width, height, frames=frames, fps=fps)


def make_media(spec: MediaSpec | None, seed: int) -> tuple[MediaItem, ...]:
    """The media of one request (none for a text-only cell)."""
    if spec is None:
        return ()
    if spec.kind == "image":
        return tuple(image(spec.width, spec.height, seed * 64 + i) for i in range(spec.count))
    fps = spec.fps or 1.0
    return tuple(
        video(spec.width, spec.height, spec.frames, fps, seed * 64 + i) for i in range(spec.count)
    )
