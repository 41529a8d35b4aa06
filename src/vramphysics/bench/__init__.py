"""Benchmarks: a grid of cells per model, repeated requests, percentiles, memory while they ran.

Modules: `metrics` (the definitions: TTFT, TPOT, ITL, E2E and the aggregates), `prompts` (real
text of an exact token count, by the engine's own count), `workload` (the grid: prompt lengths x
concurrency, clipped to the context), `cells` (one cell on a running engine), `session` (every
cell of one model). The README's "Benchmark figures" section defines every figure.
"""

from __future__ import annotations

from vramphysics.bench.cells import StartFacts, run_cell
from vramphysics.bench.metrics import cell_figures, request_figures, stats
from vramphysics.bench.session import BenchPlan, bench_plan, cold_request, run_bench
from vramphysics.bench.workload import CellPlan, Grid, plan_cells

__all__ = [
    "BenchPlan",
    "CellPlan",
    "Grid",
    "StartFacts",
    "bench_plan",
    "cell_figures",
    "cold_request",
    "plan_cells",
    "request_figures",
    "run_bench",
    "run_cell",
    "stats",
]
