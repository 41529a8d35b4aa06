"""The bench core and the vision summary together, on `make demo-vlm`'s own grid
(config.cpu-vlm.yaml) and an engine double that behaves as vLLM does with the tiny VLM: 107
prompt tokens per 64x64 image, 57 per 256x128 one, and an HTTP 400 for more images than the
model ID's #img_lim. The summary must show tokens per image equal to the theory, TTFT with 0, 1
and 4 images, and the refused cell as a FAILED row naming vLLM's reason."""

from __future__ import annotations

import time
from pathlib import Path

from vramphysics.bench import StartFacts, bench_plan, run_bench
from vramphysics.config import load_config
from vramphysics.engines.base import Availability, Completion, Engine, GenRequest, Usage
from vramphysics.errors import EngineError
from vramphysics.records import Record, StatusRow
from vramphysics.setups import ModelSpec, load_setups
from vramphysics.vision_summary import MediaShape, vision_summary

ROOT = Path(__file__).resolve().parent.parent
TOKENS = {(64, 64): 107, (256, 128): 57}  # the tiny VLM's, by the theory (docs/vision.md)


class _VlmDouble(Engine):
    """Counts 1 token per prompt character plus the tiny VLM's tokens per image; refuses
    requests with more images than `img_lim`, with vLLM's message; a prefill that grows with
    the image tokens, so TTFT grows with the image count."""

    name = "vllm"

    def __init__(self, img_lim: int) -> None:
        super().__init__(state_dir=Path("."), log_dir=Path("."))
        self.img_lim = img_lim

    def version(self) -> str:
        return "double"

    def check_available(self, spec: ModelSpec) -> Availability:
        return Availability(True, "here")

    def start(self, spec: ModelSpec, ctx: int) -> None:
        return None

    def wait_ready(self) -> None:
        return None

    def complete(self, prompt: str, max_tokens: int) -> Completion:
        raise AssertionError("benchmarks use generate")

    def root_pid(self) -> int | None:
        return None

    def stop(self) -> None:
        return None

    def count_prompt_tokens(self, text: str) -> int:
        return len(text)

    def generate(self, request: GenRequest) -> Completion:
        if len(request.media) > self.img_lim:
            raise EngineError(
                "request_failed",
                f"HTTP 400: At most {self.img_lim} image(s) may be provided in one prompt. "
                "(parameter=image)",
            )
        image_tokens = sum(TOKENS[(m.width, m.height)] for m in request.media)
        sent = time.monotonic()
        time.sleep(0.002 + image_tokens * 0.0001)  # the prefill
        times = [time.monotonic() + 0.0005 * i for i in range(request.output_tokens)]
        return Completion(
            sent_s=sent,
            first_text_s=times[0],
            last_text_s=times[-1],
            end_s=times[-1],
            usage=Usage(
                prompt_tokens=self.count_prompt_tokens(request.prompt) + image_tokens,
                completion_tokens=request.output_tokens,
                source="engine-usage",
            ),
            n_chunks=len(times),
            content_times_s=tuple(times),
            finish_reason="length",
        )


def _demo_records() -> list[Record]:
    cfg = load_config(ROOT / "config.cpu-vlm.yaml")
    bench = cfg.bench.model_copy(update={"repetitions": 2, "warmup_requests": 0})
    ctx = max(cfg.sweep.contexts)
    records: list[Record] = []
    for spec in load_setups(ROOT / "test_setups.yaml")["demo-vlm"]:
        assert spec.img_lim is not None
        engine = _VlmDouble(spec.img_lim)
        facts = StartFacts(model=spec.raw, engine="vllm", ctx=ctx, engine_version="double")
        plan = bench_plan(bench, engine, ctx, warm=False)
        run_bench(engine, bench, plan, facts=facts, memory=None, record=records.append)
    return records


def _predict(model_key: str, location: str | None, shape: MediaShape) -> int | None:
    return TOKENS.get((shape.width, shape.height))


def test_demo_vlm_grid_gives_tokens_per_image_ttft_by_count_and_the_refusal() -> None:
    records = _demo_records()
    (s,) = vision_summary(records, _predict)
    assert s.model_key == "vl_tiny-vlm"
    got = [(r.shape.width, r.shape.height, r.measured, r.predicted, r.exact) for r in s.tokens]
    assert got == [(64, 64, 107.0, 107, True), (256, 128, 57.0, 57, True)]
    by_model = {
        model: [(r.media_count, r.status) for r in s.ttft if r.model == model]
        for model in ("vl_tiny-vlm#img_lim=1", "vl_tiny-vlm#img_lim=4")
    }
    assert by_model == {
        "vl_tiny-vlm#img_lim=1": [(0, "ok"), (1, "ok"), (1, "ok"), (4, "FAILED")],
        "vl_tiny-vlm#img_lim=4": [(0, "ok"), (1, "ok"), (1, "ok"), (4, "ok")],
    }
    refused = next(r for r in s.ttft if r.status == "FAILED")
    assert "At most 1 image(s) may be provided in one prompt" in refused.note
    assert refused.ttft_p50_ms is None
    four = next(r for r in s.ttft if r.media_count == 4 and r.status == "ok")
    assert four.ttft_p50_ms is not None and four.text_ttft_p50_ms is not None
    assert four.ttft_p50_ms > four.text_ttft_p50_ms  # the double's prefill grows with images
    # the bench core's FAILED step row names the same reason: nothing measured is lost
    (status,) = [r for r in records if isinstance(r, StatusRow)]
    assert status.model == "vl_tiny-vlm#img_lim=1" and status.status == "FAILED"
    assert "p64-o16-c1-i4x64x64" in status.reason and "At most 1 image(s)" in status.reason
