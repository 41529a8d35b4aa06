"""One benchmark cell on a fake engine: concurrency, warm-up discarded, every request a record,
and the memory sampled while the measured requests ran (a fake probe proves the window)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from bench_data import a_cell

from vramphysics.bench import StartFacts, bench_plan, run_bench
from vramphysics.bench.cells import run_cell
from vramphysics.bench.prompts import make_prompts
from vramphysics.bench.workload import CellPlan
from vramphysics.config import BenchConfig
from vramphysics.engines.base import Availability, Completion, Engine, GenRequest, Usage
from vramphysics.errors import EngineError
from vramphysics.probes import RSS, Probe
from vramphysics.recorder import Recorder
from vramphysics.records import BenchCell, BenchRequest, Record, StatusRow, WarningRow
from vramphysics.setups import ModelSpec

IDLE = 100_000_000
TOKENS_PER_IMAGE = 42
BUSY = 150_000_000


class _Engine(Engine):
    """Answers `generate` after a pause, one content event per token; counts prompt tokens as
    characters; remembers how many requests are in flight at once."""

    name = "fake"

    def __init__(self, *, fail_every: int = 0, limit: int | None = None) -> None:
        super().__init__(state_dir=Path("."), log_dir=Path("."))
        self.in_flight = 0
        self.most_in_flight = 0
        self.requests: list[GenRequest] = []
        self.fail_every = fail_every
        self.limit = limit
        self._lock = threading.Lock()

    def version(self) -> str:
        return "fake 1"

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
        return 1 + len(text)

    def max_concurrency(self) -> tuple[int | None, str]:
        return self.limit, "it serves one at a time"

    def generate(self, request: GenRequest) -> Completion:
        with self._lock:
            self.requests.append(request)
            n = len(self.requests)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.fail_every and n % self.fail_every == 0:
                raise EngineError("request_failed", "HTTP 400: too many images")
            sent = time.monotonic()
            time.sleep(0.05)  # the prefill
            times = []
            for _ in range(request.output_tokens):
                time.sleep(0.005)
                times.append(time.monotonic())
            return Completion(
                sent_s=sent,
                first_text_s=times[0],
                last_text_s=times[-1],
                end_s=time.monotonic(),
                usage=Usage(
                    prompt_tokens=self.count_prompt_tokens(request.prompt)
                    + TOKENS_PER_IMAGE * len(request.media),
                    completion_tokens=request.output_tokens,
                    source="engine-usage",
                ),
                n_chunks=len(times),
                content_times_s=tuple(times),
                finish_reason="length",
            )
        finally:
            with self._lock:
                self.in_flight -= 1


class _BusyProbe(Probe):
    """Memory that is higher while a request is in flight."""

    name = "process"
    device = "cpu"
    series_metric = RSS
    exact_metric = None

    def __init__(self, engine: _Engine) -> None:
        self.engine = engine

    def read(self) -> int:
        return BUSY if self.engine.in_flight else IDLE


FACTS = StartFacts(model="fake:m", engine="fake", ctx=4096, engine_version="fake 1")


def _plan(concurrency: int = 1, prompt: int = 200, out: int = 8) -> CellPlan:
    return CellPlan(f"p{prompt}-o{out}-c{concurrency}", prompt, out, concurrency, False)


def test_a_cell_discards_warmup_and_records_every_request() -> None:
    engine = _Engine()
    records: list[Record] = []
    plan = _plan(concurrency=2)
    cell = run_cell(
        engine,
        plan,
        make_prompts(plan.cell, 200, engine.count_prompt_tokens),
        warmup_requests=2,
        repetitions=3,
        facts=FACTS,
        memory=None,
        record=records.append,
    )
    reqs = [r for r in records if isinstance(r, BenchRequest)]
    assert [r.phase for r in reqs].count("warmup") == 4  # 2 x concurrency
    assert [r.phase for r in reqs].count("measured") == 6  # 3 x concurrency
    assert engine.most_in_flight == 2
    assert records[-1] == cell and cell.n_measured == 6 and cell.n_failed == 0
    assert cell.ttft_ms.n == 6 and cell.ttft_ms.p50 is not None and cell.ttft_ms.p50 >= 50
    assert cell.itl_ms.n == 6 * 7  # 7 gaps between 8 content events, pooled
    assert cell.prompt_tokens == 200 and cell.output_tokens == 8
    assert cell.tpot_ms.p50 is not None and 4 <= cell.tpot_ms.p50 < 50
    assert len({r.prompt for r in engine.requests}) == 10  # a unique prefix per request
    assert all(len(r.prompt) == 199 for r in engine.requests)
    assert all(r.output_tokens == 8 and r.exact for r in engine.requests)


def test_memory_is_sampled_while_the_requests_run() -> None:
    engine = _Engine()
    recorder = Recorder(_BusyProbe(engine), interval_s=0.005)
    recorder.start()
    time.sleep(0.1)  # idle before the cell: not in its window
    plan = _plan()
    try:
        cell = run_cell(
            engine,
            plan,
            make_prompts(plan.cell, 200, engine.count_prompt_tokens),
            warmup_requests=0,
            repetitions=4,
            facts=FACTS,
            memory=recorder,
            record=lambda r: None,
        )
    finally:
        trace = recorder.stop()
    assert cell.peak_bytes == BUSY  # (the baseline is 0 for a process probe)
    assert cell.steady_bytes == BUSY  # the median: requests run back to back
    assert cell.memory_metric == RSS and cell.probe == "process" and cell.device == "cpu"
    assert min(s.used_bytes for s in trace.samples) == IDLE  # idle samples existed, outside


def test_failed_requests_are_rows_and_the_cell_says_so() -> None:
    engine = _Engine(fail_every=3)
    records: list[Record] = []
    plan = _plan()
    cell = run_cell(
        engine,
        plan,
        make_prompts(plan.cell, 50, engine.count_prompt_tokens),
        warmup_requests=0,
        repetitions=6,
        facts=FACTS,
        memory=None,
        record=records.append,
    )
    failed = [r for r in records if isinstance(r, BenchRequest) and not r.ok]
    assert len(failed) == 2 and failed[0].error == "HTTP 400: too many images"
    assert cell.n_measured == 4 and cell.n_failed == 2
    assert "2 of 6 failed: HTTP 400: too many images" in cell.note


def test_a_cell_where_everything_fails_is_a_failed_step() -> None:
    engine = _Engine(fail_every=1)
    records: list[Record] = []
    cfg = BenchConfig(prompt_tokens=[64], repetitions=2, warmup_requests=0, output_tokens=4)
    run_bench(
        engine,
        cfg,
        bench_plan(cfg, engine, 1024, warm=False),
        facts=FACTS,
        memory=None,
        record=records.append,
    )
    (status,) = [r for r in records if isinstance(r, StatusRow)]
    assert status.status == "FAILED" and "p64-o4-c1" in status.reason
    assert status.failure_kind == "request_failed" and status.ctx == 4096


def test_resume_skips_finished_cells_and_the_deadline_stops_new_ones() -> None:
    engine = _Engine(limit=1)
    cfg = BenchConfig(
        prompt_tokens=[32, 64, 96],
        repetitions=1,
        warmup_requests=0,
        output_tokens=4,
        concurrency=[1, 2],
    )
    plan = bench_plan(cfg, engine, 1024, warm=False, finished=[a_cell(cell="p32-o4-c1")])
    assert [c.cell for c in plan.pending] == ["p64-o4-c1", "p96-o4-c1"]  # c2 held to 1
    records: list[Record] = []
    run_bench(
        engine,
        cfg,
        plan,
        facts=FACTS,
        memory=None,
        record=records.append,
        deadline=time.monotonic() - 1,
    )
    (warning,) = records
    assert isinstance(warning, WarningRow)
    assert "bench.max_s_per_model" in warning.message and "p64-o4-c1, p96-o4-c1" in warning.message
    assert engine.requests == []


def test_the_cell_record_round_trips() -> None:
    engine = _Engine()
    plan = _plan()
    cell = run_cell(
        engine,
        plan,
        make_prompts(plan.cell, 100, engine.count_prompt_tokens),
        warmup_requests=0,
        repetitions=2,
        facts=FACTS,
        memory=None,
        record=lambda r: None,
    )
    assert BenchCell.from_json(cell.to_json()) == cell
    with pytest.raises(TypeError):
        BenchCell.from_json({"model": "x"})


def test_media_cells_carry_fresh_images_and_measure_tokens_per_image() -> None:
    engine = _Engine()
    cfg = BenchConfig(
        prompt_tokens=[64],
        repetitions=2,
        warmup_requests=1,
        output_tokens=4,
        images=[{"count": 1, "width": 64, "height": 48}, {"count": 4, "width": 32, "height": 32}],
    )
    plan = bench_plan(cfg, engine, 1024, warm=False)
    assert [c.cell for c in plan.cells] == ["p64-o4-c1", "p64-o4-c1-i1x64x48", "p64-o4-c1-i4x32x32"]
    cells = run_bench(engine, cfg, plan, facts=FACTS, memory=None, record=lambda r: None)
    text, one, four = cells
    assert text.media == "" and text.media_tokens_per_item is None
    assert (one.media, one.media_kind, one.media_count) == ("1 image 64x48", "image", 1)
    assert (four.media_width, four.media_height, four.media_count) == (32, 32, 4)
    assert one.media_tokens_per_item == TOKENS_PER_IMAGE == four.media_tokens_per_item
    sent = [r.media for r in engine.requests if r.media]
    assert [len(m) for m in sent] == [1, 1, 1, 4, 4, 4]
    blobs = [item.data for m in sent for item in m]
    assert len(set(blobs)) == len(blobs)  # every image is new: no cache can hit
    assert all(
        item.mime == "image/jpeg" and item.data[:2] == b"\xff\xd8" for m in sent for item in m
    )


def test_an_engine_without_stream_counts_has_its_prompts_counted_before_any_request() -> None:
    """A tokenizer call between timed requests slows the next prefill: every prompt of the cell
    is counted before the first request, and the count travels with the request."""
    calls: list[str] = []

    class _Apart(_Engine):
        def counts_prompts_apart(self) -> bool:
            return True

        def count_prompt_tokens(self, text: str) -> int:
            calls.append("count")
            return super().count_prompt_tokens(text)

        def generate(self, request: GenRequest) -> Completion:
            calls.append("generate")
            return super().generate(request)

    engine = _Apart()
    plan = _plan()
    prompts = make_prompts(plan.cell, 60, engine.count_prompt_tokens)
    calls.clear()
    run_cell(engine, plan, prompts, warmup_requests=1, repetitions=3, facts=FACTS, memory=None,
             record=lambda r: None)  # fmt: skip
    # (the fake's own usage counts again inside generate: only the order before matters)
    assert calls[:5] == ["count"] * 4 + ["generate"] and calls.count("generate") == 4
    assert [r.prompt_tokens for r in engine.requests] == [60] * 4
