"""Memory probes: NVML (device memory) and the engine's process tree, sampled in a thread.

Every figure we write names the probe and the metric that produced it:
- `nvml`: device used memory of the GPUs the engine is pinned to (all GPUs NVML sees when it is
  not pinned), minus the baseline taken before the engine started (metric `device-used`).
- `process`: the engine's process tree (Linux `/proc`). Two metrics, because the exact one is
  costly: the 50 ms series and the peak use RSS (`/proc/PID/statm`, a fraction of a millisecond
  for the tree; pages shared between the tree's processes count once per process), and the steady
  value uses PSS (`/proc/PID/smaps_rollup`), read a few times after the warm-up mark: each shared
  page is split between the processes that map it, so summed over the tree it counts once. When PSS
  cannot be read for one process of the tree, the steady value is the RSS median and the probe is
  labelled `process-rss`: a metric never changes under the same label.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

from vramphysics.hostinfo import cuda_driver_version

log = logging.getLogger(__name__)

DEVICE_USED = "device-used"  # NVML: memory used on the device(s)
RSS = "rss"  # resident set size summed over the process tree
PSS = "pss"  # proportional set size summed over the process tree
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class ProbeReadError(Exception):
    """One reading failed (the driver or a process answered with an error); the run goes on."""


class MetricDenied(Exception):
    """The exact metric cannot be read for a process of the tree (permissions)."""


@dataclass(frozen=True)
class Sample:
    t_s: float  # seconds since the recording started
    used_bytes: int


@dataclass(frozen=True)
class MemoryTrace:
    """One recording: the series, the baseline before the engine, its steady value and peak.

    `probe` is the label every figure carries (`nvml`, `process`, or `process-rss` when the exact
    metric was denied); `series_metric` is what the samples and the peak measure, `steady_metric`
    what the steady value measures (`exact_bytes` holds the exact reads it is the median of).
    """

    probe: str
    device: str
    interval_s: float
    samples: tuple[Sample, ...]
    baseline_bytes: int
    steady_bytes: int
    peak_bytes: int
    per_process_bytes: dict[int, int] = field(default_factory=dict)
    series_metric: str = ""
    steady_metric: str = ""
    exact_bytes: tuple[int, ...] = ()
    errors: int = 0
    note: str = ""  # why the steady metric is not the probe's exact one, when it is not

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
    cuda_version: str | None = None  # the CUDA version the driver supports ("12.4")


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
        return NvmlStatus(True, "ok", tuple(gpus), cuda_driver_version(pynvml))
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


def device_label(names: Sequence[str]) -> str:
    """The device a figure belongs to: the GPU's name, `2x NAME` for several alike, else the names
    joined with ` + `."""
    if len(set(names)) == 1:
        return names[0] if len(names) == 1 else f"{len(names)}x {names[0]}"
    return " + ".join(names)


def device_names(label: str) -> list[str]:
    """The GPU names a `device_label` stands for: `2x NAME` -> [NAME, NAME], `A + B` -> [A, B]."""
    count, x, name = label.partition("x ")
    if x and count.isdigit() and int(count) > 1:
        return [name] * int(count)
    return label.split(" + ")


class Probe:
    """Something that reads a memory figure now. Subclasses set `name`, `device` and metrics.

    `read()` is the cheap reading behind the series and the peak (`series_metric`); a probe whose
    cheap reading is not exact sets `exact_metric` and implements `read_exact()`, which the
    recorder calls only a few times after the warm-up mark.
    """

    name = "probe"
    device = "unknown"
    series_metric = "unknown"
    exact_metric: str | None = None

    def read(self) -> int:
        raise NotImplementedError

    def read_exact(self) -> int:
        """The exact metric now; MetricDenied when it cannot be read for the whole tree."""
        raise NotImplementedError

    def per_process(self) -> dict[int, int]:
        return {}

    def close(self) -> None:
        """Release handles."""


def _walk_children(root: int) -> list[int]:
    """The root and its descendants from `/proc/PID/task/TID/children`: no scan of every process
    on the machine (psutil's `children()` reads `/proc/*/stat` of all of them)."""
    out, seen, i = [root], {root}, 0
    while i < len(out):
        pid = out[i]
        i += 1
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except (FileNotFoundError, ProcessLookupError):
            continue  # gone since its parent listed it
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                    kids = [int(x) for x in fh.read().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue  # the thread ended
            out.extend(k for k in kids if k not in seen)
            seen.update(kids)
    return out


def _psutil_tree(root: int) -> list[int]:
    try:
        return [root, *(c.pid for c in psutil.Process(root).children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def _has_proc_children() -> bool:
    return os.path.exists(f"/proc/self/task/{threading.get_native_id()}/children")


def _rss_bytes(pid: int) -> int | None:
    """Resident set size from `/proc/PID/statm` (RssAnon + RssFile + RssShmem); None when gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE_BYTES
    except (FileNotFoundError, ProcessLookupError):
        return None


def _pss_bytes(pid: int) -> int | None:
    """Proportional set size from `/proc/PID/smaps_rollup`; None when the process is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
            text = fh.read()
    except PermissionError as exc:
        raise MetricDenied(f"PSS of pid {pid} is not readable: {exc.strerror}") from exc
    except (FileNotFoundError, ProcessLookupError):
        if not os.path.exists(f"/proc/{pid}"):
            return None
        try:  # a kernel before 4.14 has no smaps_rollup: psutil sums smaps
            return int(psutil.Process(pid).memory_full_info().pss)
        except psutil.NoSuchProcess:
            return None
        except psutil.AccessDenied as exc:
            raise MetricDenied(f"PSS of pid {pid} is not readable: {exc}") from exc
    for line in text.splitlines():
        if line.startswith(b"Pss:"):
            return int(line.split()[1]) * 1024
    return 0  # a zombie has no mappings


class ProcessTreeProbe(Probe):
    """RSS (cheap, for the series) and PSS (exact, for the steady value) summed over a process
    and all its descendants. Linux only (`/proc`)."""

    name = "process"
    device = "cpu"
    series_metric = RSS
    exact_metric = PSS

    def __init__(self, root_pid: Callable[[], int | None], *, tree_max_age_s: float = 0.5) -> None:
        self._root_pid = root_pid
        self._tree_max_age_s = tree_max_age_s
        self._walk = _walk_children if _has_proc_children() else _psutil_tree
        self._tree: tuple[int, list[int], float] | None = None  # (root, pids, when)
        self._last: dict[int, int] = {}
        self._last_exact: dict[int, int] = {}

    def _pids(self, *, fresh: bool) -> list[int]:
        root = self._root_pid()
        if root is None:
            return []
        now = time.monotonic()
        cached = self._tree
        if fresh or cached is None or cached[0] != root or now - cached[2] > self._tree_max_age_s:
            # a fresh walk for the exact read; the cached one (at most tree_max_age_s old) for the
            # series, which may miss a child forked since, for that long
            pids = self._walk(root)
            self._tree = (root, pids, now)
            return pids
        return cached[1]

    def read(self) -> int:
        per = {}
        for pid in self._pids(fresh=False):
            rss = _rss_bytes(pid)
            if rss is not None:
                per[pid] = rss
        self._last = per
        return sum(per.values())

    def read_exact(self) -> int:
        per = {}
        for pid in self._pids(fresh=True):
            pss = _pss_bytes(pid)
            if pss is not None:
                per[pid] = pss
        self._last_exact = per
        return sum(per.values())

    def per_process(self) -> dict[int, int]:
        """The last exact reading per process (PSS), else the last cheap one (RSS)."""
        return dict(self._last_exact or self._last)


class NvmlProbe(Probe):
    """Used memory summed over the given NVIDIA GPUs (NVML indices; None: every GPU NVML sees),
    and per-process usage where the driver reports it."""

    name = "nvml"
    series_metric = DEVICE_USED

    def __init__(self, indices: int | Sequence[int] | None = None) -> None:
        pynvml: Any = _nvml()  # the module, untyped
        if pynvml is None:
            raise ProbeReadError("nvidia-ml-py is not installed")
        self._nv = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise ProbeReadError(f"NVML unavailable: {exc}") from exc
        wanted = "all" if indices is None else indices
        try:
            if indices is None:
                indices = range(pynvml.nvmlDeviceGetCount())
            self.indices = (indices,) if isinstance(indices, int) else tuple(indices)
            if not self.indices:
                raise ProbeReadError("NVML lists no GPU")
            self._handles = tuple(pynvml.nvmlDeviceGetHandleByIndex(i) for i in self.indices)
            self.device = device_label([_text(pynvml.nvmlDeviceGetName(h)) for h in self._handles])
            self.total_bytes = sum(
                int(pynvml.nvmlDeviceGetMemoryInfo(h).total) for h in self._handles
            )
        except pynvml.NVMLError as exc:
            pynvml.nvmlShutdown()
            raise ProbeReadError(f"NVML GPU(s) {wanted}: {exc}") from exc
        except ProbeReadError:
            pynvml.nvmlShutdown()
            raise

    def read(self) -> int:
        try:
            return sum(int(self._nv.nvmlDeviceGetMemoryInfo(h).used) for h in self._handles)
        except self._nv.NVMLError as exc:
            raise ProbeReadError(f"NVML read failed: {exc}") from exc

    def per_process(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for h in self._handles:
            for pid, used in _gpu_processes(self._nv, h):
                if used is not None:
                    out[pid] = out.get(pid, 0) + used
        return out

    def close(self) -> None:
        self._nv.nvmlShutdown()


def _gpus_text(indices: Sequence[int]) -> str:
    return f"GPU {indices[0]}" if len(indices) == 1 else f"GPUs {', '.join(map(str, indices))}"


@dataclass(frozen=True)
class ProbeChoice:
    """The probes recorded through one start and why; `pick_trace` keeps one after the start."""

    probes: tuple[Probe, ...]
    reason: str


def probes_for(
    prefer: str,
    root_pid: Callable[[], int | None],
    gpu_indices: Sequence[int] | None,
    status: NvmlStatus | None = None,
) -> ProbeChoice:
    """The probes for one start. `auto` with a GPU answering records NVML on `gpu_indices` (None:
    every GPU NVML sees) and the process tree together, so the engine's own report of where its
    buffers live can decide after the start; `nvml` / `process` force one."""
    if prefer == "process":
        return ProbeChoice((ProcessTreeProbe(root_pid),), "process tree (configured)")
    status = status if status is not None else nvml_status()
    reason = status.reason
    if status.available and status.gpus:
        try:
            nv = NvmlProbe(None if gpu_indices is None else tuple(gpu_indices))
        except ProbeReadError as exc:
            reason = str(exc)
        else:
            where = _gpus_text(nv.indices)
            if prefer == "nvml":
                return ProbeChoice((nv,), f"NVML on {where} (configured)")
            return ProbeChoice(
                (nv, ProcessTreeProbe(root_pid)),
                f"NVML on {where} when the engine's buffers are on the GPU, else the process tree",
            )
    if prefer == "nvml":
        log.warning("NVML requested but unavailable (%s); using the process tree", reason)
    return ProbeChoice((ProcessTreeProbe(root_pid),), f"process tree ({reason})")
