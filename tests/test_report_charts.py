"""The native Excel charts, read back with openpyxl: the right ranges, and no two overlap."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import pytest
from openpyxl import load_workbook
from openpyxl.chart.scatter_chart import ScatterChart
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.worksheet import Worksheet
from report_data import GIB, H100, MIB, OK_ID, VLLM_ID, records, vllm_records

from vramphysics.outcome import build_outcome
from vramphysics.report import BENCH_COLUMNS, write_report

EMU_PER_PX = 9525
EMU_PER_PT = 12700


def _title(chart: ScatterChart) -> str:
    return "".join(r.t for p in chart.title.tx.rich.p for r in (p.r or []))


def _values(wb, ref: str) -> list[float]:  # type: ignore[no-untyped-def]
    sheet, cells = ref.split("!")
    ws = wb[sheet.strip("'")]
    first, _, last = cells.replace("$", "").partition(":")
    last = last or first
    col = "".join(ch for ch in first if ch.isalpha())
    rows = range(int(first[len(col) :]), int(last[len(col) :]) + 1)
    return [ws[f"{col}{r}"].value for r in rows]


@pytest.fixture
def charts(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = write_report(tmp_path / "r.xlsx", build_outcome(records() + vllm_records()[1:]))
    wb = load_workbook(path)
    return wb, {_title(c): c for c in wb["Charts"]._charts}


def test_each_model_has_its_charts(charts) -> None:  # type: ignore[no-untyped-def]
    _wb, by_title = charts
    assert sorted(by_title) == sorted(
        [
            f"{OK_ID}: memory vs context",
            f"{OK_ID}: TTFT p50 vs prompt",
            f"{OK_ID}: decode vs prompt",
            f"{VLLM_ID}: memory vs context",
            f"{VLLM_ID}: TTFT p50 vs prompt",
            f"{VLLM_ID}: decode vs prompt",
        ]
    )


def test_memory_chart_series_point_at_points_fit_and_theory(charts) -> None:  # type: ignore[no-untyped-def]
    wb, by_title = charts
    chart = by_title[f"{OK_ID}: memory vs context"]
    measured, fit, theory = chart.series
    # measured: the Points sheet's own rows of this model (contexts 512, 1024, 2048)
    assert measured.xVal.numRef.f == "'Points'!$C$2:$C$4"
    assert measured.yVal.numRef.f == "'Points'!$D$2:$D$4"
    assert _values(wb, measured.xVal.numRef.f) == [512, 1024, 2048]
    assert measured.marker.symbol == "circle" and measured.spPr.ln.noFill
    # fit and theory: the hidden ChartData block, in MiB, at the same contexts
    assert fit.xVal.numRef.f == theory.xVal.numRef.f == "'ChartData'!$A$2:$A$10"
    assert fit.yVal.numRef.f == "'ChartData'!$B$2:$B$10"
    assert theory.yVal.numRef.f == "'ChartData'!$C$2:$C$10"
    ctxs = _values(wb, fit.xVal.numRef.f)
    assert ctxs[0] == 0 and ctxs[-1] == int(2048 * 1.1)
    for c, f, t in zip(
        ctxs, _values(wb, fit.yVal.numRef.f), _values(wb, theory.yVal.numRef.f), strict=True
    ):
        assert f == pytest.approx((1e8 + 4096 * c) / MIB, abs=1e-3)  # base + ctx x cost
        assert t == pytest.approx((GIB + 4096 * c) / MIB, abs=1e-3)  # weights + ctx x KV
    assert chart.x_axis.title is not None and chart.y_axis.title is not None
    axis_titles = [
        "".join(r.t for p in ax.title.tx.rich.p for r in (p.r or []))
        for ax in (chart.x_axis, chart.y_axis)
    ]
    assert axis_titles == ["Context (tokens)", "Memory (MiB)"]


def test_vllm_memory_chart_reads_its_own_rows(charts) -> None:  # type: ignore[no-untyped-def]
    _wb, by_title = charts
    chart = next(c for t, c in by_title.items() if t.startswith(f"{VLLM_ID}: memory"))
    assert chart.series[0].xVal.numRef.f == "'Points'!$C$5:$C$6"  # after the demo's three
    assert chart.series[1].yVal.numRef.f == "'ChartData'!$E$2:$E$10"


def test_bench_charts_read_the_benchmarks_sheet(charts) -> None:  # type: ignore[no-untyped-def]
    """TTFT p50 and decode against the prompt tokens of the model's one-at-a-time cells (its
    first rows), not of the concurrency-4 cell after them."""
    wb, by_title = charts
    ttft = by_title[f"{OK_ID}: TTFT p50 vs prompt"].series[0]
    decode = by_title[f"{OK_ID}: decode vs prompt"].series[0]
    bench = wb["Benchmarks"]
    rows = [r for r in range(2, bench.max_row + 1) if bench.cell(row=r, column=1).value == OK_ID]
    assert len(rows) == 3  # p128 c1, p1024 c1, p128 c4
    first, second = rows[0], rows[1]
    headers = [c.header for c in BENCH_COLUMNS]

    def ref(header: str) -> str:
        col = get_column_letter(headers.index(header) + 1)
        return f"'Benchmarks'!${col}${first}:${col}${second}"

    assert ttft.xVal.numRef.f == decode.xVal.numRef.f == ref("Prompt (tokens)")
    assert ttft.yVal.numRef.f == ref("TTFT p50 (ms)")
    assert decode.yVal.numRef.f == ref("Decode (tokens/s)")
    assert _values(wb, ttft.xVal.numRef.f) == [127.0, 1023.0]
    assert _values(wb, ttft.yVal.numRef.f) == [12.35, 60.0]
    assert _values(wb, decode.yVal.numRef.f) == [250.0, 240.0]


def _col_px(ws: Worksheet, col: int) -> int:
    width = ws.column_dimensions[get_column_letter(col)].width or 8.43
    return int(width * 7 + 5)


def _row_pt(ws: Worksheet, row: int) -> float:
    return ws.row_dimensions[row].height or 15.0


def _rect(ws: Worksheet, chart: ScatterChart) -> tuple[int, int, int, int]:
    anchor = chart.anchor
    start = anchor._from
    x = sum(_col_px(ws, c) for c in range(1, start.col + 1)) * EMU_PER_PX + start.colOff
    y = int(sum(_row_pt(ws, r) for r in range(1, start.row + 1)) * EMU_PER_PT) + start.rowOff
    return x, y, x + anchor.ext.width, y + anchor.ext.height


def test_no_two_charts_overlap(charts) -> None:  # type: ignore[no-untyped-def]
    wb, by_title = charts
    ws = wb["Charts"]
    rects = {t: _rect(ws, c) for t, c in by_title.items()}
    for (a, ra), (b, rb) in combinations(rects.items(), 2):
        apart = ra[2] <= rb[0] or rb[2] <= ra[0] or ra[3] <= rb[1] or rb[3] <= ra[1]
        assert apart, f"{a} overlaps {b}: {ra} {rb}"
    # the band label of each model is above its charts, not under one
    labels = [
        ws.cell(row=r, column=1) for r in range(1, ws.max_row + 1) if ws.cell(row=r, column=1).value
    ]
    assert [c.value for c in labels] == [
        f"{OK_ID} (llamacpp, cpu)",
        f"{VLLM_ID} (vllm, {H100}): vLLM reserves its KV pool up front: the points are the "
        "whole reservation",
    ]
    for cell in labels:
        y = int(sum(_row_pt(ws, r) for r in range(1, cell.row)) * EMU_PER_PT)
        x = 0
        for r in rects.values():
            assert not (r[0] <= x < r[2] and r[1] <= y < r[3]), (
                f"{cell.coordinate} is under a chart"
            )
