"""The report: Excel workbook, HTML page and the end-of-run answer table, from an Outcome.

`write_reports` writes `<run>.xlsx` and `<run>.html` side by side; both show the same answers
(`answer.py`, planned through `planning.py`) and the same charts (`series.py`). Beside them,
when the run benchmarked anything, `<run>.bench.json` and `<run>.bench.csv` (`export.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vramphysics.outcome import Outcome
from vramphysics.physics_db import PhysicsEntry
from vramphysics.report.answer import AnswerRow, answer_rows
from vramphysics.report.columns import (
    ANSWER_COLUMNS,
    BENCH_COLUMNS,
    CALIBRATION_COLUMNS,
    FAILURE_COLUMNS,
    POINT_COLUMNS,
    REQUEST_COLUMNS,
    Column,
    ExtraSheet,
)
from vramphysics.report.export import BenchFiles, bench_json, write_bench_exports
from vramphysics.report.html import render_html
from vramphysics.report.series import all_series
from vramphysics.report.tables import plan_sheet
from vramphysics.report.terminal import answer_table_text, run_end_text
from vramphysics.report.vision import vision_sheet
from vramphysics.report.xlsx import build_workbook, save_atomically, write_atomically, write_report

__all__ = [
    "ANSWER_COLUMNS",
    "BENCH_COLUMNS",
    "CALIBRATION_COLUMNS",
    "FAILURE_COLUMNS",
    "POINT_COLUMNS",
    "REQUEST_COLUMNS",
    "AnswerRow",
    "BenchFiles",
    "Column",
    "ExtraSheet",
    "ReportFiles",
    "answer_rows",
    "answer_table_text",
    "bench_json",
    "plan_sheet",
    "run_end_text",
    "write_html",
    "write_report",
    "write_reports",
]


@dataclass(frozen=True)
class ReportFiles:
    xlsx: Path
    html: Path
    answers: tuple[AnswerRow, ...]
    bench: BenchFiles | None = None  # <run>.bench.json and .csv; None: no benchmark cells


def write_html(path: Path, outcome: Outcome, answers: Sequence[AnswerRow]) -> Path:
    """The HTML page, written through a temporary file like the workbook."""
    text = render_html(outcome, answers, all_series(outcome))
    return write_atomically(path, text.encode("utf-8"))


def write_reports(xlsx: Path, outcome: Outcome, entries: Sequence[PhysicsEntry]) -> ReportFiles:
    """`<run>.xlsx` (with the Plan sheet of `entries`), `<run>.html` beside it, and the cells'
    `<run>.bench.json` and `<run>.bench.csv` when there are any.

    `entries` is the physics database after this run's entries were merged in: the answers
    plan with it, as `vramphysics plan` would.
    """
    answers = answer_rows(outcome, entries)
    vision = vision_sheet(outcome)
    extra = [plan_sheet(entries), *([vision] if vision is not None else [])]
    wb = build_workbook(outcome, answers, extra=extra)
    save_atomically(wb, xlsx)
    html = write_html(xlsx.with_suffix(".html"), outcome, answers)
    bench = write_bench_exports(xlsx, outcome)
    return ReportFiles(xlsx=xlsx, html=html, answers=answers, bench=bench)
