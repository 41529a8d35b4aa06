"""`reports/<run>.bench.json` and `reports/<run>.bench.csv`: the benchmark cells with the run's
hardware and software record, so that any row can be reproduced (pure, but for the writing).

The cells carry the field names of `BenchCell.to_json` exactly; the CSV flattens each Stats as
`ttft_ms.p50` etc. and each setting as `settings.NAME`, and repeats the run's record on every
row as `run.NAME`. `bench_json` is what `vramphysics bench --json` prints too.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from vramphysics.outcome import Outcome
from vramphysics.records import STATS_FIELDS, BenchCell, ModelInfo, RunHeader, Stats
from vramphysics.redact import redact_value
from vramphysics.report.xlsx import write_atomically

SCHEMA = "vramphysics.bench/1"
_STATS_KEYS = tuple(f.name for f in fields(Stats))


@dataclass(frozen=True)
class BenchFiles:
    json: Path
    csv: Path


def _first_device_value(header: RunHeader, key: str) -> Any:
    return next((d[key] for d in header.devices if d.get(key) is not None), None)


def run_record(header: RunHeader | None) -> dict[str, Any]:
    """The machine and the tool a run measured on: host, OS, CPU, GPUs, driver, CUDA, version.

    A figure the run header does not carry (an older header has no CPU model or CUDA version)
    is None, never guessed from the machine that writes the report.
    """
    if header is None:
        return {}
    gpus = [d for d in header.devices if d.get("name") != "cpu"]
    return {
        "run_id": header.run_id,
        "started_at": header.started_at,
        "host": header.host,
        "platform": header.platform,
        "python": header.python,
        # optional header fields where the runner records them; else a device's own key
        "cpu_model": header.cpu_model or _first_device_value(header, "cpu_model"),
        "devices": [dict(d) for d in header.devices],
        "gpus": [d.get("name") for d in gpus],
        "driver": header.driver,
        "cuda_version": header.cuda_version or _first_device_value(header, "cuda_version"),
        "probe": header.probe,
        "tool_version": header.tool_version,
        "git_commit": header.git_commit,
        "argv": list(header.argv),
    }


def model_record(info: ModelInfo) -> dict[str, Any]:
    """A model's engine, engine version and settings (KV dtype, layers on GPU, flags)."""
    return {
        "model": info.model,
        "setup": info.setup,
        "engine": info.engine,
        "engine_version": info.engine_version,
        "location": info.location,
        "settings": dict(info.settings),
    }


def bench_json(
    cells: Sequence[BenchCell], header: RunHeader | None, infos: Sequence[ModelInfo]
) -> dict[str, Any]:
    """The cells (as `BenchCell.to_json`), the run's record and each benchmarked model's
    engine and settings, secrets masked."""
    benchmarked = {c.model for c in cells}
    return redact_value(
        {
            "schema": SCHEMA,
            "run": run_record(header),
            "models": [model_record(i) for i in infos if i.model in benchmarked],
            "cells": [c.to_json() for c in cells],
        }
    )


def _flat_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """One cell as flat columns: Stats as `ttft_ms.p50`, settings as `settings.NAME`."""
    out: dict[str, Any] = {}
    for key, value in cell.items():
        if key in STATS_FIELDS and isinstance(value, dict):
            out.update({f"{key}.{k}": value.get(k) for k in _STATS_KEYS})
        elif key == "settings" and isinstance(value, dict):
            out.update({f"settings.{k}": _scalar(v) for k, v in value.items()})
        else:
            out[key] = _scalar(value)
    return out


def _scalar(value: Any) -> Any:
    """A CSV cell: lists and mappings as JSON text, None as empty."""
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else value


def bench_csv(doc: dict[str, Any]) -> str:
    """The cells of a `bench_json` document as CSV, one row per cell, the run's record on each."""
    run = {f"run.{k}": _scalar(v) for k, v in doc.get("run", {}).items() if k != "devices"}
    rows = [{**_flat_cell(c), **run} for c in doc.get("cells", [])]
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def bench_paths(xlsx: Path) -> BenchFiles:
    """`<run>.bench.json` and `<run>.bench.csv` beside `<run>.xlsx`."""
    stem = xlsx.with_suffix("")
    return BenchFiles(
        json=stem.with_name(stem.name + ".bench.json"),
        csv=stem.with_name(stem.name + ".bench.csv"),
    )


def write_bench_exports(xlsx: Path, outcome: Outcome) -> BenchFiles | None:
    """Both files beside the workbook, each written atomically; None when the run has no cells
    (a calibration-only run writes no benchmark files)."""
    if not outcome.cells:
        return None
    doc = bench_json(outcome.cells, outcome.header, outcome.infos)
    paths = bench_paths(xlsx)
    write_atomically(paths.json, (json.dumps(doc, indent=2) + "\n").encode("utf-8"))
    write_atomically(paths.csv, bench_csv(doc).encode("utf-8"))
    return paths
