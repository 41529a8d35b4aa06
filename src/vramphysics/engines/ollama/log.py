"""The log of an `ollama serve` we started: it embeds llama.cpp's, whose buffer lines give the
weights / KV / compute breakdown of the model loaded since an offset."""

from __future__ import annotations

import os
from pathlib import Path

from vramphysics.engines.base import MemoryComponents
from vramphysics.engines.llamacpp.log import components_from_log

_LOG_MAX_BYTES = 8_000_000


def components_since(path: Path, offset: int) -> MemoryComponents | None:
    """llama.cpp's buffer lines in the server log from `offset` on (None when there are none)."""
    return components_from_log(read_from(path, offset, _LOG_MAX_BYTES), "ollama-log")


def read_from(path: Path, offset: int, max_bytes: int) -> str:
    """A log from `offset` on (at most the last `max_bytes` of it)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(offset, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return ""
    return data.decode("utf-8", errors="replace")


def log_size(path: Path) -> int:
    """The log's size in bytes now (0 when it cannot be read): where the next start's lines begin."""
    try:
        return path.stat().st_size
    except OSError:
        return 0
