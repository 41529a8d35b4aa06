"""Engine faults: killed mid-sweep, hung at start, out of memory at start. The run goes on."""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING, Any

import psutil
import pytest

if TYPE_CHECKING:
    from conftest import Workspace  # the `ws` fixture

pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make test`")
pytestmark = [pytest.mark.slow, pytest.mark.faults, pytest.mark.timeout(180)]


def _statuses(records: list[dict[str, Any]], ctx: int | None = None) -> list[dict[str, Any]]:
    return [r for r in records if r["kind"] == "status" and r["ctx"] == ctx]


def test_engine_sigkill_mid_sweep_is_engine_crashed_and_the_sweep_goes_on(
    ws: Workspace, figures: dict[str, Any]
) -> None:
    ws.configure(sweep={"settle_s": 1.5})  # a wide window between "ready" and the next check
    runner = ws.start()
    ws.wait_journal(lambda rs: any(r["kind"] == "point" for r in rs), 60, "the first point")
    # Kill once the warm-up request is done (the engine is ready, measured, settling): a kill
    # before the runner saw it ready is a different failure (start_failed).
    ws.wait_until(
        lambda: "total time" in ws.engine_log(1024), 60, "the ctx 1024 warm-up in the engine log"
    )
    (victim,) = [p for p in ws.engines() if ws.ctx_of(p) == 1024]
    figures["rows_before"] = len(ws.journal())
    victim.send_signal(signal.SIGKILL)
    _out, err = runner.communicate(timeout=120)

    assert runner.returncode == 0, err
    assert "Traceback" not in err
    records = ws.journal()
    (crash,) = _statuses(records, 1024)
    assert crash["status"] == "FAILED" and crash["failure_kind"] == "engine_crashed"
    assert "-9" in crash["reason"]
    assert "llama" in crash["log_tail"].lower(), "the log tail of that start"
    assert sorted(r["ctx"] for r in records if r["kind"] == "point") == [512, 2048, 4096]
    (final,) = _statuses(records)
    assert final["status"] == "OK" and "1 step(s) failed" in final["reason"]
    (entry,) = ws.db_entries()
    assert [c for c, _ in entry.points] == [512, 2048, 4096]
    (xlsx,) = ws.reports()
    failures = ws.sheet(xlsx, "Failures")
    assert [(f["Context (tokens)"], f["Kind"]) for f in failures] == [(1024, "engine_crashed")]
    figures.update(ws.invariants(), exit=runner.returncode)


def test_engine_that_hangs_at_start_times_out_and_is_killed(
    ws: Workspace, figures: dict[str, Any]
) -> None:
    hang = ws.fake_engine("hang.py")
    ws.configure(
        engines={"llamacpp": {"command": hang, "start_timeout_s": 2, "stop_timeout_s": 1}},
        sweep={"contexts": [512, 1024]},
    )
    t0 = time.monotonic()
    runner = ws.start()
    seen: dict[int, psutil.Process] = {}
    while runner.poll() is None:
        seen |= {p.pid: p for p in ws.engines()}
        time.sleep(0.1)
    _out, err = runner.communicate()
    elapsed = time.monotonic() - t0

    assert runner.returncode == 0, err
    assert "Traceback" not in err
    assert len(seen) >= 4, "each start ran hang.py and its child"
    assert not [p for p in seen.values() if ws.running(p)], "the hung trees were killed"
    records = ws.journal()
    for ctx in (512, 1024):
        (row,) = _statuses(records, ctx)
        assert row["status"] == "FAILED" and row["failure_kind"] == "timeout"
        assert f"--n_ctx {ctx}" in row["log_tail"], "the hung start's own log"
    (final,) = _statuses(records)
    assert final["status"] == "FAILED" and final["reason"] == "no context could be measured"
    # per context: start timeout 2 s, stop timeout 1 s, then SIGKILL and at most 5 s to reap
    assert elapsed < 2 * (2 + 1 + 5) + 10
    figures.update(ws.invariants(), exit=runner.returncode, hung_pids_seen=len(seen))


def test_engine_out_of_memory_at_one_context_is_cuda_oom_with_the_message(
    ws: Workspace, figures: dict[str, Any]
) -> None:
    oom_at_1024 = ws.fake_engine("oom_at.py", "1024")
    ws.configure(engines={"llamacpp": {"command": oom_at_1024}})
    result = ws.run()

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    records = ws.journal()
    (oom,) = _statuses(records, 1024)
    assert oom["status"] == "FAILED" and oom["failure_kind"] == "cuda_oom"
    assert "cudaMalloc failed: out of memory" in oom["log_tail"]
    assert sorted(r["ctx"] for r in records if r["kind"] == "point") == [512, 2048, 4096]
    assert [r["model"] for r in records if r["kind"] == "bench_cell"] == ["llamacpp:tiny.gguf"]
    (entry,) = ws.db_entries()
    assert entry.n_points == 3
    (xlsx,) = ws.reports()
    (failure,) = ws.sheet(xlsx, "Failures")
    assert failure["Kind"] == "cuda_oom"
    assert "cudaMalloc failed: out of memory" in failure["Log tail"]
    figures.update(ws.invariants(), exit=result.returncode)
