"""The node side of a `--ray` run: one (model, device kind) sweep, run by the same per-model code
as a local run (`_model_step`), its records pushed to the driver's queue as each step finishes.

Nothing here imports Ray: the queue is the handle the driver passes in (`ray.util.queue.Queue`,
anything with `put(item)`), so a run without `--ray` never loads it.

The device label: records carry the device the probe measured. On a node without an NVML GPU
(the two-node test cluster on one CPU machine) the process probe calls every node "cpu"; there a
record's device becomes the device kind the node advertises (its Ray resource `gpu:KIND`), and
the probe reason says so, so that the database gets one entry per kind. On a node with an NVML
GPU the probe's own label (the GPU's NVML name) is kept: a real name always wins over a kind.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from vramphysics.config import Config, config_model
from vramphysics.engines.process import kill_leftovers
from vramphysics.journal import Journal
from vramphysics.probes import NvmlStatus, device_label, nvml_status
from vramphysics.records import CalibrationPoint, Record, record_from_json
from vramphysics.redact import install_log_redaction
from vramphysics.runner.model_step import _model_step
from vramphysics.runner.signals import _close
from vramphysics.runner.state import _Run
from vramphysics.setups import ModelSpec

log = logging.getLogger("vramphysics.runner")

RESOURCE_PREFIX = "gpu:"  # a node of kind KIND advertises the custom resource `gpu:KIND`
CPU_LABEL = "cpu"  # the process probe's device label on a machine without an NVML GPU


class QueueLike(Protocol):
    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None: ...


@dataclass(frozen=True)
class NodeJob:
    """What the driver sends a node: one (model, device kind) sweep of one run.

    `config` is the driver's configuration as data (`config_payload`), its paths absolute;
    `done` the journal records of this model that carry a device, as JSON (a resumed run's
    points and benchmarks: the node keeps those of its own device label)."""

    index: int
    run_id: str
    setup: str
    spec: ModelSpec
    kind: str
    config: dict[str, Any]
    force_download: bool
    done: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class NodeDevice:
    """The label this node's records carry, and why (empty `note` when the probe's label stays)."""

    label: str
    note: str


def config_payload(cfg: Config) -> dict[str, Any]:
    """The configuration as plain data for a node; the keys the file set stay the only ones set
    (the runner asks `model_fields_set`, e.g. for `probes.gpu_index`)."""
    return cfg.model_dump(mode="json", exclude_unset=True)


def config_from_payload(data: dict[str, Any]) -> Config:
    return config_model().model_validate(data)


def node_device(nvml: NvmlStatus, kind: str) -> NodeDevice:
    """The device label of this node's records (see the module's docstring)."""
    if nvml.gpus:
        return NodeDevice(label=device_label([g.name for g in nvml.gpus]), note="")
    note = (
        f"device label: the Ray node's advertised kind {kind!r} "
        f"(resource {RESOURCE_PREFIX}{kind}; the node has no NVML GPU)"
    )
    return NodeDevice(label=kind, note=note)


def relabel(rec: Record, device: NodeDevice) -> Record:
    """A record as the driver must journal it: the process probe's `cpu` becomes the node's kind
    (only on a node without an NVML GPU, `note` set), the reason said on calibration points."""
    if not device.note or getattr(rec, "device", None) != CPU_LABEL:
        return rec
    if isinstance(rec, CalibrationPoint):
        reason = f"{rec.probe_reason}; {device.note}" if rec.probe_reason else device.note
        return dataclasses.replace(rec, device=device.label, probe_reason=reason)
    return dataclasses.replace(rec, **{"device": device.label})


class QueueJournal(Journal):
    """The node's journal: each record goes to the driver's queue, tagged with the job's index;
    the driver's own journal makes it durable. `put` returns once the queue holds the record."""

    def __init__(self, queue: QueueLike, index: int, device: NodeDevice) -> None:
        self.path = Path(f"ray-queue-{index}")
        self._queue = queue
        self._index = index
        self._device = device

    def append(self, record: Record) -> None:
        rec = relabel(record, self._device)
        self._queue.put(("record", self._index, rec.to_json()))

    def close(self) -> None:
        return None


def own_done(done: tuple[dict[str, Any], ...], label: str) -> list[Record]:
    """The resumed records that belong to this node's device label."""
    out = []
    for d in done:
        rec = record_from_json(d)
        if getattr(rec, "device", None) == label:
            out.append(rec)
    return out


def sweep_on_node(job: NodeJob, queue: QueueLike) -> None:
    """The Ray task: one model on this node, by the per-model code of a local run."""
    install_log_redaction()
    cfg = config_from_payload(job.config)
    nvml = nvml_status()
    device = node_device(nvml, job.kind)
    queue.put(("hello", job.index, {"label": device.label, "host": socket.gethostname()}))
    # engines a worker that died here earlier left running (their launcher is gone)
    for rec in kill_leftovers(cfg.paths.state_dir):
        log.warning("stopped a leftover engine on this node: %s (pid %d)", rec.label, rec.pid)
    run = _Run(
        cfg=cfg,
        run_id=job.run_id,
        journal=QueueJournal(queue, job.index, device),
        done=own_done(job.done, device.label),
        nvml=nvml,
        probe_prefer=cfg.probes.prefer,
        force_download=job.force_download,
        progress=tqdm(total=len(cfg.sweep.contexts), disable=True),
    )
    try:
        _model_step(run, job.setup, job.spec)
    finally:
        for engine in run.engines.values():
            _close(engine)
