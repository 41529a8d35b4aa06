"""Running one benchmark cell on an engine that is up: warm-up, measured requests, aggregates.

A cell sends `warmup_requests x concurrency` requests that are discarded, then
`repetitions x concurrency` measured ones, with `concurrency` of them in flight at any time (as
`vllm bench serve --max-concurrency`). Every request becomes a `BenchRequest` record the moment it
finishes; the cell's `BenchCell` carries the aggregates and the memory sampled while the measured
requests ran.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Protocol

from tqdm import tqdm

from vramphysics.bench.media import MediaSpec, make_media
from vramphysics.bench.metrics import RequestFigures, cell_figures, request_figures
from vramphysics.bench.prompts import CellPrompts
from vramphysics.bench.workload import CellPlan
from vramphysics.engines.base import Completion, Engine, GenRequest
from vramphysics.errors import EngineError
from vramphysics.recorder import WindowMemory
from vramphysics.records import BenchCell, BenchRequest, Record

log = logging.getLogger(__name__)


class MemoryWindow(Protocol):
    """Memory sampled between two `time.monotonic()` moments (a `Recorder`)."""

    def window(self, t_from: float, t_to: float) -> WindowMemory | None: ...


@dataclass(frozen=True)
class StartFacts:
    """What the start the cells run on knows: identity, cold figures and the prediction."""

    model: str
    engine: str
    ctx: int
    engine_version: str
    settings: dict[str, Any] = field(default_factory=dict)
    load_s: float | None = None
    cold_ttft_ms: float | None = None
    cold_prompt_tokens: int | None = None
    predicted_bytes: float | None = None
    probe: str = ""
    device: str = ""


@dataclass(frozen=True)
class Sent:
    index: int
    completion: Completion | None
    error: EngineError | None


def _send(engine: Engine, request: GenRequest, index: int) -> Sent:
    try:
        return Sent(index, engine.generate(request), None)
    except EngineError as exc:
        return Sent(index, None, exc)


def request_record(
    facts: StartFacts,
    plan: CellPlan,
    sent: Sent,
    phase: str,
    t_window: float,
) -> tuple[BenchRequest, RequestFigures | None]:
    """One request as a row (its figures too, None when it failed); `start_s` counts from
    `t_window`, the start of its phase."""
    base = dict(
        model=facts.model,
        engine=facts.engine,
        ctx=facts.ctx,
        cell=plan.cell,
        phase=phase,
        index=sent.index,
        prompt_tokens_target=plan.prompt_tokens,
        output_tokens_target=plan.output_tokens,
        concurrency=plan.concurrency,
        device=facts.device,
    )
    if sent.completion is None:
        error = sent.error.message if sent.error is not None else "no answer"
        return BenchRequest(**base, ok=False, error=error), None  # type: ignore[arg-type]
    c = sent.completion
    f = request_figures(c)
    rec = BenchRequest(
        **base,  # type: ignore[arg-type]
        ok=True,
        prompt_tokens=f.prompt_tokens,
        output_tokens=f.output_tokens,
        token_source=f.token_source,
        ttft_ms=_r(f.ttft_ms),
        tpot_ms=_r(f.tpot_ms),
        e2e_ms=_r(f.e2e_ms),
        itl_ms=[round(g, 3) for g in f.itl_ms],
        start_s=round(c.sent_s - t_window, 4),
        finish_reason=c.finish_reason,
        engine_prefill_tokens_per_s=f.engine_prefill_tokens_per_s,
    )
    return rec, f


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


@dataclass
class _Phase:
    """The requests of one phase, as they finished."""

    figures: list[RequestFigures] = field(default_factory=list)
    completions: list[Completion] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _requests(
    engine: Engine, plan: CellPlan, prompts: CellPrompts, n: int
) -> dict[int, GenRequest]:
    """Every request of a cell, made before the first is sent: encoding images is not the
    engine's time, and a prompt counted between timed requests would slow the next one
    (`Engine.counts_prompts_apart`)."""
    count = engine.count_prompt_tokens if engine.counts_prompts_apart() else None
    return {
        i: GenRequest(
            prompts.prompt(i),
            plan.output_tokens,
            media=make_media(plan.media, i),
            prompt_tokens=count(prompts.prompt(i)) if count is not None else None,
        )
        for i in range(n)
    }


def _run_phase(
    engine: Engine,
    plan: CellPlan,
    requests: Mapping[int, GenRequest],
    indices: Sequence[int],
    *,
    phase: str,
    facts: StartFacts,
    record: Callable[[Record], None],
    bar: tqdm,
) -> _Phase:
    """Send the requests of `indices`, `plan.concurrency` at a time; record each as it ends."""
    out = _Phase()
    t_window = time.monotonic()
    with ThreadPoolExecutor(max_workers=plan.concurrency, thread_name_prefix="bench") as pool:
        futures = [pool.submit(_send, engine, requests[i], i) for i in indices]
        for future in as_completed(futures):
            sent = future.result()
            rec, figures = request_record(facts, plan, sent, phase, t_window)
            record(rec)
            bar.update(1)
            if figures is None or sent.completion is None:
                out.errors.append(rec.error)
                continue
            out.figures.append(figures)
            out.completions.append(sent.completion)
    return out


def run_cell(
    engine: Engine,
    plan: CellPlan,
    prompts: CellPrompts,
    *,
    warmup_requests: int,
    repetitions: int,
    facts: StartFacts,
    memory: MemoryWindow | None,
    record: Callable[[Record], None],
    text_tokens: float | None = None,
    progress: bool = True,
) -> BenchCell:
    """Warm-up, then the measured requests, then the cell's record (also recorded).
    `text_tokens`: the prompt tokens of the text-only cell of the same prompt, for a media cell
    (its tokens per image or video)."""
    n_warm = warmup_requests * plan.concurrency
    n_meas = repetitions * plan.concurrency
    requests = _requests(engine, plan, prompts, n_warm + n_meas)
    bar = tqdm(total=n_warm + n_meas, desc=plan.cell, leave=False, unit="req", disable=not progress)
    with bar:
        for phase, indices in (
            ("warmup", range(n_warm)),
            ("measured", range(n_warm, n_warm + n_meas)),
        ):
            done = _run_phase(
                engine, plan, requests, indices, phase=phase, facts=facts, record=record, bar=bar
            )
    measured = done
    engine.check_alive()
    cell = _cell_record(plan, facts, measured, memory, n_meas)
    cell = dataclasses.replace(cell, **_media_fields(plan.media, cell, text_tokens))
    record(cell)
    return cell


def _media_fields(
    media: MediaSpec | None, cell: BenchCell, text_tokens: float | None
) -> dict[str, Any]:
    if media is None:
        return {}
    per_item = None
    if text_tokens is not None and cell.prompt_tokens is not None:
        per_item = round((cell.prompt_tokens - text_tokens) / media.count, 3)
    return {
        "media": media.label,
        "media_kind": media.kind,
        "media_count": media.count,
        "media_width": media.width,
        "media_height": media.height,
        "video_frames": media.frames if media.kind == "video" else None,
        "video_fps": media.fps if media.kind == "video" else None,
        "media_tokens_per_item": per_item,
    }


def _cell_record(
    plan: CellPlan,
    facts: StartFacts,
    measured: _Phase,
    memory: MemoryWindow | None,
    n_meas: int,
) -> BenchCell:
    done = measured.completions
    t_from = min((c.sent_s for c in done), default=None)
    t_to = max((c.end_s for c in done), default=None)
    window_s = t_to - t_from if t_from is not None and t_to is not None else None
    figs = cell_figures(measured.figures, window_s)
    mem = memory.window(t_from, t_to) if memory and t_from is not None and t_to else None
    notes = [plan.note] if plan.note else []
    if measured.errors:
        notes.append(f"{len(measured.errors)} of {n_meas} failed: {measured.errors[0]}")
    return BenchCell(
        model=facts.model,
        engine=facts.engine,
        ctx=facts.ctx,
        cell=plan.cell,
        prompt_tokens_target=plan.prompt_tokens,
        output_tokens_target=plan.output_tokens,
        concurrency=plan.concurrency,
        warm_prefix=plan.warm,
        n_measured=figs.n_measured,
        n_failed=len(measured.errors),
        prompt_tokens=figs.prompt_tokens,
        output_tokens=figs.output_tokens,
        token_source=figs.token_source,
        ttft_ms=figs.ttft_ms,
        tpot_ms=figs.tpot_ms,
        itl_ms=figs.itl_ms,
        e2e_ms=figs.e2e_ms,
        window_s=window_s,
        request_throughput_per_s=figs.request_throughput_per_s,
        output_throughput_tokens_per_s=figs.output_throughput_tokens_per_s,
        decode_tokens_per_s=figs.decode_tokens_per_s,
        prefill_tokens_per_s=figs.prefill_tokens_per_s,
        engine_prefill_tokens_per_s=figs.engine_prefill_tokens_per_s,
        load_s=facts.load_s,
        cold_ttft_ms=facts.cold_ttft_ms,
        cold_prompt_tokens=facts.cold_prompt_tokens,
        peak_bytes=mem.peak_bytes if mem else None,
        steady_bytes=mem.steady_bytes if mem else None,
        predicted_bytes=facts.predicted_bytes,
        memory_metric=mem.metric if mem else "",
        probe=mem.probe if mem else facts.probe,
        device=mem.device if mem else facts.device,
        engine_version=facts.engine_version,
        settings=dict(facts.settings),
        note="; ".join(notes),
    )
