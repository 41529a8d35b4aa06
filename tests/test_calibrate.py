"""The pure fit `bytes = base + ctx * cost` (calibrate.fit_linear), the context-part error, and
one measured start (calibrate.measure_point) with the probe its engine's report picks."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from vramphysics.calibrate import (
    NotEnoughPoints,
    components_dict,
    context_part_error,
    fit_linear,
    measure_point,
)
from vramphysics.config import BenchConfig, Config, SweepConfig
from vramphysics.engines.base import Availability, Completion, Engine, MemoryComponents
from vramphysics.errors import EngineError
from vramphysics.probes import DEVICE_USED, PSS, RSS, Probe, ProbeChoice, ProbeReadError
from vramphysics.records import CalibrationPoint, StatusRow
from vramphysics.runner import model_step
from vramphysics.setups import ModelSpec, parse_model_id

CONTEXTS = (512, 1024, 2048, 4096, 8192)


def test_exact_line() -> None:
    base, cost = 1e8, 4096.0
    points = [(c, base + c * cost) for c in CONTEXTS]
    fit = fit_linear(points)
    assert fit.base_bytes == pytest.approx(1e8, abs=1e-3)
    assert fit.cost_per_token_bytes == pytest.approx(4096.0, abs=1e-9)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    assert fit.n_points == 5
    assert fit.residuals_bytes == pytest.approx((0.0,) * 5, abs=1e-6)
    # linregress derives the standard errors from 1 - r2, which rounds to ~1e-16 rather than 0:
    # on a 1e8-byte intercept that leaves ~0.15 B, i.e. zero to within 1e-8 of the base
    assert fit.base_stderr_bytes == pytest.approx(0.0, abs=1.0)
    assert fit.cost_stderr_bytes == pytest.approx(0.0, abs=1e-3)
    # 1e8 + 8192 * 4096 = 133_554_432
    assert fit.predict(8192) == pytest.approx(133_554_432.0)
    assert fit.predict(0) == pytest.approx(1e8)


def test_points_are_sorted_and_typed() -> None:
    fit = fit_linear([(2048, 3), (512, 1), (1024, 2)])
    assert fit.points == ((512, 1.0), (1024, 2.0), (2048, 3.0))
    assert all(isinstance(c, int) and isinstance(b, float) for c, b in fit.points)


def test_three_noisy_points_by_hand() -> None:
    # x = 0, 1000, 2000 (mean 1000); y = 100, 350, 500 (mean 316.67)
    # Sxx = 2e6; Sxy = (-1000)(-216.67) + 0 + (1000)(183.33) = 400_000
    # slope = 400_000 / 2e6 = 0.2; intercept = 316.667 - 0.2 * 1000 = 116.667
    # residuals: 100 - 116.667 = -16.667; 350 - 316.667 = 33.333; 500 - 516.667 = -16.667
    # SSres = 277.78 + 1111.11 + 277.78 = 1666.67 (= 5000/3)
    # SStot = 46_944.44 + 1111.11 + 33_611.11 = 81_666.67 (= 245_000/3); r2 = 1 - 1/49 = 48/49
    # s^2 = SSres / (n - 2) = 1666.67; se(slope) = sqrt(1666.67 / 2e6) = 0.028868
    # se(intercept) = sqrt(s^2 * (1/3 + 1000^2 / 2e6)) = sqrt(1666.67 * 0.8333) = 37.268
    fit = fit_linear([(0, 100.0), (1000, 350.0), (2000, 500.0)])
    assert fit.cost_per_token_bytes == pytest.approx(0.2)
    assert fit.base_bytes == pytest.approx(350.0 / 3)
    assert fit.residuals_bytes == pytest.approx((-50 / 3, 100 / 3, -50 / 3))
    assert fit.r2 == pytest.approx(48 / 49)  # 0.979592
    assert fit.cost_stderr_bytes == pytest.approx(math.sqrt((5000 / 3) / 2e6))
    assert fit.base_stderr_bytes == pytest.approx(math.sqrt((5000 / 3) * (1 / 3 + 0.5)))
    assert sum(fit.residuals_bytes) == pytest.approx(0.0, abs=1e-9)


def test_noisy_sweep_agrees_with_numpy_polyfit() -> None:
    # a llama.cpp-like sweep: ~68.7 MB base, ~4.2 kB/token, a few hundred kB of noise
    points = [
        (512, 70_246_400.0),
        (1024, 73_420_800.0),
        (2048, 77_725_696.0),
        (4096, 86_216_704.0),
        (8192, 103_337_984.0),
    ]
    fit = fit_linear(points)
    x = np.array([c for c, _ in points], dtype=float)
    y = np.array([b for _, b in points])
    (slope, intercept), cov = np.polyfit(x, y, 1, cov="unscaled")
    resid = y - (intercept + slope * x)
    s2 = float(resid @ resid) / (len(x) - 2)
    assert fit.cost_per_token_bytes == pytest.approx(slope, rel=1e-9)
    assert fit.base_bytes == pytest.approx(intercept, rel=1e-9)
    assert fit.residuals_bytes == pytest.approx(tuple(resid), abs=1e-3)
    r2 = 1 - float(resid @ resid) / float(((y - y.mean()) ** 2).sum())
    assert fit.r2 == pytest.approx(r2, rel=1e-9)
    assert fit.cost_stderr_bytes == pytest.approx(math.sqrt(s2 * cov[0][0]), rel=1e-6)
    assert fit.base_stderr_bytes == pytest.approx(math.sqrt(s2 * cov[1][1]), rel=1e-6)
    # the figures stored in calibration/physics.yaml for this sweep
    assert round(fit.base_bytes, 1) == pytest.approx(68_720_469.3, abs=0.1)
    assert round(fit.cost_per_token_bytes, 3) == pytest.approx(4243.022, abs=1e-3)


def test_repeated_contexts_are_all_used() -> None:
    # two starts at 1024: the fit goes through their mean
    fit = fit_linear([(0, 0.0), (1024, 1000.0), (1024, 1048.0), (2048, 2048.0)])
    x = np.array([0, 1024, 1024, 2048], dtype=float)
    y = np.array([0.0, 1000.0, 1048.0, 2048.0])
    slope, intercept = np.polyfit(x, y, 1)
    assert fit.n_points == 4
    assert fit.cost_per_token_bytes == pytest.approx(slope)
    assert fit.base_bytes == pytest.approx(intercept, abs=1e-6)


def test_flat_memory_has_zero_slope() -> None:
    fit = fit_linear([(512, 5e9), (1024, 5e9), (2048, 5e9)])
    assert fit.cost_per_token_bytes == 0.0
    assert fit.base_bytes == 5e9
    assert fit.r2 is not None and not math.isnan(fit.r2)


@pytest.mark.parametrize(
    "points",
    [
        [],
        [(512, 1.0)],
        [(512, 1.0), (1024, 2.0)],  # two points, three needed
        [(512, 1.0), (512, 1.1), (512, 0.9)],  # three points, one context
        [(512, 1.0)] * 5,
    ],
)
def test_not_enough_points(points: list[tuple[int, float]]) -> None:
    with pytest.raises(NotEnoughPoints, match="need at least 3"):
        fit_linear(points)


def test_not_enough_points_is_a_value_error() -> None:
    assert issubclass(NotEnoughPoints, ValueError)


def test_min_points_is_honoured() -> None:
    pts = [(512, 1.0), (1024, 2.0), (2048, 4.0)]
    with pytest.raises(NotEnoughPoints, match="3 good point"):
        fit_linear(pts, min_points=4)
    assert fit_linear(pts[:2], min_points=2).cost_per_token_bytes == pytest.approx(1 / 512)


def test_components_dict() -> None:
    assert components_dict(None) == {}
    mem = MemoryComponents(
        source="vllm-log",
        kv_pool_bytes=2 * 2**30,
        kv_tokens=65_536,
        calibration="engine-kv",
        extra={"gpu_memory_utilization": 0.5},
    )
    d = components_dict(mem)
    assert d["source"] == "vllm-log"
    assert d["kv_pool_bytes"] == 2_147_483_648
    assert d["kv_tokens"] == 65_536
    assert d["calibration"] == "engine-kv"
    assert d["device_resident"] is True
    assert d["weights_bytes"] is None
    assert d["gpu_memory_utilization"] == 0.5
    assert mem.kv_bytes_per_token == 32_768.0  # 2 GiB / 64 Ki tokens


# --------------------------------------------------------------------------- context-part error


def test_context_part_error_sees_a_slope_error_that_the_total_hides() -> None:
    # the demo: ~68.7 MB base, ~4.2 kB/token; a fit whose slope is 14 % low
    base, cost = 68_700_000.0, 4_243.0
    fit = fit_linear([(c, base + c * cost * 0.86) for c in (512, 1024, 2048, 4096)])
    measured = base + 8192 * cost  # 103.46 MB
    total_error = (fit.predict(8192) - measured) / measured
    # -0.14 * 8192 * 4243 / 103.46e6 = -4.70 %: inside the old 5 % bound on the total
    assert total_error == pytest.approx(-0.0470, abs=1e-4)
    # (predicted - base) / (measured - base) - 1 = 0.86 - 1
    assert context_part_error(fit, 8192, measured) == pytest.approx(-0.14)
    with pytest.raises(ValueError, match="not above the fitted base"):
        context_part_error(fit, 8192, base - 1)


# --------------------------------------------------------------------------- probe per engine


class _Engine(Engine):
    """Starts nothing; says where its buffers live like llama.cpp's log does."""

    name = "llamacpp"

    def __init__(self, resident: bool | None) -> None:
        super().__init__(state_dir=Path("."), log_dir=Path("."))
        self.resident = resident
        self.ctx = 0
        self.starts: list[int] = []

    def version(self) -> str:
        return "fake"

    def check_available(self, spec: ModelSpec) -> Availability:
        return Availability(True, "here")

    def start(self, spec: ModelSpec, ctx: int) -> None:
        self.starts.append(ctx)
        self.ctx = ctx

    def wait_ready(self) -> None:
        return None

    def warm_up(self, max_tokens: int = 4) -> None:
        return None

    def complete(self, prompt: str, max_tokens: int) -> Completion:
        raise AssertionError("not used")

    def root_pid(self) -> int | None:
        return None

    def memory_report(self) -> MemoryComponents | None:
        if self.resident is None:
            return None
        return MemoryComponents(source="llamacpp-log", device_resident=self.resident)

    def stop(self) -> None:
        self.ctx = 0


class _EngineProbe(Probe):
    """NVML watching an idle GPU (flat), or a process tree that grows 4 kB per token."""

    def __init__(self, engine: _Engine, *, gpu: bool, lost: bool = False) -> None:
        self.engine, self.gpu, self.lost = engine, gpu, lost
        self.name = "nvml" if gpu else "process"
        self.device = "FAKE H100" if gpu else "cpu"
        self.series_metric = DEVICE_USED if gpu else RSS
        self.exact_metric = None if gpu else PSS
        self.closed = False

    def read(self) -> int:
        if self.lost:
            raise ProbeReadError("NVML read failed: GPU is lost")
        if self.gpu:
            return 500 * 2**20  # what the desktop uses; the engine is not on the GPU
        return 70_000_000 + self.engine.ctx * 4096 + 1_000_000  # RSS: a little more than PSS

    def read_exact(self) -> int:
        return 70_000_000 + self.engine.ctx * 4096

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(("resident", "kept"), [(False, "process"), (True, "nvml")])
def test_the_engine_report_picks_the_probe(resident: bool, kept: str) -> None:
    engine = _Engine(resident)
    made: list[ProbeChoice] = []

    def make(e: Engine) -> ProbeChoice:
        assert e is engine
        made.append(
            ProbeChoice(
                (_EngineProbe(engine, gpu=True), _EngineProbe(engine, gpu=False)), "NVML or tree"
            )
        )
        return made[-1]

    points = []
    for ctx in (512, 1024, 2048):
        point, _trace, _ = measure_point(
            engine,
            parse_model_id("llamacpp:tiny.gguf"),
            ctx,
            make_probe=make,
            interval_s=0.01,
            settle_s=0.05,
            warmup_tokens=1,
        )
        points.append(point)
    assert all(p.closed for c in made for p in c.probes)
    assert {p.probe for p in points} == {kept}
    fit = fit_linear([(p.ctx, p.measured_bytes) for p in points])
    if kept == "process":
        assert "host memory" in points[0].probe_reason
        assert points[0].metric == PSS and points[0].peak_metric == RSS
        assert points[0].device == "cpu" and points[0].baseline_bytes == 0
        assert fit.cost_per_token_bytes == pytest.approx(4096)  # from the PSS reads
    else:
        assert "on the GPU" in points[0].probe_reason and points[0].metric == DEVICE_USED
        assert fit.cost_per_token_bytes == pytest.approx(0.0)  # the flat GPU of item 18


def test_a_single_probe_still_works_as_before() -> None:
    engine = _Engine(False)
    point, trace, _ = measure_point(
        engine,
        parse_model_id("llamacpp:tiny.gguf"),
        1024,
        make_probe=lambda e: _EngineProbe(engine, gpu=False),
        interval_s=0.01,
        settle_s=0.0,
        warmup_tokens=1,
    )
    assert point.probe == "process" and point.measured_bytes == 70_000_000 + 1024 * 4096
    assert trace.exact_bytes and point.probe_reason == "process"


def _lost_gpu_choice(engine: _Engine) -> ProbeChoice:
    return ProbeChoice(
        (_EngineProbe(engine, gpu=True, lost=True), _EngineProbe(engine, gpu=False)), "NVML or tree"
    )


def test_a_failed_baseline_read_fails_the_start_before_the_engine_starts() -> None:
    engine = _Engine(True)
    choice = _lost_gpu_choice(engine)
    with pytest.raises(EngineError) as err:
        measure_point(
            engine,
            parse_model_id("llamacpp:tiny.gguf"),
            1024,
            make_probe=lambda e: choice,
            interval_s=0.01,
            settle_s=0.0,
            warmup_tokens=1,
        )
    assert err.value.kind == "probe_failed" and err.value.model_id == "llamacpp:tiny.gguf"
    assert "baseline" in err.value.message and "GPU is lost" in err.value.message
    assert engine.starts == []  # never started: nothing left running
    assert all(p.closed for p in choice.probes)


def test_the_sweep_records_a_failed_baseline_as_a_failed_context_and_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the NVML baseline read fails at the first context only; it used to end the run (exit 3)
    engine = _Engine(False)
    made: list[ProbeChoice] = []

    def factory(run: Any) -> Any:
        def make(e: Engine) -> ProbeChoice:
            made.append(
                _lost_gpu_choice(engine)
                if not made
                else ProbeChoice((_EngineProbe(engine, gpu=False),), "process")
            )
            return made[-1]

        return make

    monkeypatch.setattr(model_step, "_make_probe_factory", factory)
    monkeypatch.setattr(model_step, "_guardrail", lambda *a: True)
    records: list[Any] = []
    run = SimpleNamespace(
        cfg=Config(sweep=SweepConfig(settle_s=0.0), bench=BenchConfig(enabled=False)),
        progress=SimpleNamespace(set_description=lambda d: None, update=lambda n: None),
        record=records.append,
        point_done=lambda model, ctx: False,
        done=records,
    )
    spec = parse_model_id("llamacpp:tiny.gguf")
    n_failed = model_step._sweep(run, engine, spec, [512, 1024, 2048], None)  # type: ignore[arg-type]
    assert n_failed == 1 and engine.starts == [1024, 2048]
    failed, *points = records
    assert isinstance(failed, StatusRow) and failed.status == "FAILED"
    assert (failed.failure_kind, failed.ctx) == ("probe_failed", 512)
    assert "GPU is lost" in failed.reason
    assert [p.ctx for p in points if isinstance(p, CalibrationPoint)] == [1024, 2048]
