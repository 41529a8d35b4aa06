"""What the memory sampler costs, so the 50 ms sampling interval is honest.

Run: `make bench` (or `python benchmarks/probe_overhead.py`). Starts trees of sleeping Python
processes (in their own process group, killed as a group at the end) and measures:
- one cheap read of the process tree (RSS from /proc/PID/statm, the 50 ms series and the peak)
  and one exact read (PSS from /proc/PID/smaps_rollup, a few after the warm-up mark), against the
  old full smaps parse (psutil USS);
- the Recorder itself at 50 ms on a 9-process tree: CPU time of this process over wall time, in
  % of one core, for the series alone and for a 1 s settle with its exact reads;
- NVML's read when an NVIDIA GPU answers.
Target: the series under 2 % of a core at 50 ms for 9 processes (asserted here).
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psutil

from vramphysics.probes import NvmlProbe, ProcessTreeProbe, nvml_status
from vramphysics.recorder import Recorder

INTERVAL_S = 0.05
TARGET_PCT = 2.0


@contextmanager
def _tree(n_children: int) -> Iterator[int]:
    """A root with `n_children` sleeping children, all in a new process group; the whole group is
    killed on the way out, whatever happens."""
    code = (
        "import subprocess, sys, time\n"
        "kids = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])"
        f" for _ in range({n_children})]\n"
        "print('ready', flush=True)\n"
        "time.sleep(120)\n"
    )
    root = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert root.stdout is not None and root.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # the children finish importing
        yield root.pid
    finally:
        os.killpg(root.pid, signal.SIGKILL)
        root.wait(timeout=10)


def _ms(read: Callable[[], object], n: int = 200) -> tuple[float, float]:
    """(median wall ms, mean CPU ms) per read; CPU time is what competes with the engine, and
    does not count the time this process waits for a core on a busy machine."""
    out = []
    cpu0 = time.process_time()
    for _ in range(n):
        t0 = time.perf_counter()
        read()
        out.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(out), (time.process_time() - cpu0) / n * 1e3


def _old_uss(pid: int) -> int:
    root = psutil.Process(pid)
    return sum(p.memory_full_info().uss for p in (root, *root.children(recursive=True)))


def _core_pct(rec: Recorder, seconds: float, *, mark: bool) -> float:
    """CPU time this process spends while `rec` samples for `seconds`, in % of one core."""
    if mark:
        rec.mark()
    cpu0, wall0 = time.process_time(), time.monotonic()
    time.sleep(seconds)
    return (time.process_time() - cpu0) / (time.monotonic() - wall0) * 100


def _recorder_cost(pid: int) -> tuple[float, float, int]:
    rec = Recorder(ProcessTreeProbe(lambda: pid), INTERVAL_S)
    rec.start()
    try:
        series = _core_pct(rec, 10.0, mark=False)
        settle = _core_pct(rec, 1.0, mark=True)
    finally:
        trace = rec.stop()
    return series, settle, len(trace.exact_bytes)


def main() -> int:
    for n_children in (0, 3, 8):
        with _tree(n_children) as pid:
            probe = ProcessTreeProbe(lambda pid=pid: pid)
            cheap, cheap_cpu = _ms(probe.read)
            exact, exact_cpu = _ms(probe.read_exact, 50)
            old, old_cpu = _ms(lambda pid=pid: _old_uss(pid), 50)
            print(
                f"process tree of {n_children + 1}, per read (wall median / CPU mean): "
                f"RSS series {cheap:.2f} / {cheap_cpu:.2f} ms, PSS exact {exact:.2f} / "
                f"{exact_cpu:.2f} ms, old USS (full smaps) {old:.2f} / {old_cpu:.2f} ms"
            )
    with _tree(8) as pid:
        series, settle, n_exact = _recorder_cost(pid)
    print(
        f"Recorder at {INTERVAL_S * 1e3:.0f} ms, 9 processes: series {series:.2f} % of a core; "
        f"during a 1 s settle with {n_exact} PSS reads {settle:.2f} %"
    )
    status = nvml_status()
    if status.available and status.gpus:
        nv = NvmlProbe(0)
        ms, _cpu = _ms(nv.read)
        nv.close()
        print(f"NVML {status.gpus[0].name}: median {ms:.3f} ms per read")
    else:
        print(f"NVML: not measured ({status.reason})")
    ok = series < TARGET_PCT
    print(
        f"{'OK' if ok else 'TOO COSTLY'}: series {series:.2f} % against {TARGET_PCT:.0f} % target"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
