"""The driver side of `--ray [ADDRESS]`: each (model, device kind) sweep is a Ray task placed by
resources on a node of that kind; their records stream back through a queue and go into this
run's journal (`_Run.record`) as each step finishes, so the report, the database and `--resume`
work as for a local run.

Placement: a node of kind KIND advertises the custom resource `gpu:KIND` at `ray start`; a task
asks for one unit of it, and for `num_gpus=1` where the nodes of that kind have GPUs. The kinds
of a setup are its `devices:` in the setups file, else every kind the cluster advertises.

A node (or its worker) lost mid-sweep: the steps of its model that had not finished get FAILED
rows with failure kind `node_lost`, the other tasks go on, and `--resume` places them again.
Ray is imported here only when `--ray` is given.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from vramphysics.errors import ConfigError, Interrupted
from vramphysics.records import (
    BenchCell,
    CalibrationPoint,
    Record,
    StatusRow,
    record_from_json,
)
from vramphysics.runner.ray_task import (
    RESOURCE_PREFIX,
    NodeJob,
    config_payload,
    sweep_on_node,
)
from vramphysics.runner.state import _Run
from vramphysics.setups import ModelSpec

log = logging.getLogger("vramphysics.runner")
_POLL_S = 0.5
_CHECK_S = 5.0  # how often the driver looks for tasks whose kind has no live node left
T = TypeVar("T")


@dataclass(frozen=True)
class Placement:
    """One (model, device kind) sweep and the Ray resources it asks for."""

    index: int
    setup: str
    spec: ModelSpec
    kind: str
    num_gpus: int


@dataclass
class _Tracked:
    """What the driver knows of one placed task: the label its node reported, what it sent."""

    placement: Placement
    label: str | None = None
    host: str | None = None
    received: list[Record] = field(default_factory=list)


def advertised_kinds(nodes: Iterable[Mapping[str, Any]]) -> dict[str, bool]:
    """The device kinds the live nodes advertise (`gpu:KIND`), each with whether every node of
    that kind also has GPUs (then a task asks for `num_gpus=1` too)."""
    kinds: dict[str, bool] = {}
    for node in nodes:
        if not node.get("Alive", False):
            continue
        res = node.get("Resources") or {}
        for name in res:
            if name.startswith(RESOURCE_PREFIX):
                kind = name[len(RESOURCE_PREFIX) :]
                has_gpu = float(res.get("GPU", 0)) >= 1
                kinds[kind] = kinds.get(kind, True) and has_gpu
    return kinds


def plan_placements(
    chosen: list[tuple[str, ModelSpec]],
    kinds_by_setup: Mapping[str, tuple[str, ...]],
    cluster: Mapping[str, bool],
    setups_path: Path,
) -> list[Placement]:
    """One placement per chosen model and device kind; a kind no node advertises is an error
    before anything is placed (a task for it would wait for ever)."""
    if not cluster:
        raise ConfigError(
            f"no Ray node advertises a device kind (a custom resource {RESOURCE_PREFIX}KIND; "
            "see docs/cluster.md)"
        )
    out: list[Placement] = []
    for setup, spec in chosen:
        kinds = kinds_by_setup.get(setup) or tuple(sorted(cluster))
        for kind in kinds:
            if kind not in cluster:
                have = ", ".join(sorted(cluster))
                raise ConfigError(
                    f"setup {setup!r} names device kind {kind!r}, but no live Ray node "
                    f"advertises {RESOURCE_PREFIX}{kind} (the cluster has: {have})",
                    path=setups_path,
                )
            out.append(Placement(len(out), setup, spec, kind, 1 if cluster[kind] else 0))
    return out


def done_for(run: _Run, spec: ModelSpec) -> tuple[dict[str, Any], ...]:
    """The journal's records of this model that carry a device (points, benchmarks)."""
    return tuple(
        r.to_json()
        for r in run.done
        if getattr(r, "model", None) == spec.raw and getattr(r, "device", None)
    )


def lost_rows(run: _Run, tracked: _Tracked, why: str) -> list[StatusRow]:
    """FAILED rows (`node_lost`) for the steps of a lost task that had not finished: a context
    without a point of its device, and the benchmark's start when no cell of it arrived (a
    benchmark cut short after some cells is redone by `--resume` for the cells it lacks); a
    step that ended in a FAILED row of its own has finished."""
    p = tracked.placement
    label = tracked.label or p.kind
    mine = [
        r
        for r in [*run.done, *tracked.received]
        if getattr(r, "model", None) == p.spec.raw and getattr(r, "device", label) == label
    ]
    points = {r.ctx for r in mine if isinstance(r, CalibrationPoint)}
    ended = {r.ctx for r in tracked.received if isinstance(r, StatusRow) and r.ctx is not None}
    contexts = list(run.cfg.sweep.contexts)
    bench_ctx = p.spec.ctx if p.spec.ctx is not None else max(contexts)
    benched = not run.cfg.bench.enabled or any(isinstance(r, BenchCell) for r in mine)
    steps = [c for c in contexts if c not in points and c not in ended]
    if not benched and bench_ctx not in steps and bench_ctx not in ended:
        steps.append(bench_ctx)
    where = f"{p.kind}" + (f" on {tracked.host}" if tracked.host else "")
    return [
        StatusRow(
            model=p.spec.raw,
            engine=p.spec.engine,
            status="FAILED",
            reason=f"Ray node lost mid-sweep ({where}): {why}; --resume places it again",
            failure_kind="node_lost",
            ctx=ctx,
        )
        for ctx in steps
    ]


def run_on_ray(
    run: _Run,
    address: str,
    chosen: list[tuple[str, ModelSpec]],
    kinds_by_setup: Mapping[str, tuple[str, ...]],
    setups_path: Path,
) -> None:
    """Every chosen model on every device kind it is to be calibrated on, as Ray tasks."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(f"--ray needs Ray: pip install -e '.[ray]' ({exc})") from exc

    try:
        ray.init(address=address, log_to_driver=True, configure_logging=False)
    except ConnectionError as exc:
        raise ConfigError(f"--ray {address}: no Ray cluster answers there ({exc})") from exc
    try:
        placements = plan_placements(
            chosen, kinds_by_setup, advertised_kinds(ray.nodes()), setups_path
        )
        run.progress.total = len(placements) * len(run.cfg.sweep.contexts)
        log.info(
            "ray: %d sweep(s) on kinds %s",
            len(placements),
            ", ".join(sorted({p.kind for p in placements})),
        )
        _Driver(run, placements).go()
    finally:
        ray.shutdown()


def _interruptible(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`call`, with the Interrupted that our signal handler raised inside Ray's compiled code
    (which turns it into a SystemError with the Interrupted as its cause) raised as itself."""
    try:
        return call(*args, **kwargs)
    except SystemError as exc:
        if isinstance(exc.__cause__, Interrupted):
            raise exc.__cause__ from None
        raise


class _Driver:
    """Places the tasks, drains their records into the journal, turns a lost node into rows."""

    def __init__(self, run: _Run, placements: list[Placement]) -> None:
        import ray
        from ray.util.queue import Queue
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.the_run = run
        self.tracked = {p.index: _Tracked(p) for p in placements}
        # the queue lives on the driver's node: a lost worker node does not take it along
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
        self.remote = ray.remote(max_retries=0)(sweep_on_node)

    def _submit(self, p: Placement) -> Any:
        job = NodeJob(
            index=p.index,
            run_id=self.the_run.run_id,
            setup=p.setup,
            spec=p.spec,
            kind=p.kind,
            config=config_payload(self.the_run.cfg),
            force_download=self.the_run.force_download,
            done=done_for(self.the_run, p.spec),
        )
        opts = {"num_cpus": 0, "num_gpus": p.num_gpus, "resources": {RESOURCE_PREFIX + p.kind: 1}}
        return self.remote.options(**opts).remote(job, self.queue)

    def go(self) -> None:
        import ray

        pending = {self._submit(t.placement): t for t in self.tracked.values()}
        next_check = time.monotonic() + _CHECK_S
        try:
            while pending:
                self._drain()
                ready, _ = _interruptible(ray.wait, list(pending), num_returns=1, timeout=0)
                for ref in ready:
                    self._finished(ref, pending.pop(ref))
                if time.monotonic() >= next_check:
                    self._orphans(pending)
                    next_check = time.monotonic() + _CHECK_S
                if not ready:
                    time.sleep(_POLL_S)  # a signal lands here, in Python, most of the time
            self._drain()
        finally:
            for ref in pending:  # interrupted, or a task raised: stop the others
                ray.cancel(ref, force=True)

    def _finished(self, ref: Any, tracked: _Tracked) -> None:
        """A task ended: its records are in the queue already (`put` returns once they are)."""
        import ray
        from ray.exceptions import NodeDiedError, WorkerCrashedError

        try:
            _interruptible(ray.get, ref)
        except (NodeDiedError, WorkerCrashedError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self._lost(tracked, f"{type(exc).__name__}: {first}"[:300])

    def _orphans(self, pending: dict[Any, _Tracked]) -> None:
        """Tasks whose kind no live node advertises any more (its only node died, the task was
        waiting for it): Ray would keep them waiting for ever; they are lost too."""
        import ray

        live = advertised_kinds(_interruptible(ray.nodes))
        for ref, tracked in list(pending.items()):
            kind = tracked.placement.kind
            if kind not in live:
                ray.cancel(ref, force=True)
                del pending[ref]
                self._lost(tracked, f"no live Ray node advertises {RESOURCE_PREFIX}{kind} any more")

    def _lost(self, tracked: _Tracked, why: str) -> None:
        """FAILED `node_lost` rows for the task's unfinished steps, after what it had sent."""
        self._drain()
        log.warning("%s on %s: %s", tracked.placement.spec.raw, tracked.placement.kind, why)
        for row in lost_rows(self.the_run, tracked, why):
            self.the_run.record(row)
            self.the_run.progress.update(1)

    def _drain(self) -> None:
        """Every record the queue holds, into the journal in the order the nodes sent them."""
        n = _interruptible(self.queue.size)
        if not n:
            return
        for what, index, payload in _interruptible(self.queue.get_nowait_batch, n):
            tracked = self.tracked[index]
            if what == "hello":
                tracked.label, tracked.host = payload["label"], payload["host"]
                continue
            rec = record_from_json(payload)
            tracked.received.append(rec)
            self.the_run.record(rec)
            if rec.kind == "point" or (isinstance(rec, StatusRow) and rec.ctx is not None):
                self.the_run.progress.update(1)
