"""The benchmark of one model on one started (or attached) engine: every cell of its grid."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vramphysics.bench.cells import MemoryWindow, Sent, StartFacts, request_record, run_cell
from vramphysics.bench.prompts import make_prompts
from vramphysics.bench.workload import CellPlan, plan_cells
from vramphysics.config import BenchConfig
from vramphysics.engines.base import Completion, Engine
from vramphysics.records import BenchCell, BenchRequest, Record, StatusRow, WarningRow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchPlan:
    """The cells a model gets at a context, and the ones a resumed run has already."""

    cells: tuple[CellPlan, ...]
    finished: tuple[BenchCell, ...] = ()

    @property
    def pending(self) -> tuple[CellPlan, ...]:
        done = {c.cell for c in self.finished}
        return tuple(c for c in self.cells if c.cell not in done)


def bench_plan(
    cfg: BenchConfig,
    engine: Engine,
    ctx: int | None,
    *,
    warm: bool,
    finished: Sequence[BenchCell] = (),
) -> BenchPlan:
    """The cells of the grid; `finished`: this model's cells at `ctx` done already (resume)."""
    cells = plan_cells(cfg, ctx, max_concurrency=engine.max_concurrency(), warm=warm)
    return BenchPlan(tuple(cells), tuple(finished))


def cold_request(facts: StartFacts, cold: Completion, output_tokens: int) -> BenchRequest:
    """The first request after the engine was ready (the calibration's warm-up), as a row."""
    prompt = cold.usage.prompt_tokens or 0
    plan = CellPlan("cold", prompt, output_tokens, concurrency=1, warm=False)
    rec, _figures = request_record(facts, plan, Sent(0, cold, None), "cold", cold.sent_s)
    return rec


def run_bench(
    engine: Engine,
    cfg: BenchConfig,
    plan: BenchPlan,
    *,
    facts: StartFacts,
    memory: MemoryWindow | None,
    record: Callable[[Record], None],
    deadline: float | None = None,
    progress: bool = True,
) -> list[BenchCell]:
    """Every pending cell, in order; stops starting cells past `deadline` (monotonic), with a
    warning row naming those not run. A cell whose every measured request failed is also a
    FAILED step row (the cell and its requests are recorded all the same)."""
    out: list[BenchCell] = []
    pending = plan.pending
    for i, cell_plan in enumerate(pending):
        if deadline is not None and time.monotonic() > deadline:
            left = ", ".join(c.cell for c in pending[i:])
            record(
                WarningRow(
                    model=facts.model,
                    engine=facts.engine,
                    ctx=facts.ctx,
                    message=f"bench.max_s_per_model reached: cells not run: {left}",
                )
            )
            break
        prompts = make_prompts(
            cell_plan.cell, cell_plan.prompt_tokens, engine.count_prompt_tokens, warm=cell_plan.warm
        )
        cell = run_cell(
            engine,
            cell_plan,
            prompts,
            warmup_requests=cfg.warmup_requests,
            repetitions=cfg.repetitions,
            facts=facts,
            memory=memory,
            record=record,
            text_tokens=_text_tokens(cell_plan, [*plan.finished, *out]),
            progress=progress,
        )
        out.append(cell)
        if cell.n_measured == 0:
            record(_failed_cell(facts, cell))
    return out


def _text_tokens(plan: CellPlan, cells: Sequence[BenchCell]) -> float | None:
    """The prompt tokens of the text-only cell with the same prompt as a media cell."""
    if plan.media is None:
        return None
    for c in cells:
        if (
            not c.media
            and c.prompt_tokens_target == plan.prompt_tokens
            and c.concurrency == plan.concurrency
            and c.warm_prefix == plan.warm
            and c.n_measured
        ):
            return c.prompt_tokens
    return None


def _failed_cell(facts: StartFacts, cell: BenchCell) -> StatusRow:
    return StatusRow(
        model=facts.model,
        engine=facts.engine,
        status="FAILED",
        reason=f"benchmark cell {cell.cell}: every request failed ({cell.note})",
        failure_kind="request_failed",
        ctx=facts.ctx,
    )
