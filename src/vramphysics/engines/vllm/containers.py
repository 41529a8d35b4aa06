"""The Docker side of vLLM: what a container mounts and which GPUs it gets, a container's
output followed into a log file, and the containers vram-physics started (labelled
`vramphysics.managed=1`) found, stopped and removed; never anyone else's."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vramphysics import hf_cache
from vramphysics.engines.gpus import GpuSelection, pinned_indices
from vramphysics.engines.vllm.args import (
    CONTAINER_HF_HOME,
    CONTAINER_MODELS,
    MANAGED_LABEL,
    RUN_LABEL,
    sanitize_container_name,
)
from vramphysics.errors import EngineError
from vramphysics.redact import redact
from vramphysics.setups import ModelSpec

log = logging.getLogger(__name__)


class LogFollower:
    """Copies a container's output into a log file, line by line, with secrets masked."""

    def __init__(self, container: Any, path: Path) -> None:
        self.path = path
        self._container = container
        self._stream: Any = None
        self._thread = threading.Thread(target=self._run, name="vllm-container-log", daemon=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def _run(self) -> None:
        from docker.errors import DockerException
        from urllib3.exceptions import HTTPError

        pending = b""
        with open(self.path, "ab") as out:
            try:
                self._stream = self._container.logs(stream=True, follow=True)
                for chunk in self._stream:
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        out.write(redact(line.decode("utf-8", "replace")).encode() + b"\n")
                    out.flush()
            except (DockerException, HTTPError, OSError, ValueError, AttributeError) as exc:
                log.debug("container log stream ended: %s", exc)
            if pending:
                out.write(redact(pending.decode("utf-8", "replace")).encode() + b"\n")

    def close(self, timeout_s: float = 5.0) -> None:
        """Wait for the stream to end (the container stopped), else close it."""
        self._thread.join(timeout=timeout_s)
        stream = self._stream
        if self._thread.is_alive() and stream is not None and hasattr(stream, "close"):
            try:
                stream.close()
            except (OSError, ValueError, AttributeError) as exc:
                log.debug("closing the container log stream: %s", exc)
            self._thread.join(timeout=timeout_s)


def managed_containers(client: Any, run: str | None = None) -> list[Any]:
    """Containers vram-physics started (all, or one run's), running or not."""
    labels = [f"{MANAGED_LABEL}=1"] + ([f"{RUN_LABEL}={run}"] if run else [])
    return list(client.containers.list(all=True, filters={"label": labels}))


def remove_managed_containers(client: Any, run: str | None = None) -> list[str]:
    """Stop and remove the containers `managed_containers` finds; returns their names."""
    from docker.errors import APIError, NotFound

    removed = []
    for container in managed_containers(client, run):
        try:
            container.remove(force=True)
            removed.append(container.name)
        except NotFound:
            continue
        except APIError as exc:
            log.warning("cannot remove container %s: %s", container.name, exc)
    return removed


def container_volumes(
    hf_home: Path, spec: ModelSpec, found: hf_cache.ModelLookup
) -> tuple[str, dict[str, dict[str, str]]]:
    """The model argument inside the container, and the folders mounted for it."""
    hub = hf_cache.hub_cache(hf_home)
    volumes: dict[str, dict[str, str]] = {}
    if hub.source == "HF_HUB_CACHE":
        volumes[str(hub.hub_dir)] = {"bind": f"{CONTAINER_HF_HOME}/hub", "mode": "rw"}
    else:
        volumes[str(hub.home_dir)] = {"bind": CONTAINER_HF_HOME, "mode": "rw"}
    model = spec.name
    if found.kind == "local" and found.folder is not None:
        model = f"{CONTAINER_MODELS}/{sanitize_container_name(found.folder.name)}"
        volumes[str(found.folder.resolve())] = {"bind": model, "mode": "ro"}
    return model, volumes


def device_requests(gpus: GpuSelection) -> list[Any]:
    from docker.types import DeviceRequest

    indices = pinned_indices(gpus)
    if indices is None:
        return [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    if not indices:
        return []
    return [DeviceRequest(device_ids=[str(i) for i in indices], capabilities=[["gpu"]])]


def clear_container_name(client: Any, name: str, spec: ModelSpec) -> None:
    """Remove a leftover container of ours with this name; refuse to start over anyone
    else's (it lacks our label): we never remove a container we did not start."""
    from docker.errors import APIError, NotFound

    try:
        old = client.containers.get(name)
    except NotFound:
        return
    labels = getattr(old, "labels", None) or {}
    if labels.get(MANAGED_LABEL) != "1":
        raise EngineError(
            "start_failed",
            f"a container named {name!r} (id {str(old.id)[:12]}) already exists and "
            "vram-physics did not start it, so it is left alone: rename or remove it, or "
            "set engines.vllm.container_name (e.g. 'vram-physics-vllm-{model}')",
            model_id=spec.raw,
        )
    log.info("removing container %r left over from an earlier run of ours", name)
    try:
        old.remove(force=True)
    except NotFound:
        return
    except APIError as exc:
        raise EngineError(
            "start_failed", f"cannot remove the old container {name!r}: {exc}"
        ) from exc


def stop_container(
    container: Any, name: str | None, *, client: Callable[[], Any], timeout_s: float
) -> None:
    """Stop and remove our container (`container`, or when None the one named `name` if it
    carries our label)."""
    from docker.errors import APIError, NotFound

    if container is None:  # interrupted inside containers.run: find it by its name
        try:
            container = client().containers.get(name)
        except NotFound:
            return
        except EngineError as exc:
            log.warning("cannot look for container %s: %s", name, exc)
            return
        if (getattr(container, "labels", None) or {}).get(MANAGED_LABEL) != "1":
            return
    try:
        container.stop(timeout=int(timeout_s))
    except NotFound:
        return
    except APIError as exc:
        log.warning("stopping container %s: %s", name, exc)
    try:
        container.remove(force=True)
    except NotFound:
        return
    except APIError as exc:
        log.warning("removing container %s: %s", name, exc)
