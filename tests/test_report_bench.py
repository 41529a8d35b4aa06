"""The benchmark side of the report, read back: the Benchmarks sheet (one row per cell), the
Requests sheet (one row per request) and `<run>.bench.json` / `.csv` beside the workbook."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from bench_data import a_cell, stats
from openpyxl import Workbook, load_workbook
from openpyxl.worksheet.worksheet import Worksheet
from report_data import (
    FAILED_ID,
    GIB,
    MISSING_ID,
    OK_ID,
    PREDICTED,
    SECRET,
    VLLM_ID,
    ok_cells,
    records,
    vllm_records,
)

from vramphysics.journal import read_journal
from vramphysics.outcome import build_outcome
from vramphysics.records import BenchCell, ModelInfo, Record, RunHeader, StatusRow
from vramphysics.report import BENCH_COLUMNS, REQUEST_COLUMNS, bench_json, write_reports
from vramphysics.report.answer import speeds
from vramphysics.report.bench_tables import bench_rows
from vramphysics.report.export import bench_csv, bench_paths

RED = "F4C7C3"
ORANGE = "FCE5CD"
DEMO_JOURNAL = Path(__file__).parent / "fixtures" / "report" / "demo.journal.jsonl"


def _rows(ws: Worksheet) -> list[dict[str, object]]:
    headers = [c.value for c in ws[1]]
    return [
        dict(zip(headers, [c.value for c in row], strict=True)) for row in ws.iter_rows(min_row=2)
    ]


def _write(tmp_path: Path, recs: list[Record]) -> tuple[Path, Workbook]:
    outcome = build_outcome(recs)
    files = write_reports(tmp_path / "run.xlsx", outcome, outcome.entries)
    return files.xlsx, load_workbook(files.xlsx)


@pytest.fixture
def written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Workbook]:
    monkeypatch.setenv("HF_TOKEN", SECRET)
    return _write(tmp_path, records() + vllm_records()[1:])


def test_benchmarks_sheet_has_one_row_per_cell_with_its_aggregates(
    written: tuple[Path, Workbook],
) -> None:
    _path, wb = written
    ws = wb["Benchmarks"]
    assert [c.value for c in ws[1]] == [c.header for c in BENCH_COLUMNS]
    rows = [r for r in _rows(ws) if r["Model"] == OK_ID]
    # one at a time first, smallest prompt first; then four at a time
    assert [r["Cell"] for r in rows] == ["p128-o64-c1", "p1024-o64-c1", "p128-o64-c4"]
    small, large, c4 = rows
    assert (small["Prompt asked (tokens)"], small["Prompt (tokens)"]) == (128, 127.0)
    assert (small["Output asked (tokens)"], small["Output (tokens)"]) == (64, 64.0)
    assert (small["N measured"], small["N failed"], small["Concurrency"]) == (5, 0, 1)
    # stats(12.3456): mean x1.02, std x0.05, min x0.9, p90 x1.1, p99 x1.2, max x1.21
    assert small["TTFT p50 (ms)"] == 12.35
    assert small["TTFT p90 (ms)"] == round(12.3456 * 1.1, 2)
    assert small["TTFT p99 (ms)"] == round(12.3456 * 1.2, 2)
    assert small["TTFT mean (ms)"] == round(12.3456 * 1.02, 2)
    assert small["TTFT std (ms)"] == round(12.3456 * 0.05, 2)
    assert small["TTFT min (ms)"] == round(12.3456 * 0.9, 2)
    assert small["TTFT max (ms)"] == round(12.3456 * 1.21, 2)
    assert (small["TPOT p50 (ms)"], small["TPOT p90 (ms)"], small["TPOT p99 (ms)"]) == (
        3.0,
        3.3,
        3.6,
    )
    assert (small["ITL p50 (ms)"], small["E2E p50 (ms)"], small["E2E p99 (ms)"]) == (
        3.0,
        219.0,
        262.8,
    )
    assert small["Window (s)"] == 1.1 and small["Requests (req/s)"] == 4.5
    assert small["Output (tokens/s)"] == 290.0 and small["Decode (tokens/s)"] == 250.0
    assert small["Prefill (tokens/s)"] == 4183.0 and small["Engine prefill (tokens/s)"] == 4300.0
    assert (small["Load (s)"], small["Cold TTFT (ms)"]) == (1.2, 80.0)
    assert small["Peak memory (GiB)"] == round(110_000_000 / GIB, 4)
    assert small["Steady memory (GiB)"] == round(118_000_000 / GIB, 4)
    assert small["Predicted memory (GiB)"] == round(PREDICTED / GIB, 4)
    assert small["Peak/predicted"] == round(110_000_000 / PREDICTED, 3)
    assert (small["Memory metric"], small["Probe"], small["Device"]) == ("rss", "process", "cpu")
    assert (small["Token source"], small["Engine version"]) == ("engine-usage", "llama.cpp b1")
    assert (small["Warm prefix"], small["Note"], small["Status"]) == ("no", None, "OK")
    assert (large["N measured"], large["N failed"], large["Status"]) == (4, 1, "PARTIAL")
    assert c4["Concurrency"] == 4 and c4["TTFT p50 (ms)"] == 20.0


def test_benchmarks_sheet_colours_partial_cells_and_keeps_missing_models(
    written: tuple[Path, Workbook],
) -> None:
    _path, wb = written
    ws = wb["Benchmarks"]
    by_cell = {(r[0].value, r[3].value): r for r in ws.iter_rows(min_row=2)}
    assert str(by_cell[(OK_ID, "p1024-o64-c1")][0].fill.start_color.rgb).endswith(ORANGE)
    assert not str(by_cell[(OK_ID, "p128-o64-c1")][0].fill.start_color.rgb).endswith(ORANGE)
    status = {r["Model"]: (r["Status"], r["Note"]) for r in _rows(ws) if r["Cell"] is None}
    assert status == {
        MISSING_ID: ("MISSING", "not in `ollama list`"),
        FAILED_ID: ("FAILED", "no context could be measured"),
    }


def test_requests_sheet_has_one_row_per_request(written: tuple[Path, Workbook]) -> None:
    _path, wb = written
    ws = wb["Requests"]
    assert [c.value for c in ws[1]] == [c.header for c in REQUEST_COLUMNS]
    rows = _rows(ws)
    assert len(rows) == 9  # cold + 2 warm-up + 5 measured of p128; 1 failed of p1024
    assert [(r["Cell"], r["Phase"], r["Index"]) for r in rows][:4] == [
        ("p1024-o64-c1", "measured", 4),
        ("p128-o64-c1", "cold", 0),
        ("p128-o64-c1", "warmup", 0),
        ("p128-o64-c1", "warmup", 1),
    ]
    first = next(r for r in rows if r["Phase"] == "measured" and r["Cell"] == "p128-o64-c1")
    assert first["Model"] == OK_ID and first["Context (tokens)"] == 2048
    assert (first["Prompt asked (tokens)"], first["Prompt (tokens)"]) == (128, 127)
    assert (first["Output asked (tokens)"], first["Output (tokens)"]) == (64, 64)
    assert (first["OK"], first["Error"], first["Concurrency"]) == ("yes", None, 1)
    assert (first["TTFT (ms)"], first["TPOT (ms)"], first["E2E (ms)"]) == (12.0, 3.0, 219.0)
    # the ITL list itself stays in the journal: its count and this request's median
    assert (first["ITL count"], first["ITL p50 (ms)"]) == (3, 3.0)
    assert (first["Finish reason"], first["Token source"]) == ("length", "engine-usage")
    failed = rows[0]
    assert (failed["OK"], failed["Error"]) == ("no", "request timed out after 60 s")
    assert failed["ITL count"] == 0 and failed["ITL p50 (ms)"] is None
    failed_row = next(r for r in ws.iter_rows(min_row=2) if r[9].value == "no")
    assert all(str(c.fill.start_color.rgb).endswith(RED) for c in failed_row)
    ok_row = next(r for r in ws.iter_rows(min_row=2) if r[9].value == "yes")
    assert not str(ok_row[0].fill.start_color.rgb).endswith(RED)


def test_bench_json_and_csv_beside_the_workbook(written: tuple[Path, Workbook]) -> None:
    path, _wb = written
    paths = bench_paths(path)
    assert paths.json == path.parent / "run.bench.json"
    assert paths.csv == path.parent / "run.bench.csv"
    doc = json.loads(paths.json.read_text(encoding="utf-8"))
    expected = [*ok_cells(), vllm_records()[-2]]
    assert isinstance(expected[-1], BenchCell)
    assert doc["cells"] == [c.to_json() for c in expected]  # BenchCell.to_json's names
    assert [BenchCell.from_json(c) for c in doc["cells"]] == expected
    run = doc["run"]
    assert (run["run_id"], run["host"], run["platform"]) == ("20260101-000000", "box", "Linux")
    assert (run["tool_version"], run["git_commit"]) == ("0.1.0", "abc1234")
    assert run["gpus"] == [] and run["driver"] is None  # the first header: a CPU run
    assert run["argv"] == ["runner.py", "--token", "***"]  # secrets masked
    models = {m["model"]: m for m in doc["models"]}
    assert set(models) == {OK_ID, VLLM_ID}  # MISSING and FAILED benchmarked nothing
    assert models[OK_ID]["engine_version"] == "llama.cpp b1"

    rows = list(csv.DictReader(io.StringIO(paths.csv.read_text(encoding="utf-8"))))
    assert len(rows) == 4
    assert rows[0]["cell"] == "p1024-o64-c1" and rows[0]["model"] == OK_ID
    assert float(rows[1]["ttft_ms.p50"]) == 12.3456
    assert float(rows[1]["ttft_ms.p99"]) == pytest.approx(12.3456 * 1.2)
    assert rows[1]["itl_ms.n"] == "315" and rows[1]["settings.n_gpu_layers"] == "-1"
    assert rows[1]["run.host"] == "box" and rows[1]["run.git_commit"] == "abc1234"
    assert "ttft_ms" not in rows[0] and "settings" not in rows[0]  # flattened
    assert rows[0]["note"] == "" and rows[0]["warm_prefix"] == "False"


def test_bench_json_carries_the_gpu_driver_and_settings() -> None:
    header = vllm_records()[0]
    assert isinstance(header, RunHeader)
    info = ModelInfo(
        model=VLLM_ID,
        setup="gpu",
        engine="vllm",
        engine_version="vllm 0.11",
        available=True,
        location="org/tiny-chat",
        theory=None,
        settings={"kv_cache_dtype": "fp8", "flags": ["--api-key", SECRET]},
    )
    other = ModelInfo(**{**info.__dict__, "model": "vl_other"})
    cell = a_cell(model=VLLM_ID, engine="vllm", settings={"kv_cache_dtype": "fp8"})
    doc = bench_json([cell], header, [info, other])
    assert doc["run"]["gpus"] == ["NVIDIA H100 80GB HBM3"] and doc["run"]["driver"] == "550.54"
    assert doc["run"]["devices"][0]["total_bytes"] == 80 * GIB
    assert doc["run"]["cpu_model"] is None and doc["run"]["cuda_version"] is None  # not recorded
    (model,) = doc["models"]  # only the models with cells
    assert model["settings"] == {"kv_cache_dtype": "fp8", "flags": ["--api-key", "***"]}
    assert SECRET not in json.dumps(doc)
    text = bench_csv(doc)
    assert "settings.kv_cache_dtype" in text.splitlines()[0] and SECRET not in text


def test_no_benchmark_files_without_cells(tmp_path: Path) -> None:
    recs: list[Record] = [r for r in records() if not hasattr(r, "cell")]
    outcome = build_outcome(recs)
    files = write_reports(tmp_path / "cal.xlsx", outcome, outcome.entries)
    assert files.bench is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cal.html", "cal.xlsx"]


def test_an_old_journal_reports_its_single_request_as_a_cell_of_one(tmp_path: Path) -> None:
    """An old journal's `bench` line (the demo run before cells) is a row with n 1 and a note;
    its start-up peak is not shown as memory during the request."""
    _path, wb = _write(tmp_path, read_journal(DEMO_JOURNAL))
    (row,) = _rows(wb["Benchmarks"])
    assert row["Model"] == "llamacpp:tiny-llama.gguf" and row["Cell"] == "legacy-1"
    assert (row["N measured"], row["Prompt (tokens)"], row["Output (tokens)"]) == (1, 93.0, 64.0)
    assert row["TTFT p50 (ms)"] == row["TTFT p99 (ms)"] == 1576.17
    assert row["TTFT std (ms)"] == 0.0 and row["ITL p50 (ms)"] is None
    assert row["Decode (tokens/s)"] == 231.55
    assert row["TPOT p50 (ms)"] == round(1000 / 231.54877321680414, 2)
    assert row["Peak memory (GiB)"] is None
    assert "one request" in str(row["Note"]) and "start-up peak 0.095 GiB" in str(row["Note"])
    assert wb["Requests"].max_row == 1  # an old journal has no requests


def test_the_answer_reads_single_stream_cells_without_warm() -> None:
    warm = a_cell(
        model=OK_ID, cell="p4096-o64-c1-warm", prompt_tokens_target=4096, warm_prefix=True
    )
    failed = a_cell(model=OK_ID, cell="p2048-o64-c1", prompt_tokens_target=2048, n_measured=0)
    got = speeds([*ok_cells(), warm, failed], OK_ID)
    assert [(s.prompt_tokens, s.ttft_p50_ms, s.concurrency) for s in got] == [
        (127.0, 12.3456, 1),
        (1023.0, 60.0, 1),
    ]
    # a model benchmarked only four at a time still has an answer, at that concurrency
    only_c4 = speeds([ok_cells()[2]], OK_ID)
    assert [(s.prompt_tokens, s.concurrency) for s in only_c4] == [(127.0, 4)]


def test_a_failed_model_with_cells_keeps_them() -> None:
    """Cells journaled before a model failed stay in the sheet, without a blank row."""
    cell = a_cell(model=FAILED_ID, ttft_ms=stats(5.0))
    outcome = build_outcome(
        [cell, StatusRow(model=FAILED_ID, engine="llamacpp", status="FAILED", reason="x")]
    )
    rows, ranges = bench_rows(outcome)
    assert len(rows) == 1 and rows[0][3] == "p128-o64-c1"
    assert ranges == {FAILED_ID: (2, 2)}
