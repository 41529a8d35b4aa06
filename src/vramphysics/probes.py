"""Memory probes: NVML (device memory) and the engine's process tree (psutil), sampled in a thread.

Every figure we write names the probe that produced it:
- `nvml`: device used memory of one GPU (what really limits what fits), minus the baseline taken
  before the engine started; per-process figures where the driver reports them.
- `process`: the unique set size (USS) summed over every process of the engine's tree, so pages
  shared between a server's processes count once (RSS would count them again per process).
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    t_s: float  # seconds since the recording started
    used_bytes: int


@dataclass(frozen=True)
class MemoryTrace:
    """One recording: the series, the baseline before the engine, its steady value and peak."""

    probe: str
    device: str
    interval_s: float
    samples: tuple[Sample, ...]
    baseline_bytes: int
    steady_bytes: int
    peak_bytes: int
    per_process_bytes: dict[int, int] = field(default_factory=dict)

    @property
    def attributed_bytes(self) -> int:
        """The steady value minus what was there before the engine started."""
        return self.steady_bytes - self.baseline_bytes

    @property
    def attributed_peak_bytes(self) -> int:
        return self.peak_bytes - self.baseline_bytes


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    total_bytes: int
    used_bytes: int
    free_bytes: int
    driver: str
    processes: tuple[tuple[int, int | None], ...] = ()  # (pid, used bytes or None)


@dataclass(frozen=True)
class NvmlStatus:
    available: bool
    reason: str
    gpus: tuple[GpuInfo, ...] = ()


def _nvml() -> object | None:
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def nvml_status() -> NvmlStatus:
    """Query every NVIDIA GPU; without a driver the status says why, and lists no GPU."""
    pynvml = _nvml()
    if pynvml is None:
        return NvmlStatus(False, "nvidia-ml-py is not installed")
    try:
        pynvml.nvmlInit()  # type: ignore[attr-defined]
    except pynvml.NVMLError as exc:  # type: ignore[attr-defined]
        return NvmlStatus(False, f"NVML unavailable: {exc}")
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())  # type: ignore[attr-defined]
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):  # type: ignore[attr-defined]
            h = pynvml.nvmlDeviceGetHandleByIndex(i)  # type: ignore[attr-defined]
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)  # type: ignore[attr-defined]
            gpus.append(
                GpuInfo(
                    index=i,
                    name=_text(pynvml.nvmlDeviceGetName(h)),  # type: ignore[attr-defined]
                    total_bytes=int(mem.total),
                    used_bytes=int(mem.used),
                    free_bytes=int(mem.free),
                    driver=driver,
                    processes=tuple(_gpu_processes(pynvml, h)),
                )
            )
        return NvmlStatus(True, "ok", tuple(gpus))
    finally:
        pynvml.nvmlShutdown()  # type: ignore[attr-defined]


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _gpu_processes(pynvml: object, handle: object) -> list[tuple[int, int | None]]:
    out: dict[int, int | None] = {}
    for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        try:
            procs = getattr(pynvml, getter)(handle)
        except (AttributeError, pynvml.NVMLError):  # type: ignore[attr-defined]
            continue
        for p in procs:
            used = getattr(p, "usedGpuMemory", None)
            out[int(p.pid)] = int(used) if isinstance(used, int) else None
    return sorted(out.items())


class Probe:
    """Something that reads a memory figure now. Subclasses set `name` and `device`."""

    name = "probe"
    device = "unknown"

    def read(self) -> int:
        raise NotImplementedError

    def per_process(self) -> dict[int, int]:
        return {}

    def close(self) -> None:
        """Release handles."""


class ProcessTreeProbe(Probe):
    """USS (falling back to RSS) summed over a process and all its descendants."""

    name = "process"
    device = "cpu"

    def __init__(self, root_pid: Callable[[], int | None]) -> None:
        self._root_pid = root_pid
        self._last: dict[int, int] = {}

    def read(self) -> int:
        pid = self._root_pid()
        if pid is None:
            return 0
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        per: dict[int, int] = {}
        for p in procs:
            try:
                try:
                    per[p.pid] = int(p.memory_full_info().uss)
                except psutil.AccessDenied:
                    per[p.pid] = int(p.memory_info().rss)
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
        self._last = per
        return sum(per.values())

    def per_process(self) -> dict[int, int]:
        return dict(self._last)


class NvmlProbe(Probe):
    """Used memory of one NVIDIA GPU, and per-process usage where the driver reports it."""

    name = "nvml"

    def __init__(self, index: int = 0) -> None:
        pynvml = _nvml()
        if pynvml is None:
            raise RuntimeError("nvidia-ml-py is not installed")
        self._nv = pynvml
        pynvml.nvmlInit()  # type: ignore[attr-defined]
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)  # type: ignore[attr-defined]
        self.device = _text(pynvml.nvmlDeviceGetName(self._handle))  # type: ignore[attr-defined]
        self.total_bytes = int(pynvml.nvmlDeviceGetMemoryInfo(self._handle).total)  # type: ignore[attr-defined]

    def read(self) -> int:
        return int(self._nv.nvmlDeviceGetMemoryInfo(self._handle).used)  # type: ignore[attr-defined]

    def per_process(self) -> dict[int, int]:
        return {
            pid: used for pid, used in _gpu_processes(self._nv, self._handle) if used is not None
        }

    def close(self) -> None:
        self._nv.nvmlShutdown()  # type: ignore[attr-defined]


def choose_probe(
    prefer: str,
    root_pid: Callable[[], int | None],
    gpu_index: int = 0,
    status: NvmlStatus | None = None,
) -> tuple[Probe, str]:
    """NVML when a GPU answers (unless `process` is preferred), else the process tree.

    `status`: an NVML status already taken (the runner queries it once per run).
    Returns the probe and a sentence saying why it was chosen.
    """
    if prefer in ("auto", "nvml"):
        status = status if status is not None else nvml_status()
        if status.available and status.gpus:
            return NvmlProbe(gpu_index), f"NVML on GPU {gpu_index}"
        if prefer == "nvml":
            log.warning(
                "NVML requested but unavailable (%s); using the process tree", status.reason
            )
        return ProcessTreeProbe(root_pid), f"process tree ({status.reason})"
    return ProcessTreeProbe(root_pid), "process tree (configured)"


class Recorder:
    """Samples a probe in a background thread from `start()` until `stop()`.

    `mark()` notes a moment (e.g. the end of the warm-up); the steady value is the median of the
    samples after the last mark, so start-up transients do not count, and the peak is the highest
    sample of the whole recording.
    """

    def __init__(self, probe: Probe, interval_s: float) -> None:
        self.probe = probe
        self.interval_s = interval_s
        self._samples: list[Sample] = []
        self._mark_t: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self._baseline = 0
        self._lock = threading.Lock()
        self.errors = 0

    def baseline(self) -> int:
        """Read the probe once before the engine starts (NVML: memory used by others)."""
        self._baseline = self.probe.read() if self.probe.name == "nvml" else 0
        return self._baseline

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="memory-probe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample_now()
            self._stop.wait(self.interval_s)

    def sample_now(self) -> None:
        try:
            value = self.probe.read()
        except (psutil.Error, OSError) as exc:
            self.errors += 1
            log.debug("probe read failed: %s", exc)
            return
        with self._lock:
            self._samples.append(Sample(time.monotonic() - self._t0, value))

    def mark(self) -> None:
        with self._lock:
            self._mark_t = time.monotonic() - self._t0

    def stop(self) -> MemoryTrace:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sample_now()
        with self._lock:
            samples = tuple(self._samples)
            mark = self._mark_t
        return summarize(
            samples,
            probe=self.probe.name,
            device=self.probe.device,
            interval_s=self.interval_s,
            baseline_bytes=self._baseline,
            mark_t_s=mark,
            per_process=self.probe.per_process(),
        )


def summarize(
    samples: tuple[Sample, ...],
    *,
    probe: str,
    device: str,
    interval_s: float,
    baseline_bytes: int,
    mark_t_s: float | None,
    per_process: dict[int, int] | None = None,
) -> MemoryTrace:
    """Steady = median of the samples after the mark (all samples when there is no mark)."""
    if not samples:
        return MemoryTrace(
            probe, device, interval_s, (), baseline_bytes, baseline_bytes, baseline_bytes
        )
    after = [s.used_bytes for s in samples if mark_t_s is None or s.t_s >= mark_t_s]
    if not after:
        after = [samples[-1].used_bytes]
    steady = int(statistics.median(after))
    peak = max(s.used_bytes for s in samples)
    return MemoryTrace(
        probe=probe,
        device=device,
        interval_s=interval_s,
        samples=samples,
        baseline_bytes=baseline_bytes,
        steady_bytes=steady,
        peak_bytes=peak,
        per_process_bytes=dict(per_process or {}),
    )
