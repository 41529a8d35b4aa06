"""The vision summary: the records of a `make demo-vlm`-like run in, the three tables out.

The figures are the tiny VLM's on vLLM CPU (docs/vision.md): 1 GiB KV pool of 2,097,152 tokens,
an encoder budget of 2048 tokens profiled with 30 images, 107 tokens per 64x64 image and 57 per
256x128 one; vLLM refuses 4 images at #img_lim=1.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import pytest
from bench_data import a_cell, stats

from vramphysics.engines.vllm.log import encoder_components, parse_log
from vramphysics.errors import SetupError
from vramphysics.records import BenchCell, CalibrationPoint, ModelInfo, Record, Stats
from vramphysics.vision_summary import (
    MediaShape,
    folder_predictor,
    vision_summary,
)

LIM1, LIM4, TEXT = "vl_tiny-vlm#img_lim=1", "vl_tiny-vlm#img_lim=4", "vl_tiny-llama-hf"
GIB = 2**30
REFUSED = (
    "4 of 4 failed: HTTP 400: At most 1 image(s) may be provided in one prompt. (parameter=image)"
)
FIXTURES = Path(__file__).parent / "fixtures" / "theory"


def info(model: str, location: str | None = "/models/tiny-vlm") -> ModelInfo:
    return ModelInfo(model, "demo-vlm", "vllm", "0.32.0", True, location, None, {})


def point(model: str, ctx: int, *, encoder: bool = True, **components: Any) -> CalibrationPoint:
    comp: dict[str, Any] = {"source": "metrics", "kv_pool_bytes": GIB, "kv_tokens": 2_097_152}
    if encoder:
        comp.update(
            encoder_budget_tokens=2048, encoder_profiled_items=30, encoder_profiled_modality="image"
        )
    comp.update(components)
    return CalibrationPoint(
        model=model,
        engine="vllm",
        ctx=ctx,
        probe="process",
        device="cpu",
        measured_bytes=3 * GIB,
        peak_bytes=3 * GIB,
        baseline_bytes=0,
        n_samples=10,
        ready_s=80.0,
        engine_version="0.32.0",
        engine_components=comp,
    )


def cell(model: str, count: int = 0, w: int = 64, h: int = 64, **kw: Any) -> BenchCell:
    """A cell of prompt 64 at ctx 4096; `count` images of w x h (0: text only)."""
    values: dict[str, Any] = dict(
        model=model, engine="vllm", ctx=4096, prompt_tokens_target=64, cell="p64-o16-c1"
    )
    if count:
        values.update(
            cell=f"p64-o16-c1-i{count}x{w}x{h}",
            media=f"{count} images {w}x{h}",
            media_kind="image",
            media_count=count,
            media_width=w,
            media_height=h,
        )
    values.update(kw)
    return a_cell(**values)


def failed(model: str, count: int, note: str) -> BenchCell:
    nothing = Stats(n=0)
    return cell(
        model,
        count,
        n_measured=0,
        n_failed=4,
        prompt_tokens=None,
        ttft_ms=nothing,
        tpot_ms=nothing,
        itl_ms=nothing,
        e2e_ms=nothing,
        note=note,
    )


def demo_run() -> list[Record]:
    return [
        info(LIM1),
        info(LIM4),
        info(TEXT, "/models/tiny-llama-hf"),
        point(TEXT, 4096, encoder=False),  # a text model: not in the summary
        point(LIM1, 4096),
        point(LIM1, 512),
        point(LIM4, 4096, kv_pool_bytes=GIB // 2, kv_tokens=1_048_576),
        point(LIM4, 512),
        cell(TEXT),
        cell(LIM1, ttft_ms=stats(20.0)),
        cell(LIM1, 1, 64, 64, media_tokens_per_item=107.0, ttft_ms=stats(50.0)),
        cell(LIM1, 1, 256, 128, media_tokens_per_item=57.0, ttft_ms=stats(40.0)),
        failed(LIM1, 4, REFUSED),
        cell(LIM4, ttft_ms=stats(25.0)),
        cell(LIM4, 1, 64, 64, media_tokens_per_item=107.0, ttft_ms=stats(55.0)),
        cell(LIM4, 4, 64, 64, media_tokens_per_item=107.0, ttft_ms=stats(150.0)),
    ]


def predict(model_key: str, location: str | None, shape: MediaShape) -> int | None:
    assert (model_key, location) == ("vl_tiny-vlm", "/models/tiny-vlm")
    return {(64, 64): 107, (256, 128): 57}.get((shape.width, shape.height))


def test_one_summary_per_model_key_and_text_models_left_out() -> None:
    (s,) = vision_summary(demo_run(), predict)
    assert (s.model_key, s.engine) == ("vl_tiny-vlm", "vllm")


def test_limits_per_start_in_order_of_context_then_limit() -> None:
    (s,) = vision_summary(demo_run(), predict)
    got = [(r.ctx, r.img_lim, r.kv_pool_bytes, r.kv_tokens) for r in s.limits]
    assert got == [
        (512, 1, GIB, 2_097_152),
        (512, 4, GIB, 2_097_152),
        (4096, 1, GIB, 2_097_152),
        (4096, 4, GIB // 2, 1_048_576),
    ]
    row = s.limits[0]
    assert (row.encoder_budget_tokens, row.encoder_profiled_items) == (2048, 30)
    assert row.encoder_profiled_modality == "image"
    assert row.kv_bytes_per_token == 512.0
    assert (row.vid_lim, row.model, row.measured_bytes) == (None, LIM1, 3 * GIB)


def test_a_rerun_start_replaces_the_earlier_one() -> None:
    records = [*demo_run(), point(LIM1, 512, kv_pool_bytes=2 * GIB, kv_tokens=4_194_304)]
    (s,) = vision_summary(records)
    row = next(r for r in s.limits if (r.ctx, r.img_lim) == (512, 1))
    assert (row.kv_pool_bytes, row.kv_tokens) == (2 * GIB, 4_194_304)
    assert len(s.limits) == 4


def test_a_point_without_engine_figures_has_none_not_zero() -> None:
    records: list[Record] = [dataclasses.replace(point(LIM1, 512), engine_components={})]
    (s,) = vision_summary(records)
    (row,) = s.limits
    assert (row.kv_pool_bytes, row.kv_tokens, row.encoder_budget_tokens) == (None, None, None)
    assert row.kv_bytes_per_token is None


def test_tokens_per_image_measured_against_predicted() -> None:
    (s,) = vision_summary(demo_run(), predict)
    small, wide = s.tokens
    assert small.shape == MediaShape("image", 64, 64)
    # three cells measured 64x64 (1 image at both limits, 4 images at #img_lim=4); the
    # refused 4-image cell at #img_lim=1 measured nothing and does not count
    assert (small.measured, small.n_cells, small.predicted) == (107.0, 3, 107)
    assert (small.exact, small.difference) == (True, 0.0)
    assert small.models == (LIM1, LIM4)
    assert (wide.shape.width, wide.shape.height, wide.measured, wide.predicted) == (
        256,
        128,
        57.0,
        57,
    )


def test_a_miss_of_the_theory_shows() -> None:
    records = [*demo_run(), cell(LIM4, 2, 256, 128, media_tokens_per_item=59.0)]
    (s,) = vision_summary(records, predict)
    wide = s.tokens[1]
    assert (wide.measured_min, wide.measured_max, wide.measured) == (57.0, 59.0, 58.0)
    assert (wide.exact, wide.difference) == (False, 1.0)


def test_without_a_predictor_nothing_is_predicted() -> None:
    (s,) = vision_summary(demo_run())
    assert all(r.predicted is None and r.exact is None for r in s.tokens)


def test_ttft_by_image_count_with_the_refused_cell_as_failed() -> None:
    (s,) = vision_summary(demo_run(), predict)
    lim1 = [r for r in s.ttft if r.model == LIM1]
    got = [
        (r.media_count, r.shape and (r.shape.width, r.shape.height), r.ttft_p50_ms, r.status)
        for r in lim1
    ]
    assert got == [
        (0, None, 20.0, "ok"),
        (1, (64, 64), 50.0, "ok"),
        (1, (256, 128), 40.0, "ok"),
        (4, (64, 64), None, "FAILED"),
    ]
    refused = lim1[-1]
    assert "At most 1 image(s) may be provided" in refused.note
    assert (refused.n_measured, refused.n_failed) == (0, 4)
    assert lim1[1].text_ttft_p50_ms == 20.0
    assert lim1[1].ttft_over_text == 2.5
    lim4 = [(r.media_count, r.ttft_p50_ms, r.ttft_over_text) for r in s.ttft if r.model == LIM4]
    assert lim4 == [(0, 25.0, 1.0), (1, 55.0, 2.2), (4, 150.0, 6.0)]


def test_ttft_of_a_prompt_without_a_text_only_cell() -> None:
    records: list[Record] = [cell(LIM4, 1, prompt_tokens_target=512, cell="p512-o16-c1-i1x64x64")]
    (s,) = vision_summary(records)
    (row,) = s.ttft
    assert (row.prompt_tokens_target, row.text_ttft_p50_ms, row.ttft_over_text) == (512, None, None)


def test_a_bad_model_id_names_it() -> None:
    with pytest.raises(SetupError, match="img_lim"):
        vision_summary([cell("vl_tiny-vlm#img_lim=x", 1)])


def test_folder_predictor_reads_the_theory(tmp_path: Path) -> None:
    folder = tmp_path / "qwen"
    folder.mkdir()
    shutil.copy(FIXTURES / "qwen2.5-vl-7b-instruct.config.json", folder / "config.json")
    shutil.copy(
        FIXTURES / "qwen2.5-vl-7b-instruct.preprocessor_config.json",
        folder / "preprocessor_config.json",
    )
    guess = folder_predictor()
    assert guess("vl_qwen", str(folder), MediaShape("image", 448, 448)) == 258
    assert guess("vl_qwen", str(folder), MediaShape("video", 1280, 720, 20, 2.0)) == 11_962
    assert guess("vl_qwen", "http://127.0.0.1:8000", MediaShape("image", 448, 448)) is None
    assert guess("vl_qwen", None, MediaShape("image", 448, 448)) is None


def test_the_encoder_facts_of_a_vllm_log_are_what_the_summary_reads() -> None:
    """vLLM's log facts as `encoder_components` puts them in engine_components."""
    log = (
        "Encoder cache will be initialized with a budget of 2048 tokens, and profiled with "
        "30 image items of the maximum feature size.\n"
    )
    components = encoder_components(parse_log(log))
    (s,) = vision_summary([point(LIM1, 512, encoder=False, **components)])
    (row,) = s.limits
    assert (row.encoder_budget_tokens, row.encoder_profiled_items) == (2048, 30)
    assert row.encoder_profiled_modality == "image"
    assert encoder_components(parse_log("")) == {}
