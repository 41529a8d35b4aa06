"""The answer table and the file paths printed at the end of a run (text only, no I/O)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vramphysics.report.answer import AnswerRow
from vramphysics.report.export import BenchFiles

HEADERS = ("model", "status", "max context", "util", "TTFT p50", "tok/s")


def _fmt(v: float | int | None, spec: str, unit: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{unit}"


def _cells(a: AnswerRow) -> tuple[str, ...]:
    large = a.large
    return (
        a.model,
        a.status,
        _fmt(a.max_context, ","),
        _fmt(a.gpu_memory_utilization, ".3f"),
        _fmt(large.ttft_p50_ms if large else None, ".1f", " ms"),
        _fmt(large.decode_tokens_per_s if large else None, ".1f"),
    )


def answer_table_text(answers: Sequence[AnswerRow]) -> str:
    """A fixed-width table: model, status, max context, vLLM util, TTFT p50, decode tok/s
    (TTFT and tok/s at the largest prompt benchmarked; util only for vLLM rows)."""
    rows = [HEADERS, *(_cells(a) for a in answers)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADERS))]
    lines = []
    for r in rows:
        left = (r[0].ljust(widths[0]), r[1].ljust(widths[1]))
        right = (c.rjust(w) for c, w in zip(r[2:], widths[2:], strict=True))
        lines.append("  ".join((*left, *right)).rstrip())
    warnings = [f"  ! {a.model}: {a.warning}" for a in answers if a.warning]
    return "\n".join(lines + warnings)


def run_end_text(
    answers: Sequence[AnswerRow],
    *,
    xlsx: Path,
    html: Path,
    database: Path,
    journal: Path,
    bench: BenchFiles | None = None,
) -> str:
    """What the terminal shows when a run ends: the answers, then where everything is
    (the benchmark cells' JSON and CSV when the run wrote them)."""
    cells = [f"benchmarks:       {bench.json}", f"benchmarks (csv): {bench.csv}"] if bench else []
    return "\n".join(
        [
            answer_table_text(answers),
            f"report:           {xlsx}",
            f"report (html):    {html}",
            *cells,
            f"physics database: {database}",
            f"journal:          {journal}",
        ]
    )
