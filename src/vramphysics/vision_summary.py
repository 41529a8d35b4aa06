"""The vision side of a run, per model: what the media limits cost, what an image takes, and how
much later the first token comes with images. Records in, frozen records out; nothing is read
or written here (`folder_predictor` is the one helper that reads files, through the theory).

Per model key (the model ID without its flags, `vl_tiny-vlm` for `vl_tiny-vlm#img_lim=4`):

- `limits`: one row per calibration start of a model ID, with its `#img_lim` / `#vid_lim`, the
  KV pool (tokens and bytes, the engine's own figures) and vLLM's encoder cache budget, so the
  rows of one context at different limits are the curve "what raising the limit costs".
- `tokens`: one row per media shape (kind, width x height, frames): the tokens one item took by
  the engine's count (`BenchCell.media_tokens_per_item`, over every cell of that shape) beside
  the theory's prediction, when a predictor is given.
- `ttft`: per model ID, context and prompt, the TTFT p50 of the text-only cell (media count 0)
  and of each media cell of the same prompt; a cell whose every request failed is a FAILED row
  with the engine's reason (e.g. vLLM refusing 4 images at `#img_lim=1`).

A model appears when something in the run is about vision: a media cell, an `#img_lim` /
`#vid_lim` flag, or an encoder budget in a calibration point.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vramphysics.records import BenchCell, CalibrationPoint, ModelInfo, Record
from vramphysics.setups import ModelSpec, parse_model_id

# engine_components keys a calibration point carries for a multimodal model (vLLM's log facts)
ENCODER_BUDGET_KEY = "encoder_budget_tokens"
ENCODER_ITEMS_KEY = "encoder_profiled_items"
ENCODER_MODALITY_KEY = "encoder_profiled_modality"


@dataclass(frozen=True)
class MediaShape:
    """One image or video as a benchmark cell sent it."""

    kind: str  # "image" | "video"
    width: int
    height: int
    frames: int = 1
    fps: float | None = None

    @property
    def label(self) -> str:
        """For people: "image 256x128", "video 320x240, 8 frames at 2 fps"."""
        text = f"{self.kind} {self.width}x{self.height}"
        if self.kind == "video":
            text += f", {self.frames} frames" + (f" at {self.fps:g} fps" if self.fps else "")
        return text


# (model key, the folder ModelInfo.location names or None, shape) -> predicted tokens or None
PredictTokens = Callable[[str, str | None, MediaShape], int | None]


@dataclass(frozen=True)
class LimitRow:
    """One calibration start: the media limits it ran with and what the engine reserved."""

    model: str  # the model ID with its flags
    engine: str
    ctx: int
    img_lim: int | None
    vid_lim: int | None
    kv_pool_bytes: int | None
    kv_tokens: int | None
    encoder_budget_tokens: int | None
    encoder_profiled_items: int | None
    encoder_profiled_modality: str | None
    measured_bytes: int

    @property
    def kv_bytes_per_token(self) -> float | None:
        if self.kv_pool_bytes is None or not self.kv_tokens:
            return None
        return self.kv_pool_bytes / self.kv_tokens


@dataclass(frozen=True)
class TokensRow:
    """Tokens one item of a shape took, by the engine's count, against the theory."""

    shape: MediaShape
    measured: float | None  # mean of the cells' media_tokens_per_item (None: none measured)
    measured_min: float | None
    measured_max: float | None
    n_cells: int  # cells with a measured figure
    predicted: int | None
    models: tuple[str, ...]  # the model IDs whose cells measured it

    @property
    def difference(self) -> float | None:
        """measured - predicted, in tokens (0 when the theory is exact)."""
        if self.measured is None or self.predicted is None:
            return None
        return self.measured - self.predicted

    @property
    def exact(self) -> bool | None:
        """Every cell measured exactly the prediction (None: nothing to compare)."""
        if self.measured_min is None or self.measured_max is None or self.predicted is None:
            return None
        return self.measured_min == self.measured_max == self.predicted


@dataclass(frozen=True)
class TtftRow:
    """The TTFT p50 of one cell, beside the text-only cell of the same prompt."""

    model: str
    engine: str
    ctx: int
    prompt_tokens_target: int
    concurrency: int
    warm_prefix: bool
    cell: str
    media_kind: str  # "" for the text-only cell
    media_count: int  # 0 for the text-only cell
    shape: MediaShape | None  # None for the text-only cell
    ttft_p50_ms: float | None
    text_ttft_p50_ms: float | None  # the text-only cell's (None when it has none)
    n_measured: int
    n_failed: int
    status: str  # "ok" | "FAILED" (every request failed)
    note: str  # the cell's note: for a FAILED row, the engine's reason

    @property
    def ttft_over_text(self) -> float | None:
        """How many times the text-only TTFT p50 this cell's is."""
        if self.ttft_p50_ms is None or not self.text_ttft_p50_ms:
            return None
        return self.ttft_p50_ms / self.text_ttft_p50_ms


@dataclass(frozen=True)
class VisionSummary:
    model_key: str
    engine: str
    limits: tuple[LimitRow, ...]
    tokens: tuple[TokensRow, ...]
    ttft: tuple[TtftRow, ...]


# --------------------------------------------------------------------------- entry point


def vision_summary(
    records: Iterable[Record], predict: PredictTokens | None = None
) -> tuple[VisionSummary, ...]:
    """The vision summary of every model the run's records say something visual about, in
    order of model key. A model ID that does not parse raises SetupError naming it."""
    infos: dict[str, ModelInfo] = {}
    points: list[CalibrationPoint] = []
    cells: list[BenchCell] = []
    for r in records:
        if isinstance(r, ModelInfo):
            infos[r.model] = r
        elif isinstance(r, CalibrationPoint):
            points.append(r)
        elif isinstance(r, BenchCell):
            cells.append(r)
    specs = {m: parse_model_id(m) for m in {*infos, *(p.model for p in points), *_models(cells)}}
    keys = sorted({specs[m].key for m in specs if _is_visual(specs[m], points, cells)})
    out = []
    for key in keys:
        mine = {m for m, s in specs.items() if s.key == key}
        my_points = [p for p in points if p.model in mine]
        my_cells = [c for c in cells if c.model in mine]
        location = _location(infos, mine)
        out.append(
            VisionSummary(
                model_key=key,
                engine=_engine(mine, infos, my_points, my_cells),
                limits=limit_rows(my_points, specs),
                tokens=tokens_rows(my_cells, key, location, predict),
                ttft=ttft_rows(my_cells),
            )
        )
    return tuple(out)


def _models(cells: Sequence[BenchCell]) -> set[str]:
    return {c.model for c in cells}


def _is_visual(
    spec: ModelSpec, points: Sequence[CalibrationPoint], cells: Sequence[BenchCell]
) -> bool:
    if spec.img_lim is not None or spec.vid_lim is not None:
        return True
    raw = spec.raw
    if any(c.model == raw and c.media_count for c in cells):
        return True
    return any(p.model == raw and _int(p.engine_components, ENCODER_BUDGET_KEY) for p in points)


def _engine(
    models: set[str],
    infos: dict[str, ModelInfo],
    points: Sequence[CalibrationPoint],
    cells: Sequence[BenchCell],
) -> str:
    """The engine of a model key (its prefix picks one, so every record agrees)."""
    names = [infos[m].engine for m in sorted(models) if m in infos]
    names += [p.engine for p in points] + [c.engine for c in cells]
    return names[0] if names else ""


def _location(infos: dict[str, ModelInfo], models: set[str]) -> str | None:
    for m in sorted(models):
        info = infos.get(m)
        if info is not None and info.location:
            return info.location
    return None


# --------------------------------------------------------------------------- (a) limits


def limit_rows(
    points: Sequence[CalibrationPoint], specs: dict[str, ModelSpec]
) -> tuple[LimitRow, ...]:
    """One row per (model ID, context), the last start of each (a rerun replaces a start), in
    order of context, then image limit, then video limit (no limit first)."""
    last: dict[tuple[str, int], CalibrationPoint] = {}
    for p in points:
        last[(p.model, p.ctx)] = p
    rows = [_limit_row(p, specs[p.model]) for p in last.values()]
    return tuple(
        sorted(rows, key=lambda r: (r.ctx, _lim_order(r.img_lim), _lim_order(r.vid_lim), r.model))
    )


def _lim_order(lim: int | None) -> int:
    return -1 if lim is None else lim


def _limit_row(p: CalibrationPoint, spec: ModelSpec) -> LimitRow:
    comp = p.engine_components
    modality = comp.get(ENCODER_MODALITY_KEY)
    return LimitRow(
        model=p.model,
        engine=p.engine,
        ctx=p.ctx,
        img_lim=spec.img_lim,
        vid_lim=spec.vid_lim,
        kv_pool_bytes=_int(comp, "kv_pool_bytes"),
        kv_tokens=_int(comp, "kv_tokens"),
        encoder_budget_tokens=_int(comp, ENCODER_BUDGET_KEY),
        encoder_profiled_items=_int(comp, ENCODER_ITEMS_KEY),
        encoder_profiled_modality=modality if isinstance(modality, str) else None,
        measured_bytes=p.measured_bytes,
    )


def _int(d: dict[str, Any], key: str) -> int | None:
    value = d.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# --------------------------------------------------------------------------- (b) tokens


def cell_shape(cell: BenchCell) -> MediaShape | None:
    """The shape of one item of a media cell (None: a text-only cell, or sizes not recorded)."""
    if not cell.media_count or cell.media_width is None or cell.media_height is None:
        return None
    frames = cell.video_frames if cell.media_kind == "video" and cell.video_frames else 1
    fps = cell.video_fps if cell.media_kind == "video" else None
    return MediaShape(cell.media_kind, cell.media_width, cell.media_height, frames, fps)


def tokens_rows(
    cells: Sequence[BenchCell],
    model_key: str,
    location: str | None = None,
    predict: PredictTokens | None = None,
) -> tuple[TokensRow, ...]:
    """Per media shape: the engine's tokens per item over every cell of that shape (failed cells
    measure nothing and are left out of the figures), and the prediction."""
    by_shape: dict[MediaShape, list[BenchCell]] = {}
    for c in cells:
        shape = cell_shape(c)
        if shape is not None:
            by_shape.setdefault(shape, []).append(c)
    rows = []
    for shape, group in by_shape.items():
        values = [c.media_tokens_per_item for c in group if c.media_tokens_per_item is not None]
        rows.append(
            TokensRow(
                shape=shape,
                measured=statistics.fmean(values) if values else None,
                measured_min=min(values) if values else None,
                measured_max=max(values) if values else None,
                n_cells=len(values),
                predicted=predict(model_key, location, shape) if predict else None,
                models=tuple(sorted({c.model for c in group})),
            )
        )
    return tuple(sorted(rows, key=lambda r: _shape_order(r.shape)))


def _shape_order(s: MediaShape) -> tuple[str, int, int, int]:
    return (s.kind, s.width * s.height, s.width, s.frames)


# --------------------------------------------------------------------------- (c) TTFT


def ttft_rows(cells: Sequence[BenchCell]) -> tuple[TtftRow, ...]:
    """For every prompt that has media cells: its text-only cell (media count 0, when the run
    has it) and each media cell, by model ID, context, prompt, then media count."""
    groups: dict[tuple[str, int, int, int, bool], list[BenchCell]] = {}
    for c in cells:
        key = (c.model, c.ctx, c.prompt_tokens_target, c.concurrency, c.warm_prefix)
        groups.setdefault(key, []).append(c)
    rows: list[TtftRow] = []
    for key in sorted(groups):
        group = groups[key]
        media = [c for c in group if c.media_count]
        if not media:
            continue
        text = [c for c in group if not c.media_count]
        text_p50 = text[-1].ttft_ms.p50 if text else None
        ordered = sorted(media, key=lambda c: (c.media_kind, c.media_count, _area(c)))
        rows += [_ttft_row(c, text_p50) for c in text[-1:] + ordered]
    return tuple(rows)


def _area(c: BenchCell) -> int:
    return (c.media_width or 0) * (c.media_height or 0)


def _ttft_row(c: BenchCell, text_p50: float | None) -> TtftRow:
    return TtftRow(
        model=c.model,
        engine=c.engine,
        ctx=c.ctx,
        prompt_tokens_target=c.prompt_tokens_target,
        concurrency=c.concurrency,
        warm_prefix=c.warm_prefix,
        cell=c.cell,
        media_kind=c.media_kind,
        media_count=c.media_count,
        shape=cell_shape(c),
        ttft_p50_ms=c.ttft_ms.p50,
        text_ttft_p50_ms=text_p50,
        n_measured=c.n_measured,
        n_failed=c.n_failed,
        status="FAILED" if c.n_measured == 0 else "ok",
        note=c.note,
    )


# --------------------------------------------------------------------------- predictor


def folder_predictor() -> PredictTokens:
    """A predictor from the theory: the preprocessor config of the folder a model was found in
    (ModelInfo.location); None where the location is not a folder (an attached server's URL)."""
    from vramphysics.theory.vision_load import predict_media_tokens

    def predict(model_key: str, location: str | None, shape: MediaShape) -> int | None:
        if location is None or not Path(location).is_dir():
            return None
        return predict_media_tokens(
            Path(location), shape.kind, shape.width, shape.height, shape.frames, shape.fps
        )

    return predict
