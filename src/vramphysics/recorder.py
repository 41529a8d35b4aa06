"""Sampling a probe through one engine start, and choosing the trace that measured the engine.

`Recorder` reads a probe's cheap metric every `interval_s` (the series and the peak) and, after
the warm-up mark, its exact metric a few times (the steady value); `summarize` turns that into a
`MemoryTrace`. `pick_trace` keeps, of the traces recorded together, the one that saw the engine.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psutil

from vramphysics.probes import (
    DEVICE_USED,
    MemoryTrace,
    MetricDenied,
    NvmlStatus,
    Probe,
    ProbeReadError,
    Sample,
)

log = logging.getLogger(__name__)

# What a probe read may raise when the thing it reads fails (NVML, a process gone): counted,
# never fatal, in the sampling thread; at the baseline, the start fails (`calibrate`).
READ_ERRORS: tuple[type[BaseException], ...] = (ProbeReadError, psutil.Error, OSError)


def pick_trace(
    traces: Sequence[MemoryTrace], reason: str, *, device_resident: bool | None, source: str
) -> tuple[MemoryTrace, str]:
    """After the start, the trace that measured the engine, and why.

    With NVML and the process tree both recorded: NVML when the engine reports its buffers on the
    GPU (`device_resident`), the process tree when it reports them in host memory, NVML when it
    says nothing. `source` names the engine's report (e.g. `llamacpp-log`).
    """
    if not traces:
        raise ValueError("no trace to pick from")
    nv = next((t for t in traces if t.series_metric == DEVICE_USED), None)
    if len(traces) == 1:
        (only,) = traces
        if nv is not None and device_resident is False:
            return only, f"{reason}; but {source} reports the buffers in host memory"
        return only, reason
    proc = next(t for t in traces if t is not nv)
    if nv is None:
        raise ValueError(f"two traces without an NVML one: {[t.probe for t in traces]}")
    if device_resident is None:
        return nv, f"NVML on {nv.device}: the engine does not say where its buffers are"
    if device_resident:
        return nv, f"NVML on {nv.device}: {source} reports the buffers on the GPU"
    return proc, f"process tree: {source} reports the buffers in host memory (NVML not used)"


def run_probe_rule(prefer: str, status: NvmlStatus, gpu_index: int | None) -> tuple[str, str]:
    """The run header's probe and reason: the rule every start follows (`probes_for`, then
    `pick_trace`), not one probe. `status`: NVML as the run found it; `gpu_index`: the configured
    `probes.gpu_index`, None when the config does not set it."""
    unpinned = f"GPU {gpu_index}" if gpu_index is not None else "every GPU NVML sees"
    gpus = f"each engine's GPUs (those it is pinned to; not pinned: {unpinned})"
    if prefer == "process":
        return "process", "configured: the process tree of each engine"
    if status.available and status.gpus:
        if prefer == "nvml":
            return "nvml", f"configured: NVML over {gpus}"
        return "nvml or process", (
            f"auto: NVML over {gpus}, unless the engine reports its buffers in host memory: "
            "then its process tree"
        )
    why = status.reason if not status.available else "NVML sees no GPU"
    if prefer == "nvml":
        return "process", f"configured: NVML, unavailable ({why}): the process tree of each engine"
    return "process", f"auto: the process tree of each engine ({why})"


class Recorder:
    """Samples a probe in a background thread from `start()` until `stop()`.

    `mark()` notes a moment (e.g. the end of the warm-up). The steady value is the median of the
    exact reads taken after the last mark (one every `exact_every_s`, at most `max_exact`) when
    the probe has an exact metric, else the median of the samples after the mark; start-up
    transients do not count. The peak is the highest sample of the whole recording. A failed read
    (NVML error, a process gone mid-read) is counted in `errors`, never fatal.
    """

    def __init__(
        self, probe: Probe, interval_s: float, *, exact_every_s: float = 0.25, max_exact: int = 8
    ) -> None:
        self.probe = probe
        self.interval_s = interval_s
        self.exact_every_s = exact_every_s
        self.max_exact = max_exact
        self._samples: list[Sample] = []
        self._exact: list[int] = []
        self._exact_t: float | None = None
        self._denied = ""
        self._mark_t: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self._baseline = 0
        self._lock = threading.Lock()
        self._unexpected_logged = False
        self._held = False
        self.errors = 0

    def baseline(self) -> int:
        """Read the probe once before the engine starts (NVML: memory used by others).

        A failed read raises (one of `READ_ERRORS`): without a baseline the start cannot be
        measured, and the caller fails it."""
        self._baseline = self.probe.read() if self.probe.series_metric == DEVICE_USED else 0
        return self._baseline

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="memory-probe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._tick()
            self._stop.wait(self.interval_s)

    def _tick(self) -> None:
        """One sample (and an exact read when due); whatever a read raises is counted."""
        try:
            self.sample_now()
            if self._exact_due():
                self.exact_now()
        except Exception as exc:  # noqa: BLE001 - a sampling thread must not die silently
            self.errors += 1
            if not self._unexpected_logged:
                self._unexpected_logged = True
                log.warning(
                    "%s probe: unexpected error while sampling (counted, sampling goes on): %r",
                    self.probe.name,
                    exc,
                    exc_info=exc,
                )

    def _exact_due(self) -> bool:
        with self._lock:
            if self._mark_t is None or len(self._exact) >= self.max_exact:
                return False
            last = self._exact_t
        return last is None or time.monotonic() - self._t0 - last >= self.exact_every_s

    def sample_now(self) -> None:
        try:
            value = self.probe.read()
        except READ_ERRORS as exc:
            self.errors += 1
            log.debug("probe read failed: %s", exc)
            return
        with self._lock:
            self._samples.append(Sample(time.monotonic() - self._t0, value))

    def exact_now(self) -> None:
        """One exact read (after the mark); a denied metric stops further tries and is noted."""
        with self._lock:
            if (
                self.probe.exact_metric is None
                or self._denied
                or self._mark_t is None
                or self._held
            ):
                return
            self._exact_t = time.monotonic() - self._t0
        try:
            value = self.probe.read_exact()
        except MetricDenied as exc:
            self._denied = f"{self.probe.exact_metric} denied ({exc}): steady value in {self.probe.series_metric}"
            log.warning("%s probe: %s", self.probe.name, self._denied)
            return
        except READ_ERRORS as exc:
            self.errors += 1
            log.debug("exact probe read failed: %s", exc)
            return
        with self._lock:
            self._exact.append(value)

    def mark(self) -> None:
        with self._lock:
            self._mark_t = time.monotonic() - self._t0
            self._exact.clear()  # only reads after the last mark count
            self._exact_t = None

    def hold_steady(self) -> None:
        """No more exact reads: the steady value is what was read so far (the benchmark's
        requests that follow must not move it); the series goes on."""
        with self._lock:
            self._held = True

    def window(self, t_from: float, t_to: float) -> WindowMemory | None:
        """The samples taken between two `time.monotonic()` moments: their peak and median,
        above the baseline; None when none fell in the window."""
        with self._lock:
            values = [s.used_bytes for s in self._samples if t_from <= s.t_s + self._t0 <= t_to]
        if not values:
            return None
        return WindowMemory(
            peak_bytes=max(values) - self._baseline,
            steady_bytes=int(statistics.median(values)) - self._baseline,
            n_samples=len(values),
            metric=self.probe.series_metric,
            probe=self.probe.name,
            device=self.probe.device,
        )

    def snapshot(self) -> MemoryTrace:
        """The trace so far (one fresh sample, and an exact read when none was taken yet);
        the recording goes on."""
        self.sample_now()
        if not self._exact:
            self.exact_now()
        with self._lock:
            samples, exact, mark = tuple(self._samples), tuple(self._exact), self._mark_t
        return summarize(
            samples,
            probe=self.probe.name,
            device=self.probe.device,
            interval_s=self.interval_s,
            baseline_bytes=self._baseline,
            mark_t_s=mark,
            per_process=self.probe.per_process(),
            series_metric=self.probe.series_metric,
            exact=exact,
            exact_metric=self.probe.exact_metric,
            errors=self.errors,
            note=self._denied,
        )

    def stop(self) -> MemoryTrace:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return self.snapshot()


@dataclass(frozen=True)
class WindowMemory:
    """Memory while something ran (a benchmark cell): the probe's series metric, above the
    baseline taken before the engine started."""

    peak_bytes: int
    steady_bytes: int  # the median of the samples in the window
    n_samples: int
    metric: str
    probe: str
    device: str


def summarize(
    samples: tuple[Sample, ...],
    *,
    probe: str,
    device: str,
    interval_s: float,
    baseline_bytes: int,
    mark_t_s: float | None,
    per_process: dict[int, int] | None = None,
    series_metric: str = "",
    exact: tuple[int, ...] = (),
    exact_metric: str | None = None,
    errors: int = 0,
    note: str = "",
) -> MemoryTrace:
    """Steady = median of the exact reads when there are any, else of the samples after the mark
    (all samples when there is no mark). The label says when the steady value is not in the
    probe's own exact metric: `process` measured in RSS is `process-rss`."""
    if exact and exact_metric is not None:
        steady, steady_metric = int(statistics.median(exact)), exact_metric
    else:
        after = [s.used_bytes for s in samples if mark_t_s is None or s.t_s >= mark_t_s]
        if not after and samples:
            after = [samples[-1].used_bytes]
        steady = int(statistics.median(after)) if after else baseline_bytes
        steady_metric = series_metric
        if exact_metric is not None and not note:
            note = f"no {exact_metric} read after the mark: steady value in {series_metric}"
    label = probe if exact_metric in (None, steady_metric) else f"{probe}-{steady_metric}"
    peak = max((s.used_bytes for s in samples), default=baseline_bytes)
    return MemoryTrace(
        probe=label,
        device=device,
        interval_s=interval_s,
        samples=samples,
        baseline_bytes=baseline_bytes,
        steady_bytes=steady,
        peak_bytes=peak,
        per_process_bytes=dict(per_process or {}),
        series_metric=series_metric,
        steady_metric=steady_metric,
        exact_bytes=exact,
        errors=errors,
        note=note,
    )
