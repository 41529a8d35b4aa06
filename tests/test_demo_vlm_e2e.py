"""`make demo-vlm` end to end (slow, vLLM's CPU build, four starts: several minutes): the tiny
VLM at #img_lim 1 and 4, tokens per image equal to the theory, TTFT with 0, 1 and 4 images, the
KV pool at each limit, and the 4-image cell refused at #img_lim=1 as a FAILED row."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from openpyxl import load_workbook

from vramphysics.demo_vlm import write_tiny_vlm

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.vllm,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="vLLM's CPU build is installed by make test",
    ),
]


def test_demo_vlm(tmp_path: Path) -> None:
    write_tiny_vlm(tmp_path / "models" / "tiny-vlm")
    cfg = yaml.safe_load((ROOT / "config.cpu-vlm.yaml").read_text())
    cfg["engines"]["vllm"].update(model_dir=str(tmp_path / "models"), port="auto")
    cfg["paths"] = {"calibration_dir": "cal", "report_dir": "rep", "state_dir": "state"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    argv = [sys.executable, str(ROOT / "runner.py"), "--config", str(tmp_path / "config.yaml"),
            "--setups", str(ROOT / "test_setups.yaml"), "--setup", "demo-vlm", "--no-progress"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1800, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    (journal,) = (tmp_path / "rep").glob("*.journal.jsonl")
    rows = [json.loads(line) for line in journal.read_text().splitlines()]
    cells = {(r["model"], r["cell"]): r for r in rows if r["kind"] == "bench_cell"}
    lim1, lim4 = "vl_tiny-vlm#img_lim=1", "vl_tiny-vlm#img_lim=4"
    for model in (lim1, lim4):
        assert cells[(model, "p64-o16-c1-i1x64x64")]["media_tokens_per_item"] == 107
        assert cells[(model, "p64-o16-c1-i1x256x128")]["media_tokens_per_item"] == 57
    for cell in ("p64-o16-c1", "p64-o16-c1-i1x64x64", "p64-o16-c1-i4x64x64"):
        assert cells[(lim4, cell)]["ttft_ms"]["p50"] > 0, cell
    refused = cells[(lim1, "p64-o16-c1-i4x64x64")]
    assert refused["n_measured"] == 0 and "At most 1 image" in refused["note"]
    failed = [r for r in rows if r["kind"] == "status" and r["status"] == "FAILED"]
    assert len(failed) == 1 and "p64-o16-c1-i4x64x64" in failed[0]["reason"]

    (xlsx,) = (tmp_path / "rep").glob("*.xlsx")
    ws = load_workbook(xlsx)["Vision"]
    headers = [c.value for c in ws[1]]
    vision = [dict(zip(headers, r, strict=True)) for r in ws.iter_rows(min_row=2, values_only=True)]
    limits = {r["Image limit"]: r for r in vision if r["What"] == "limit"}
    assert set(limits) == {1, 4} and all(r["KV pool (tokens)"] for r in limits.values())
    tokens = {r["Media"]: r for r in vision if r["What"] == "tokens"}
    assert (
        tokens["1 image 64x64"]["Predicted tokens"] == 107
        and tokens["1 image 64x64"]["Exact"] == "yes"
    )
    assert tokens["1 image 256x128"]["Predicted tokens"] == 57
