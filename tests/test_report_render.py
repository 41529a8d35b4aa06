"""The report in real programs: LibreOffice opens the workbook and draws its charts into a PDF;
headless Chromium renders the HTML page with its charts. Skipped (saying why) where the
programs are missing; `.ci/run` installs them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from report_data import records, vllm_records

from vramphysics.outcome import build_outcome
from vramphysics.report import ReportFiles, write_reports

FIT = (0xFF, 0x7F, 0x0E)  # fitted line
THEORY = (0x2C, 0xA0, 0x2C)  # theory line
MEASURED = (0x1F, 0x77, 0xB4)  # measured points


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(
            f"{name} is not installed (apt-get install libreoffice-calc-nogui chromium poppler-utils)"
        )
    return path


def _pixels_near(images: list[Path], rgb: tuple[int, int, int], tol: int = 40) -> int:
    n = 0
    for path in images:
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB"), dtype=np.int16)
        n += int((np.abs(pixels - np.array(rgb, dtype=np.int16)) <= tol).all(axis=-1).sum())
    return n


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> ReportFiles:
    out = tmp_path_factory.mktemp("render")
    outcome = build_outcome(records() + vllm_records()[1:])
    return write_reports(out / "run.xlsx", outcome, outcome.entries)


def test_libreoffice_draws_the_charts(report: ReportFiles, tmp_path: Path) -> None:
    soffice, pdftoppm = _tool("soffice"), _tool("pdftoppm")
    profile = (tmp_path / "lo-profile").as_uri()
    done = subprocess.run(
        [soffice, f"-env:UserInstallation={profile}", "--headless", "--norestore",
         "--convert-to", "pdf", "--outdir", str(tmp_path), str(report.xlsx)],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    pdf = tmp_path / "run.pdf"
    assert done.returncode == 0 and pdf.exists(), done.stdout + done.stderr
    assert "repair" not in (done.stdout + done.stderr).lower()
    subprocess.run(
        [pdftoppm, "-r", "120", "-png", str(pdf), str(tmp_path / "page")], check=True, timeout=120
    )
    pages = sorted(tmp_path.glob("page*.png"))
    assert pages
    keep = os.environ.get("VRAMPHYSICS_KEEP_RENDER")
    if keep:  # to look at the pages yourself
        for p in pages:
            shutil.copy(p, Path(keep) / f"xlsx-{p.name}")
    for colour in (FIT, THEORY, MEASURED):
        assert _pixels_near(pages, colour) > 50, f"no chart colour {colour} on any page"


def _screenshot(chromium: str, html: Path, out: Path, width: int, height: int) -> Path:
    done = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={out.parent / ('chrome-' + out.stem)}",
         f"--window-size={width},{height}", f"--screenshot={out}", html.as_uri()],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and out.exists(), done.stdout + done.stderr
    return out


@pytest.mark.parametrize(("width", "height"), [(1280, 2400), (390, 4200)])
def test_chromium_renders_the_page(
    report: ReportFiles, tmp_path: Path, width: int, height: int
) -> None:
    chromium = _tool("chromium")
    shot = _screenshot(chromium, report.html, tmp_path / f"page-{width}.png", width, height)
    keep = os.environ.get("VRAMPHYSICS_KEEP_RENDER")
    if keep:
        shutil.copy(shot, Path(keep) / shot.name)
    for colour in (FIT, THEORY, MEASURED):
        assert _pixels_near([shot], colour) > 50, f"no chart colour {colour} in the page"
