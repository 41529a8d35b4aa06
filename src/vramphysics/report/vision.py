"""The Vision sheet: what images and videos cost, for every model the run measured them on.

Three kinds of row, one table (`What`): the KV pool and encoder budget at each `#img_lim` /
`#vid_lim` start ("limit"), the context one image or video takes, measured beside the theory of
the model's preprocessor config ("tokens"), and the TTFT p50 of each media cell beside the
text-only cell of the same prompt ("ttft"; a refused cell is FAILED with the engine's reason).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vramphysics.outcome import Outcome
from vramphysics.report.columns import (
    F_COUNT,
    F_GIB,
    F_MS,
    F_RATIO,
    F_TOKENS,
    Column,
    ExtraSheet,
)
from vramphysics.vision_summary import MediaShape, VisionSummary, folder_predictor, vision_summary

GIB = 2**30

VISION_COLUMNS = (
    Column("Model", "The model ID (its #img_lim / #vid_lim flags on limit rows)", 34),
    Column("Engine", "Engine", 10),
    Column("What", "limit: one start's KV pool; tokens: per image or video; ttft: one cell", 8),
    Column("Image limit", "#img_lim (vLLM --limit-mm-per-prompt image)", 8, F_COUNT),
    Column("Video limit", "#vid_lim", 8, F_COUNT),
    Column("KV pool (GiB)", "The engine's own KV pool at that start", 12, F_GIB),
    Column("KV pool (tokens)", "The engine's own KV pool in tokens", 12, F_TOKENS),
    Column(
        "Encoder budget (tokens)",
        "vLLM's encoder cache budget (its profiling run is sized by the limits)",
        12,
        F_TOKENS,
    ),
    Column("Media", "What each request carried", 22),
    Column(
        "Tokens per item",
        "Measured: prompt tokens with the media minus the text-only cell's, per item, by the "
        "engine's own count (mean over cells)",
        12,
        F_TOKENS,
    ),
    Column(
        "Predicted tokens",
        "From the model's preprocessor config (estimate --image / --video)",
        12,
        F_TOKENS,
    ),
    Column("Exact", "yes: every cell measured exactly the prediction", 6),
    Column("TTFT p50 (ms)", "The media cell's TTFT p50", 10, F_MS),
    Column("Text TTFT p50 (ms)", "The text-only cell of the same prompt", 10, F_MS),
    Column("TTFT / text", "How many times the text-only TTFT", 8, F_RATIO),
    Column("Status", "ok, or FAILED when the engine refused every request", 8),
    Column("Note", "The engine's reason for a FAILED cell; what was adjusted", 40),
)


def _shape(s: MediaShape | None, count: int = 1) -> str | None:
    if s is None:
        return "text only"
    noun = s.kind + ("s" if count != 1 else "")
    frames = f", {s.frames} frames" if s.kind == "video" else ""
    return f"{count} {noun} {s.width}x{s.height}{frames}"


def _yes(v: bool | None) -> str | None:
    return None if v is None else ("yes" if v else "no")


def _rows(v: VisionSummary) -> list[tuple[Any, ...]]:
    blank6 = (None,) * 6
    rows: list[tuple[Any, ...]] = []
    for lim in v.limits:
        pool = None if lim.kv_pool_bytes is None else round(lim.kv_pool_bytes / GIB, 4)
        rows.append(
            (lim.model, lim.engine, "limit", lim.img_lim, lim.vid_lim, pool, lim.kv_tokens,
             lim.encoder_budget_tokens, None, None, None, None, None, None, None, "ok", None)
        )  # fmt: skip
    for t in v.tokens:
        measured = None if t.measured is None else round(t.measured, 1)
        rows.append(
            (v.model_key, v.engine, "tokens", None, None, None, None, None, _shape(t.shape),
             measured, t.predicted, _yes(t.exact), None, None, None,
             "ok" if t.measured is not None else "FAILED", None)
        )  # fmt: skip
    for c in v.ttft:
        ratio = None if c.ttft_over_text is None else round(c.ttft_over_text, 3)
        rows.append(
            (c.model, c.engine, "ttft", *blank6[:5], _shape(c.shape, c.media_count), None, None,
             None, c.ttft_p50_ms, c.text_ttft_p50_ms, ratio, c.status, c.note or None)
        )  # fmt: skip
    return rows


def vision_sheet(outcome: Outcome) -> ExtraSheet | None:
    """The Vision sheet, or None when the run measured nothing visual."""
    records: Sequence[Any] = (*outcome.infos, *outcome.points, *outcome.cells)
    summaries = vision_summary(records, folder_predictor())
    if not summaries:
        return None
    rows = tuple(row for v in summaries for row in _rows(v))
    return ExtraSheet("Vision", VISION_COLUMNS, rows)
