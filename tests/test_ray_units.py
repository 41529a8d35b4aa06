"""`--ray` without a cluster: placement, device labels, lost-node rows, the outcome per device, and
that a run without `--ray` never imports Ray (fast)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tqdm import tqdm

from tests.test_outcome import TINY, bench, point, status
from vramphysics.config import config_model, load_config
from vramphysics.errors import FAILURE_KINDS, ConfigError, Interrupted
from vramphysics.journal import Journal
from vramphysics.outcome import build_outcome
from vramphysics.probes import GpuInfo, NvmlStatus
from vramphysics.records import CalibrationPoint, StatusRow, record_from_json
from vramphysics.runner.ray_driver import (
    Placement,
    _interruptible,
    _Tracked,
    advertised_kinds,
    lost_rows,
    plan_placements,
    run_on_ray,
)
from vramphysics.runner.ray_task import (
    NodeDevice,
    QueueJournal,
    config_from_payload,
    config_payload,
    node_device,
    own_done,
    relabel,
)
from vramphysics.runner.state import _Run
from vramphysics.setups import parse_model_id

ROOT = Path(__file__).resolve().parents[1]
SPEC = parse_model_id(TINY)
NO_GPU = NvmlStatus(available=False, reason="no NVML")
H100 = GpuInfo(0, "NVIDIA H100 80GB HBM3", 80 * 2**30, 0, 80 * 2**30, "550.54")


# -- placement ------------------------------------------------------------------------------


def _node(resources: dict[str, float], alive: bool = True) -> dict[str, Any]:
    return {"Alive": alive, "Resources": {"CPU": 4.0, **resources}}


def test_advertised_kinds_and_whether_they_have_gpus() -> None:
    nodes = [
        _node({"gpu:h100": 1, "GPU": 8}),
        _node({"gpu:rtx4090": 1, "GPU": 1}),
        _node({"gpu:rtx4090": 1}),  # a 4090 node without a GPU resource: no num_gpus for 4090s
        _node({"gpu:gone": 1, "GPU": 1}, alive=False),
        _node({}),
    ]
    assert advertised_kinds(nodes) == {"h100": True, "rtx4090": False}


def test_placements_per_model_and_kind(tmp_path: Path) -> None:
    other = parse_model_id("llamacpp:other.gguf")
    chosen = [("demo", SPEC), ("big", other)]
    cluster = {"kind-a": False, "kind-b": True}
    got = plan_placements(chosen, {"big": ("kind-b",)}, cluster, tmp_path / "s.yaml")
    assert [(p.index, p.setup, p.spec.raw, p.kind, p.num_gpus) for p in got] == [
        (0, "demo", TINY, "kind-a", 0),  # no `devices:`: every kind the cluster advertises
        (1, "demo", TINY, "kind-b", 1),
        (2, "big", other.raw, "kind-b", 1),
    ]


def test_a_kind_no_node_advertises_is_an_error_before_placing(tmp_path: Path) -> None:
    path = tmp_path / "setups.yaml"
    with pytest.raises(ConfigError) as info:
        plan_placements([("demo", SPEC)], {"demo": ("h100",)}, {"kind-a": False}, path)
    assert str(path) in str(info.value)
    assert "'h100'" in str(info.value) and "gpu:h100" in str(info.value)
    assert "kind-a" in str(info.value)
    with pytest.raises(ConfigError, match="no Ray node advertises a device kind"):
        plan_placements([("demo", SPEC)], {}, {}, path)


def test_ray_missing_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ConfigError, match=r"--ray needs Ray: pip install -e '\.\[ray\]'"):
        run_on_ray(_run(tmp_path), "auto", [("demo", SPEC)], {}, tmp_path / "s.yaml")


def test_no_cluster_at_the_address_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import ray

    def init(**kw: Any) -> None:
        raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setattr(ray, "init", init)
    with pytest.raises(ConfigError) as info:
        run_on_ray(_run(tmp_path), "auto", [("demo", SPEC)], {}, tmp_path / "s.yaml")
    assert str(info.value).startswith("--ray auto: no Ray cluster answers there")


# -- the node: device label, journal, resumed records ----------------------------------------


def test_a_node_without_nvml_labels_its_records_with_its_kind() -> None:
    device = node_device(NO_GPU, "kind-b")
    assert device.label == "kind-b" and "no NVML GPU" in device.note
    p = relabel(point(512, 1e6, device="cpu"), device)
    assert isinstance(p, CalibrationPoint)
    assert p.device == "kind-b"
    assert "advertised kind 'kind-b'" in p.probe_reason
    assert relabel(bench(), device).device == "kind-b"  # type: ignore[attr-defined]
    row = status(TINY, "OK")
    assert relabel(row, device) is row  # no device field: unchanged


def test_a_real_gpu_name_wins_over_the_kind() -> None:
    device = node_device(NvmlStatus(available=True, reason="", gpus=(H100,)), "h100")
    assert device == NodeDevice(label="NVIDIA H100 80GB HBM3", note="")
    p = point(512, 1e6, device="NVIDIA H100 80GB HBM3")
    assert relabel(p, device) is p
    cpu = point(512, 1e6, device="cpu")  # a process-probe figure on a GPU node stays "cpu"
    assert relabel(cpu, device) is cpu


class _FakeQueue:
    def __init__(self) -> None:
        self.items: list[Any] = []

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        self.items.append(item)


def test_queue_journal_sends_relabelled_records_tagged_with_the_job() -> None:
    q = _FakeQueue()
    journal = QueueJournal(q, 3, node_device(NO_GPU, "kind-a"))
    journal.append(point(1024, 2e6))
    journal.close()
    ((what, index, payload),) = q.items
    assert (what, index) == ("record", 3)
    rec = record_from_json(payload)
    assert isinstance(rec, CalibrationPoint) and rec.device == "kind-a" and rec.ctx == 1024


def test_a_node_resumes_only_its_own_device() -> None:
    done = tuple(
        r.to_json()
        for r in (point(512, 1e6, device="kind-a"), point(1024, 2e6, device="kind-b"), bench())
    )
    own = own_done(done, "kind-b")
    assert [(r.kind, getattr(r, "ctx", None)) for r in own] == [("point", 1024)]


def test_the_config_travels_as_data_with_what_the_file_set(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(
        "probes:\n  gpu_index: 1\nsweep:\n  contexts: [512, 1024]\npaths:\n  state_dir: st\n"
    )
    cfg = load_config(tmp_path / "config.yaml")
    back = config_from_payload(config_payload(cfg))
    assert back.model_dump() == cfg.model_dump()
    assert "gpu_index" in back.probes.model_fields_set
    assert back.paths.state_dir == tmp_path / "st"  # absolute: the node's cwd does not matter


# -- a lost node ----------------------------------------------------------------------------


def _run(tmp: Path, done: list[Any] | None = None) -> _Run:
    cfg = config_model().model_validate({"sweep": {"contexts": [512, 1024, 2048, 4096]}})
    return _Run(
        cfg=cfg,
        run_id="r1",
        journal=Journal(tmp / "r1.journal.jsonl"),
        done=list(done or []),
        nvml=NO_GPU,
        probe_prefer="auto",
        force_download=False,
        progress=tqdm(disable=True),
    )


def test_lost_node_rows_for_unfinished_steps_only(tmp_path: Path) -> None:
    assert "node_lost" in FAILURE_KINDS
    run = _run(
        tmp_path,
        # the other kind finished everything; this kind had 512 from an earlier try
        [point(c, c * 1e3, device="kind-a") for c in (512, 1024, 2048, 4096)]
        + [point(512, 1e6, device="kind-b")],
    )
    tracked = _Tracked(Placement(1, "demo", SPEC, "kind-b", 0), label="kind-b", host="n2")
    tracked.received += [
        point(1024, 2e6, device="kind-b"),
        status(TINY, "FAILED", ctx=2048, failure_kind="timeout"),  # ended: not lost
    ]
    rows = lost_rows(run, tracked, "NodeDiedError: gone")
    assert [r.ctx for r in rows] == [4096]  # the bench (#ctx=2048) ended with its FAILED row
    (row,) = rows
    assert isinstance(row, StatusRow)
    assert (row.status, row.failure_kind, row.model) == ("FAILED", "node_lost", TINY)
    assert "kind-b on n2" in row.reason and "NodeDiedError" in row.reason


def test_lost_with_the_benchmark_off_fails_only_contexts(tmp_path: Path) -> None:
    run = _run(tmp_path)
    run.cfg = run.cfg.model_copy(
        update={"bench": run.cfg.bench.model_copy(update={"enabled": False})}
    )
    spec = parse_model_id("llamacpp:tiny.gguf#ctx=3000")
    rows = lost_rows(run, _Tracked(Placement(0, "demo", spec, "kind-b", 0)), "gone")
    assert [r.ctx for r in rows] == [512, 1024, 2048, 4096]


def test_lost_before_any_record_fails_every_step_and_the_bench(tmp_path: Path) -> None:
    spec = parse_model_id("llamacpp:tiny.gguf#ctx=3000")
    tracked = _Tracked(Placement(0, "demo", spec, "kind-b", 0))  # no hello: label unknown
    rows = lost_rows(_run(tmp_path), tracked, "WorkerCrashedError")
    assert [r.ctx for r in rows] == [512, 1024, 2048, 4096, 3000]


# -- the outcome: one row and one entry per device ------------------------------------------


def test_one_model_on_two_devices_gives_two_entries_and_two_rows() -> None:
    records = [
        *(point(c, 1e6 + c * 4096, device="kind-a") for c in (512, 1024, 2048)),
        *(point(c, 2e6 + c * 8192, device="kind-b") for c in (512, 1024, 2048)),
        status(TINY, "OK", "3 points"),
    ]
    out = build_outcome(records)
    by_device = {e.device: e for e in out.entries}
    assert set(by_device) == {"kind-a", "kind-b"}
    assert by_device["kind-a"].cost_per_token_bytes == pytest.approx(4096)
    assert by_device["kind-b"].cost_per_token_bytes == pytest.approx(8192)
    assert [(m.model, m.device, m.status) for m in out.models] == [
        (TINY, "kind-a", "OK"),
        (TINY, "kind-b", "OK"),
    ]
    assert len(out.points) == 6


# -- no Ray without --ray -------------------------------------------------------------------


def test_a_run_without_ray_never_imports_ray(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(
        f"engines:\n  llamacpp:\n    model_dir: {tmp_path}\n"
        "paths:\n  calibration_dir: cal\n  report_dir: rep\n  state_dir: st\n"
    )
    (tmp_path / "setups.yaml").write_text("demo:\n  - llamacpp:absent.gguf\n")
    script = (
        "import sys\n"
        "from vramphysics.cli import main\n"
        "rc = main(['run', '--config', 'config.yaml', '--setups', 'setups.yaml', "
        "'--no-progress'])\n"
        "print('RC', rc, 'RAY', 'ray' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "RC 0 RAY False" in out.stdout, out.stdout + out.stderr
    assert list((tmp_path / "rep").glob("*.journal.jsonl"))  # the run did run


def test_a_signal_inside_rays_compiled_code_is_an_interrupt() -> None:
    # Ray's Cython calls turn the Interrupted our handler raises into a SystemError (seen with
    # SIGINT during ray.wait: "internal error: SystemError ... returned a result with an
    # exception set", exit 3, no report); the driver must see the Interrupted itself
    def wait() -> None:
        try:
            raise Interrupted(2)
        except Interrupted as exc:
            raise SystemError("<cyfunction CoreWorker.wait> returned a result") from exc

    with pytest.raises(Interrupted) as info:
        _interruptible(wait)
    assert info.value.signum == 2

    def broken() -> None:
        raise SystemError("a real one")

    with pytest.raises(SystemError, match="a real one"):
        _interruptible(broken)
