"""The run header: the first journal line of a run (and of `bench --url`), with everything a
reader needs to reproduce its figures: host, OS, CPU, GPUs, driver, CUDA, tool version, commit."""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from vramphysics import __version__
from vramphysics.hostinfo import cpu_model
from vramphysics.probes import NvmlStatus
from vramphysics.records import RunHeader
from vramphysics.redact import redact


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def total_ram() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


def run_header(
    run_id: str,
    nvml: NvmlStatus,
    *,
    setups: list[str],
    probe: str,
    probe_reason: str,
    config_path: str = "",
    setups_path: str = "",
    sweep_contexts: Sequence[int] = (),
) -> RunHeader:
    """The header of a run on this machine; `nvml`: the GPUs as the run found them."""
    gpus: list[dict[str, object]] = [
        {"index": g.index, "name": g.name, "total_bytes": g.total_bytes, "used_bytes": g.used_bytes}
        for g in nvml.gpus
    ]
    return RunHeader(
        run_id=run_id,
        started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        host=socket.gethostname(),
        platform=platform.platform(),
        python=platform.python_version(),
        git_commit=git_commit(),
        tool_version=__version__,
        config_path=config_path,
        setups_path=setups_path,
        setups=setups,
        probe=probe,
        probe_reason=probe_reason,
        devices=gpus or [{"name": "cpu", "total_bytes": total_ram()}],
        driver=nvml.gpus[0].driver if nvml.gpus else None,
        sweep_contexts=list(sweep_contexts),
        argv=[redact(a) for a in sys.argv],
        cpu_model=cpu_model(),
        cuda_version=nvml.cuda_version,
    )
