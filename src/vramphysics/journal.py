"""The run journal `reports/<run-id>.journal.jsonl`: one fsync'd JSON line per finished step.

The physics database and the report are derived from it, so a run killed at 3 a.m. keeps every
finished row and `--resume` redoes nothing it holds.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path

from vramphysics.errors import ConfigError
from vramphysics.records import Record, record_from_json
from vramphysics.redact import redact, redact_value

log = logging.getLogger(__name__)

SUFFIX = ".journal.jsonl"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Journal:
    """Append-only; each `append` is durable when it returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        _drop_torn_tail(self._fd, path)

    def append(self, record: Record) -> None:
        # masked field by field (an engine's `extra_args: [--api-key, X]`), then as text (the
        # values of secret environment variables wherever they appear)
        d = redact_value(record.to_json())
        if not d.get("at"):
            d["at"] = now_iso()
        line = redact(json.dumps(d, sort_keys=False)) + "\n"
        os.write(self._fd, line.encode("utf-8"))
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _drop_torn_tail(fd: int, path: Path) -> None:
    """A runner killed mid-write leaves a last line without its newline: cut it off, so that
    the next record starts on a line of its own (`read_journal` already ignores such a line)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return
    tail = os.pread(fd, min(size, 1 << 20), max(0, size - (1 << 20)))
    if tail.endswith(b"\n"):
        return
    cut = tail.rfind(b"\n")
    keep = size - len(tail) + cut + 1 if cut >= 0 else 0
    log.warning("%s: dropping a torn last line (%d bytes)", path, size - keep)
    os.ftruncate(fd, keep)
    os.fsync(fd)


def read_journal(path: Path) -> list[Record]:
    """Every complete line; a torn last line (killed mid-write) is ignored, others are errors."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError("journal not found", path=path) from exc
    lines = text.split("\n")
    records: list[Record] = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(record_from_json(json.loads(line)))
        except (json.JSONDecodeError, ValueError, TypeError) as exc:
            if i == len(lines) and not text.endswith("\n"):
                log.warning("%s:%d: ignoring a torn last line", path, i)
                continue
            raise ConfigError(f"bad journal line: {exc}", path=path, line=i) from exc
    return records


def journal_path(report_dir: Path, run_id: str) -> Path:
    return report_dir / f"{run_id}{SUFFIX}"


def latest_run_id(report_dir: Path) -> str | None:
    runs = sorted(report_dir.glob(f"*{SUFFIX}"), key=lambda p: p.stat().st_mtime)
    return runs[-1].name[: -len(SUFFIX)] if runs else None
