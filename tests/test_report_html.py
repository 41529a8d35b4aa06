"""`reports/<run>.html`: self-contained, the same answers as the workbook, a chart per figure."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from report_data import OK_ID, SECRET, VLLM_ID, records, vllm_records

from vramphysics.outcome import build_outcome
from vramphysics.report import write_reports


@pytest.fixture
def page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("HF_TOKEN", SECRET)
    outcome = build_outcome(records() + vllm_records()[1:])
    files = write_reports(tmp_path / "run.xlsx", outcome, outcome.entries)
    assert files.html == tmp_path / "run.html"
    assert not list(tmp_path.glob("*.tmp"))
    return files.html.read_text(encoding="utf-8")


def test_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    # nothing fetched: no scripts, links, images or fonts from anywhere
    assert not re.search(r"<script|<link|<img|@import|url\((?!#)", page)  # url(#id): inline
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    assert "@media print" in page and "@media (max-width: 700px)" in page


def test_charts_are_inline_svg(page: str) -> None:
    svgs = re.findall(r"<svg\b.*?</svg>", page, flags=re.DOTALL)
    assert len(svgs) == 6  # memory, TTFT and decode for each of the two models
    assert page.count("<?xml") == 0 and page.count("<!DOCTYPE svg") == 0
    assert "Memory (MiB)" in page and "Memory (GiB)" in page  # demo in MiB, vLLM in GiB
    assert "theory: weights + ctx x KV" in page


def test_answer_table(page: str) -> None:
    answer = page[: page.index("<h2>Benchmark cells</h2>")]
    rows = re.findall(r'<tr class="(\w+)">(.*?)</tr>', answer, flags=re.DOTALL)
    assert [status for status, _ in rows] == ["OK", "MISSING", "FAILED", "OK"]
    ok = rows[0][1]
    assert f'data-label="Model">{OK_ID}</td>' in ok
    assert 'data-label="Context (tokens)" title="the model&#x27;s #ctx">2,048</td>' in ok
    assert VLLM_ID in rows[3][1]
    assert SECRET not in page


def test_report_only_writes_both_and_prints_the_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    from vramphysics.cli import main
    from vramphysics.journal import Journal, journal_path

    paths = {"calibration_dir": "cal", "report_dir": "rep", "state_dir": "state"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"paths": paths}))
    run_id = "20260101-000000"
    journal = Journal(journal_path(tmp_path / "rep", run_id))
    for rec in records():
        journal.append(rec)
    journal.close()
    assert main(["run", "--config", str(tmp_path / "config.yaml"), "--report-only", run_id]) == 0
    out = capsys.readouterr().out
    rep = tmp_path / "rep"
    assert (rep / f"{run_id}.xlsx").exists() and (rep / f"{run_id}.html").exists()
    lines = out.splitlines()
    assert lines[0].startswith(f"run {run_id}: ")  # the counts, then the answer table
    assert lines[1].split()[:2] == ["model", "status"]
    assert any(line.startswith(OK_ID) and " OK " in line for line in lines)
    assert f"report (html):    {rep / f'{run_id}.html'}" in out
    assert f"physics database: {tmp_path / 'cal' / 'physics.yaml'}" in out
    assert f"journal:          {journal_path(rep, run_id)}" in out


def test_benchmark_cells_table(page: str) -> None:
    """Each cell's main figures, one row each, in the Benchmarks sheet's order; a cell with a
    failed request is coloured as incomplete."""
    table = page[page.index("<h2>Benchmark cells</h2>") :]
    rows = re.findall(r"<tr( class=\"\w+\")?>(.*?)</tr>", table, flags=re.DOTALL)
    header, *cells = rows
    assert ">TTFT p50 (ms)</th>" in header[1] and ">Peak/predicted</th>" in header[1]
    labels = [re.search(r'data-label="Cell">([^<]*)<', r[1]).group(1) for r in cells]  # type: ignore[union-attr]
    assert labels == ["p128-o64-c1", "p1024-o64-c1", "p128-o64-c4", "p20-o64-c1"]
    first = cells[0][1]
    assert 'data-label="TTFT p50 (ms)">12.35<' in first
    assert 'data-label="Status">OK<' in first and cells[0][0] == ' class="OK"'
    assert cells[1][0] == ' class="INCOMPLETE"'  # PARTIAL: one failed request
