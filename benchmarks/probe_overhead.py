"""How long one memory sample takes, so the 50 ms sampling interval is honest.

Run: `make bench` (or `python benchmarks/probe_overhead.py`). Starts a tree of N sleeping
Python processes and times ProcessTreeProbe.read() (USS summed over the tree), and NVML's read
when an NVIDIA GPU answers. Target: one sample well under the interval (50 ms).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from vramphysics.probes import NvmlProbe, ProcessTreeProbe, nvml_status

TARGET_MS = 50.0


def _tree(n_children: int) -> subprocess.Popen[bytes]:
    code = (
        "import subprocess, sys, time\n"
        f"kids = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']) for _ in range({n_children})]\n"
        "time.sleep(60)\n"
    )
    return subprocess.Popen([sys.executable, "-c", code])


def _time_reads(read: object, n: int = 200) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        read()  # type: ignore[operator]
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def main() -> int:
    worst = 0.0
    for n_children in (0, 3, 8):
        root = _tree(n_children)
        time.sleep(1.5)
        probe = ProcessTreeProbe(lambda pid=root.pid: pid)
        ms = _time_reads(probe.read)
        root.kill()
        subprocess.run(["pkill", "-P", str(root.pid)], check=False)
        p50, p99 = statistics.median(ms), sorted(ms)[int(len(ms) * 0.99) - 1]
        worst = max(worst, p99)
        print(
            f"process tree of {n_children + 1:2d}: median {p50:6.2f} ms, p99 {p99:6.2f} ms per sample"
        )
    status = nvml_status()
    if status.available and status.gpus:
        nv = NvmlProbe(0)
        ms = _time_reads(nv.read)
        nv.close()
        print(f"NVML {status.gpus[0].name}: median {statistics.median(ms):.3f} ms per sample")
    else:
        print(f"NVML: not measured ({status.reason})")
    verdict = "OK" if worst < TARGET_MS / 2 else "TOO SLOW"
    print(f"{verdict}: worst p99 {worst:.2f} ms against a {TARGET_MS:.0f} ms interval")
    return 0 if verdict == "OK" else 1


if __name__ == "__main__":
    sys.exit(main())
