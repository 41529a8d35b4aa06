"""Probes and the sampler: the process tree's metrics, NVML over a fake driver, the recorder's
steady/peak summary, NVML baseline subtraction, and which probe measures a start."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from vramphysics import probes
from vramphysics.probes import (
    DEVICE_USED,
    PSS,
    RSS,
    GpuInfo,
    MemoryTrace,
    MetricDenied,
    NvmlProbe,
    NvmlStatus,
    Probe,
    ProbeReadError,
    ProcessTreeProbe,
    device_label,
    nvml_status,
    probes_for,
)
from vramphysics.recorder import Recorder, pick_trace, run_probe_rule, summarize

MIB = 2**20
GIB = 2**30


# --------------------------------------------------------------------------- a fake NVML driver


class FakeNVMLError(Exception):
    """What pynvml raises: not an OSError, not a psutil.Error."""


class FakeNvml:
    """The part of pynvml the probes use: GPUs with a name, a total and a used figure."""

    NVMLError = FakeNVMLError

    def __init__(self, gpus: list[tuple[str, int, int]]) -> None:
        self.gpus = [list(g) for g in gpus]  # [name, total, used]
        self.fail_reads = 0  # the next N memory reads raise
        self.reads = 0
        self.inits = 0

    def nvmlInit(self) -> None:
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.inits -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "999.1"

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        if not 0 <= i < len(self.gpus):
            raise FakeNVMLError(f"Invalid Argument (index {i})")
        return i

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return str(self.gpus[h][0]).encode()

    def nvmlDeviceGetMemoryInfo(self, h: int) -> SimpleNamespace:
        self.reads += 1
        if self.fail_reads:
            self.fail_reads -= 1
            raise FakeNVMLError("GPU is lost")
        _name, total, used = self.gpus[h]
        return SimpleNamespace(total=total, used=used, free=int(total) - int(used))

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=4242, usedGpuMemory=GIB * (h + 1))]


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    nv = FakeNvml([("FAKE H100", 80 * GIB, 1 * GIB), ("FAKE H100", 80 * GIB, 2 * GIB)])
    monkeypatch.setattr(probes, "_nvml", lambda: nv)
    return nv


def test_fake_nvml_status_lists_both_gpus(fake_nvml: FakeNvml) -> None:
    status = nvml_status()
    assert status.available and [g.index for g in status.gpus] == [0, 1]
    assert status.gpus[1].used_bytes == 2 * GIB and status.gpus[0].processes == ((4242, GIB),)
    assert fake_nvml.inits == 0  # shut down again


# --------------------------------------------------------------------------- NvmlProbe


def test_nvml_probe_sums_exactly_the_gpus_it_is_given(fake_nvml: FakeNvml) -> None:
    one = NvmlProbe((1,))
    assert one.indices == (1,) and one.device == "FAKE H100"
    assert one.read() == 2 * GIB and one.total_bytes == 80 * GIB
    assert one.per_process() == {4242: 2 * GIB}
    both = NvmlProbe((0, 1))
    assert both.read() == 3 * GIB and both.total_bytes == 160 * GIB
    assert both.device == "2x FAKE H100"
    assert both.per_process() == {4242: 3 * GIB}
    every = NvmlProbe(None)  # an engine pinned to nothing may use every GPU NVML sees
    assert every.indices == (0, 1) and every.read() == 3 * GIB
    assert NvmlProbe(0).indices == (0,)  # a bare index still works
    for p in (one, both, every):
        p.close()


def test_nvml_probe_refuses_a_gpu_that_is_not_there(fake_nvml: FakeNvml) -> None:
    with pytest.raises(ProbeReadError, match=r"GPU\(s\) \(5,\).*index 5"):
        NvmlProbe((5,))
    assert fake_nvml.inits == 0  # NVML shut down again


def test_nvml_read_error_is_a_probe_read_error(fake_nvml: FakeNvml) -> None:
    probe = NvmlProbe((0,))
    fake_nvml.fail_reads = 1
    with pytest.raises(ProbeReadError, match="GPU is lost"):
        probe.read()
    assert probe.read() == GIB


def test_device_label() -> None:
    assert device_label(["NVIDIA H200"]) == "NVIDIA H200"
    assert device_label(["NVIDIA H200"] * 4) == "4x NVIDIA H200"
    assert device_label(["NVIDIA A10", "NVIDIA L4"]) == "NVIDIA A10 + NVIDIA L4"


# --------------------------------------------------------------------------- a fake probe


class FakeProbe(Probe):
    """Reads given values in turn (the last one repeats); an exception in the list is raised."""

    def __init__(
        self,
        values: list[int | BaseException],
        exact: list[int | BaseException] | None = None,
        *,
        name: str = "process",
        series_metric: str = RSS,
        exact_metric: str | None = PSS,
    ) -> None:
        self.name = name
        self.device = "cpu" if name == "process" else "FAKE GPU"
        self.series_metric = series_metric
        self.exact_metric = exact_metric
        self.values = list(values)
        self.exact = list(exact or [])
        self.exact_calls = 0
        self.closed = False

    @staticmethod
    def _next(values: list[int | BaseException]) -> int:
        v = values.pop(0) if len(values) > 1 else values[0]
        if isinstance(v, BaseException):
            raise v
        return v

    def read(self) -> int:
        return self._next(self.values)

    def read_exact(self) -> int:
        self.exact_calls += 1
        return self._next(self.exact)

    def close(self) -> None:
        self.closed = True


def _nvml_like(values: list[int | BaseException]) -> FakeProbe:
    return FakeProbe(values, name="nvml", series_metric=DEVICE_USED, exact_metric=None)


def test_steady_is_the_median_of_exact_reads_after_the_mark_peak_the_highest_sample() -> None:
    rec = Recorder(FakeProbe([100, 900, 200, 300, 310, 290], exact=[250, 270, 260]), 0.05)
    assert rec.baseline() == 0  # the process tree has nothing before the engine
    rec.sample_now()
    rec.sample_now()  # a start-up spike: the peak, not the steady value
    rec.exact_now()  # before the mark: not taken
    rec.sample_now()
    rec.mark()
    for _ in range(3):
        rec.sample_now()
        rec.exact_now()
    trace = rec.stop()  # one more sample (290); the exact reads are there already
    assert [s.used_bytes for s in trace.samples] == [100, 900, 200, 300, 310, 290, 290]
    assert trace.exact_bytes == (250, 270, 260)
    assert trace.steady_bytes == 260 and trace.steady_metric == PSS
    assert trace.peak_bytes == 900 and trace.series_metric == RSS
    assert trace.probe == "process" and trace.note == "" and trace.errors == 0
    assert trace.attributed_bytes == 260


def test_stop_takes_one_exact_read_when_the_settle_took_none() -> None:
    rec = Recorder(FakeProbe([100], exact=[80]), 0.05)
    rec.mark()
    trace = rec.stop()
    assert trace.exact_bytes == (80,) and trace.steady_bytes == 80 and trace.probe == "process"


def test_exact_reads_are_capped_and_spaced() -> None:
    probe = FakeProbe([100], exact=[80])
    rec = Recorder(probe, 0.01, exact_every_s=0.0, max_exact=3)
    rec.mark()
    rec.start()
    time.sleep(0.3)
    trace = rec.stop()
    assert probe.exact_calls == 3 and len(trace.exact_bytes) == 3
    spaced = Recorder(FakeProbe([100], exact=[80]), 0.01, exact_every_s=10.0)
    spaced.mark()
    spaced.start()
    time.sleep(0.2)
    assert spaced.stop().exact_bytes == (80,)  # one at once, the next not due for 10 s


def test_nvml_steady_is_the_median_after_the_mark_minus_the_baseline() -> None:
    rec = Recorder(_nvml_like([1000, 1000, 5000, 3000, 3100, 2900]), 0.05)
    assert rec.baseline() == 1000  # memory used by others before the engine started
    rec.sample_now()
    rec.sample_now()  # 5000: start-up peak
    rec.mark()
    for _ in range(3):
        rec.sample_now()
    trace = rec.stop()  # 2900 again
    assert trace.steady_bytes == 2950  # median of 3000, 3100, 2900, 2900
    assert trace.attributed_bytes == 1950 and trace.attributed_peak_bytes == 4000
    assert trace.probe == "nvml" and trace.steady_metric == DEVICE_USED
    assert trace.exact_bytes == () and trace.note == ""


def test_pss_denied_labels_the_whole_sample_rss() -> None:
    probe = FakeProbe([100, 300, 310, 290], exact=[MetricDenied("PSS of pid 1 is not readable")])
    rec = Recorder(probe, 0.05)
    rec.sample_now()
    rec.mark()
    for _ in range(3):
        rec.sample_now()
        rec.exact_now()
    trace = rec.stop()
    assert probe.exact_calls == 1  # denied once: not asked again
    assert trace.probe == "process-rss" and trace.steady_metric == RSS
    assert trace.steady_bytes == 295  # median of 300, 310, 290, 290: in RSS, and labelled so
    assert "pss denied" in trace.note and "pid 1" in trace.note


def test_without_a_mark_the_process_steady_value_is_rss_and_says_so() -> None:
    trace = Recorder(FakeProbe([100, 120]), 0.05).stop()
    assert trace.probe == "process-rss" and "no pss read" in trace.note


def test_summary_of_no_samples_is_the_baseline() -> None:
    t = summarize(
        (),
        probe="nvml",
        device="g",
        interval_s=0.05,
        baseline_bytes=7,
        mark_t_s=None,
        series_metric=DEVICE_USED,
    )
    assert (t.steady_bytes, t.peak_bytes, t.attributed_bytes) == (7, 7, 0)


def test_an_nvml_error_in_a_sample_is_counted_not_raised(fake_nvml: FakeNvml) -> None:
    rec = Recorder(NvmlProbe((0,)), 0.01)
    fake_nvml.fail_reads = 1
    rec.sample_now()  # used to escape as pynvml.NVMLError and end the run with exit 3
    assert rec.errors == 1
    rec.sample_now()
    assert rec.stop().errors == 1


def test_the_sampling_thread_survives_nvml_errors(fake_nvml: FakeNvml) -> None:
    rec = Recorder(NvmlProbe((0,)), 0.01)
    rec.baseline()
    fake_nvml.fail_reads = 3
    rec.start()
    deadline = time.monotonic() + 5
    while fake_nvml.reads < 12 and time.monotonic() < deadline:
        time.sleep(0.01)
    trace = rec.stop()
    assert trace.errors == 3
    assert len(trace.samples) >= 5  # it went on sampling after the errors
    assert trace.steady_bytes == GIB


def test_the_sampling_thread_survives_an_unexpected_error_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # a bug in a probe (not a read error it knows): the old thread died at the first one, and
    # the last sample of stop() raised the second one into the caller
    probe = FakeProbe([RuntimeError("bug in the probe"), RuntimeError("again"), 100])
    rec = Recorder(probe, 0.01)
    with caplog.at_level("WARNING", logger="vramphysics.recorder"):
        rec.start()
        deadline = time.monotonic() + 5
        while (len(probe.values) > 1 or len(rec._samples) < 3) and time.monotonic() < deadline:
            time.sleep(0.01)
        trace = rec.stop()
    assert trace.errors == 2
    assert len(trace.samples) >= 4 and trace.samples[-1].used_bytes == 100  # it went on
    warnings = [r for r in caplog.records if "unexpected error while sampling" in r.getMessage()]
    assert len(warnings) == 1 and "bug in the probe" in warnings[0].getMessage()
    assert warnings[0].exc_info is not None  # the traceback, for the bug report


def test_a_failed_baseline_read_raises_for_the_caller(fake_nvml: FakeNvml) -> None:
    probe = NvmlProbe((0,))
    fake_nvml.fail_reads = 1
    with pytest.raises(ProbeReadError, match="GPU is lost"):
        Recorder(probe, 0.01).baseline()  # calibrate turns it into a failed start
    probe.close()


# --------------------------------------------------------------------------- the process tree


SHARED_MIB = 64
_FORKED_TREE = f"""
import os, sys, time
buf = bytearray(b"x" * ({SHARED_MIB} << 20))  # touched, then shared copy-on-write by 3 children
for _ in range(3):
    if os.fork() == 0:
        time.sleep(120)
        os._exit(0)
print("ready", flush=True)
time.sleep(120)
"""


@pytest.fixture
def forked_tree() -> Iterator[subprocess.Popen[str]]:
    """A process and 3 forked children sharing one 64 MiB block; killed as a group afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _FORKED_TREE],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_process_tree_counts_shared_pages_once_in_pss(
    forked_tree: subprocess.Popen[str],
) -> None:
    probe = ProcessTreeProbe(lambda: forked_tree.pid)
    rss = probe.read()
    tree = probe.per_process()
    assert len(tree) == 4 and forked_tree.pid in tree  # the root and its 3 children
    pss = probe.read_exact()
    assert sorted(probe.per_process()) == sorted(tree)
    # RSS counts the shared block in each of the 4 processes; PSS splits it among them, so the
    # tree holds it once (USS, the old metric, counted it zero times: every page is shared)
    assert rss >= 4 * SHARED_MIB * MIB
    assert SHARED_MIB * MIB <= pss < 2 * SHARED_MIB * MIB
    assert pss < rss - 2 * SHARED_MIB * MIB


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_process_tree_of_a_gone_process_reads_zero() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    probe = ProcessTreeProbe(lambda: proc.pid)
    assert probe.read() == 0 and probe.read_exact() == 0
    assert ProcessTreeProbe(lambda: None).read() == 0


def _pss_denied_for_pid_1() -> bool:
    try:
        with open("/proc/1/smaps_rollup", "rb") as fh:
            fh.read()
    except PermissionError:
        return True
    except OSError:
        return False
    return False


@pytest.mark.skipif(not _pss_denied_for_pid_1(), reason="PSS of pid 1 is readable here")
def test_a_real_denied_pss_is_labelled_rss() -> None:
    probe = ProcessTreeProbe(lambda: 1, tree_max_age_s=60)
    with pytest.raises(MetricDenied, match="pid 1"):
        probe.read_exact()
    rec = Recorder(probe, 0.05)
    rec.sample_now()
    rec.mark()
    trace = rec.stop()
    assert trace.probe == "process-rss" and trace.steady_metric == RSS and trace.steady_bytes > 0


# --------------------------------------------------------------------------- which probe


def _status(n_gpus: int = 1) -> NvmlStatus:
    if not n_gpus:
        return NvmlStatus(False, "NVML unavailable: Driver Not Loaded")
    gpus = tuple(GpuInfo(i, "FAKE H100", 80 * GIB, GIB, 79 * GIB, "999.1") for i in range(n_gpus))
    return NvmlStatus(True, "ok", gpus)


def test_auto_with_a_gpu_records_nvml_and_the_process_tree(fake_nvml: FakeNvml) -> None:
    choice = probes_for("auto", lambda: None, (1,), _status(2))
    assert [p.name for p in choice.probes] == ["nvml", "process"]
    nv = choice.probes[0]
    assert isinstance(nv, NvmlProbe) and nv.indices == (1,)
    assert "GPU 1" in choice.reason and "process tree" in choice.reason
    every = probes_for("auto", lambda: None, None, _status(2)).probes[0]
    assert isinstance(every, NvmlProbe) and every.indices == (0, 1)


def test_forced_probes(fake_nvml: FakeNvml, caplog: pytest.LogCaptureFixture) -> None:
    nvml = probes_for("nvml", lambda: None, (0,), _status())
    assert [p.name for p in nvml.probes] == ["nvml"] and "configured" in nvml.reason
    proc = probes_for("process", lambda: None, (0,), _status())
    assert [p.name for p in proc.probes] == ["process"] and proc.reason.endswith("(configured)")
    no_gpu = probes_for("nvml", lambda: None, (0,), _status(0))
    assert [p.name for p in no_gpu.probes] == ["process"]
    assert "Driver Not Loaded" in no_gpu.reason and "NVML requested" in caplog.text
    auto = probes_for("auto", lambda: None, None, _status(0))
    assert [p.name for p in auto.probes] == ["process"] and "Driver Not Loaded" in auto.reason


def test_a_gpu_that_vanished_since_the_status_falls_back_to_the_process_tree(
    fake_nvml: FakeNvml,
) -> None:
    choice = probes_for("auto", lambda: None, (3,), _status(2))
    assert [p.name for p in choice.probes] == ["process"] and "index 3" in choice.reason


@pytest.mark.parametrize(
    ("prefer", "n_gpus", "gpu_index", "probe", "words"),
    [
        ("auto", 2, None, "nvml or process", "auto: NVML over each engine's GPUs"),
        ("auto", 2, 1, "nvml or process", "not pinned: GPU 1"),
        ("auto", 0, None, "process", "auto: the process tree of each engine (NVML unavailable"),
        ("nvml", 1, None, "nvml", "configured: NVML over each engine's GPUs"),
        ("nvml", 0, None, "process", "configured: NVML, unavailable (NVML unavailable"),
        ("process", 2, None, "process", "configured: the process tree of each engine"),
    ],
)
def test_the_run_header_states_the_rule_of_every_start(
    prefer: str, n_gpus: int, gpu_index: int | None, probe: str, words: str
) -> None:
    name, why = run_probe_rule(prefer, _status(n_gpus), gpu_index)
    assert name == probe and words in why
    if prefer == "auto" and n_gpus:
        assert "every GPU NVML sees" in why or "GPU 1" in why
        assert "host memory: then its process tree" in why
    assert "GPU 0" not in why  # no start was ever pinned to GPU 0 by the header


def test_the_run_header_of_a_status_with_no_gpu_does_not_say_ok() -> None:
    name, why = run_probe_rule("auto", NvmlStatus(True, "ok"), None)
    assert name == "process" and why == "auto: the process tree of each engine (NVML sees no GPU)"


def test_the_runner_writes_the_rule_into_the_run_header(tmp_path: Path) -> None:
    from vramphysics.config import Config
    from vramphysics.records import RunHeader
    from vramphysics.runner import orchestrate

    records: list[object] = []
    run = SimpleNamespace(
        cfg=Config(),
        run_id="r1",
        done=[],
        nvml=_status(2),  # a fake NVML that answers, with two GPUs
        probe_prefer="auto",
        engines={},
        journal=SimpleNamespace(close=lambda: None),
        record=records.append,
    )
    args = argparse.Namespace(config=tmp_path / "c.yaml", setups=tmp_path / "s.yaml")
    assert orchestrate._run_models(run, args, []) is None  # type: ignore[arg-type]
    (header,) = records
    assert isinstance(header, RunHeader) and header.probe == "nvml or process"
    assert header.probe_reason.startswith("auto: NVML over each engine's GPUs")
    assert "every GPU NVML sees" in header.probe_reason and "GPU 0" not in header.probe_reason


def _trace(probe: str, metric: str, steady: int) -> MemoryTrace:
    return MemoryTrace(
        probe, "FAKE H100" if probe == "nvml" else "cpu", 0.05, (), 0, steady, steady,
        series_metric=metric, steady_metric=metric,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("resident", "kept", "words"),
    [
        (True, "nvml", "on the GPU"),
        (False, "process", "in host memory"),
        (None, "nvml", "does not say"),
    ],
)
def test_pick_trace_follows_where_the_buffers_live(
    resident: bool | None, kept: str, words: str
) -> None:
    nv, proc = _trace("nvml", DEVICE_USED, 0), _trace("process", PSS, 70 * MIB)
    trace, why = pick_trace([nv, proc], "r", device_resident=resident, source="llamacpp-log")
    assert trace.probe == kept and words in why


def test_pick_trace_with_one_trace_keeps_it_and_says_when_it_looks_wrong() -> None:
    nv = _trace("nvml", DEVICE_USED, 0)
    trace, why = pick_trace([nv], "NVML on GPU 0 (configured)", device_resident=False, source="x")
    assert trace is nv and "configured" in why and "host memory" in why
    proc = _trace("process", PSS, 1)
    assert pick_trace([proc], "why", device_resident=True, source="x") == (proc, "why")


# --------------------------------------------------------------------------- the demo on a GPU box


@pytest.mark.slow
def test_demo_on_a_gpu_machine_with_a_cpu_llamacpp_is_measured_by_the_process_tree(
    fake_nvml: FakeNvml, tiny_gguf: Path, tmp_path: Path, free_port: int
) -> None:
    """Item 18: NVML answers (a fake driver whose GPUs stay flat), llama.cpp runs on the CPU
    (llama-cpp-python without CUDA: its log lists CPU buffers). The runner measures each start
    with the process tree, says why, and the demo fits."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make test`")
    from vramphysics import physics_db
    from vramphysics.runner import add_arguments, run_from_args

    cfg = {
        "engines": {
            "llamacpp": {
                "port": free_port,
                "model_dir": str(tiny_gguf.parent),
                "start_timeout_s": 60,
            }
        },
        "sweep": {"contexts": [512, 1024, 2048], "settle_s": 0.3, "min_points": 3},
        "bench": {
            "prompt_tokens": [32],
            "output_tokens": 4,
            "repetitions": 2,
            "warmup_requests": 0,
        },
        "paths": {k: str(tmp_path / k) for k in ("calibration_dir", "report_dir", "state_dir")},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "setups.yaml").write_text(yaml.safe_dump({"demo": [f"llamacpp:{tiny_gguf.name}"]}))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--config", str(tmp_path / "config.yaml"), "--setups", str(tmp_path / "setups.yaml")]
        + ["--no-progress"]
    )
    assert run_from_args(args) == 0

    (journal,) = (tmp_path / "report_dir").glob("*.journal.jsonl")
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    points = [r for r in records if r["kind"] == "point"]
    assert sorted(p["ctx"] for p in points) == [512, 1024, 2048]
    for p in points:
        assert p["probe"] == "process" and p["device"] == "cpu", p
        assert p["metric"] == "pss" and p["peak_metric"] == "rss"
        assert "in host memory" in p["probe_reason"], p["probe_reason"]
        assert p["engine_components"]["device_resident"] is False
    (status,) = [r for r in records if r["kind"] == "status" and r["ctx"] is None]
    assert status["status"] == "OK", status
    (entry,) = physics_db.load(physics_db.db_path(tmp_path / "calibration_dir"))
    assert entry.probe == "process" and entry.device == "cpu"
    assert entry.cost_per_token_bytes > 0
    assert fake_nvml.reads > 0  # NVML was recorded too, and left aside
