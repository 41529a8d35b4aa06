"""How a vLLM server is launched: a native process tree, or a container through the Docker SDK.

Native: `cfg.command` (default `vllm serve`, see `args.resolve_native_command`) in its own
session through `ManagedProcess`; the server is several processes (API server, EngineCore,
Worker) and the whole tree is stopped.

Docker: `docker.from_env()` (or an injected client factory), GPUs by DeviceRequest, the HF cache
mounted, the port published on 127.0.0.1 only, labelled `vramphysics.managed=1` so leftovers can
be found (`managed_containers`), logs followed into a file; the container is removed after every
start, also on a failure or Ctrl-C, and a leftover of ours with the same name before a start. A
container of that name without our label is never touched: the start is refused, naming it.

GPUs (`cfg.gpus`, see `gpu_env`): a native start gets CUDA_VISIBLE_DEVICES, a container its
device requests and NVIDIA_VISIBLE_DEVICES; `all` leaves the user's environment as it is.
"""

from __future__ import annotations

import logging
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vramphysics import hf_cache
from vramphysics.engines.gpus import gpu_env
from vramphysics.engines.process import DISK_FULL, ManagedProcess
from vramphysics.engines.vllm import args as vllm_args
from vramphysics.engines.vllm.args import (
    MANAGED_LABEL,
    MODEL_LABEL,
    RUN_LABEL,
    container_name,
    resolve_native_command,
    secret_env,
    server_args,
)
from vramphysics.engines.vllm.config import VllmConfig
from vramphysics.engines.vllm.containers import (
    LogFollower,
    clear_container_name,
    container_volumes,
    device_requests,
    remove_managed_containers,
    stop_container,
)
from vramphysics.errors import EngineError
from vramphysics.redact import redact
from vramphysics.setups import ModelSpec

log = logging.getLogger(__name__)

__all__ = ["DockerLauncher", "Launch", "Launcher", "NativeLauncher", "make_launcher"]


@dataclass(frozen=True)
class Launch:
    """One start of the server: what it serves, where it listens, its memory budget, its log."""

    spec: ModelSpec
    ctx: int
    found: hf_cache.ModelLookup
    port: int
    gpu_memory_utilization: float
    kv_space_gib: int
    log_path: Path


class Launcher(ABC):
    """Starts, watches and stops the server of one start; holds its process or container."""

    in_container = False

    def __init__(self, cfg: VllmConfig) -> None:
        self.cfg = cfg

    def engine_env(self, kv_space_gib: int) -> dict[str, str]:
        """The variables the server gets from us (not the user's own environment)."""
        return _engine_env(self.cfg, kv_space_gib, docker=self.in_container)

    @abstractmethod
    def api_key_env(self) -> Mapping[str, str]:
        """The environment the server sees, for finding its API key."""

    @abstractmethod
    def description(self) -> str:
        """What runs the server (the settings' `launcher`)."""

    @abstractmethod
    def installed_version(self) -> str | None:
        """`vllm X` when the version is known before a start, else None."""

    @abstractmethod
    def unknown_version(self) -> str:
        """The version to show when neither the installation nor the log tells it."""

    @abstractmethod
    def start(self, launch: Launch) -> None: ...

    @abstractmethod
    def exit_status(self) -> str | None:
        """None while the server lives, else how it ended."""

    @abstractmethod
    def listener_pid(self) -> int | None:
        """The pid that must own the listening port (None: not checked)."""

    @abstractmethod
    def root_pid(self) -> int | None: ...

    @abstractmethod
    def flush_log(self) -> None:
        """Make the log file hold everything the server wrote (after it ended)."""

    @abstractmethod
    def stop(self) -> None: ...

    @abstractmethod
    def detach(self) -> None:
        """Leave the server running (a loadout), still findable by `kill_managed`."""

    def kill_managed(self) -> list[str]:
        """Stop what this launcher left running beyond our process records."""
        return []

    @abstractmethod
    def close(self) -> None:
        """Release what the launcher holds (not the server: see `stop`)."""


def _engine_env(cfg: VllmConfig, kv_space_gib: int, *, docker: bool) -> dict[str, str]:
    env = dict(cfg.env)
    env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_space_gib)  # a GPU build ignores it
    env.update(gpu_env(cfg.gpus, docker=docker))
    return env


def native_command(cfg: VllmConfig, launch: Launch) -> tuple[list[str], dict[str, str]]:
    """The argv of a native start and the variables it adds to our environment."""
    spec, found = launch.spec, launch.found
    model = str(found.folder.resolve()) if found.kind == "local" and found.folder else spec.name
    argv = resolve_native_command(cfg.command) + server_args(
        model=model,
        ctx=launch.ctx,
        gpu_memory_utilization=launch.gpu_memory_utilization,
        host=cfg.host,
        port=launch.port,
        limit_mm_per_prompt=spec.limit_mm_per_prompt,
        extra_args=cfg.extra_args,
    )
    env = _engine_env(cfg, launch.kv_space_gib, docker=False)
    hub = hf_cache.hub_cache(cfg.hf_cache)
    if hub.source == "config":  # the server must look where check_available looked
        env["HF_HOME"] = str(hub.home_dir)
    return argv, env


class NativeLauncher(Launcher):
    """The server as a process tree of ours (`ManagedProcess`)."""

    def __init__(self, cfg: VllmConfig, *, state_dir: Path) -> None:
        super().__init__(cfg)
        self.state_dir = state_dir
        self._proc: ManagedProcess | None = None

    def api_key_env(self) -> Mapping[str, str]:
        return {**os.environ, **self.cfg.env}

    def description(self) -> str:
        return " ".join(resolve_native_command(self.cfg.command))

    def installed_version(self) -> str | None:
        cmd = resolve_native_command(self.cfg.command)
        if cmd[0] == sys.executable or Path(cmd[0]).parent == Path(sys.executable).parent:
            installed = vllm_args._installed_version()
            if installed:
                return f"vllm {installed}"
        return None

    def unknown_version(self) -> str:
        return "vllm (unknown)"

    def start(self, launch: Launch) -> None:
        argv, env = native_command(self.cfg, launch)
        log.debug("starting %s", [redact(a) for a in argv])
        try:
            self._proc = ManagedProcess(
                argv,
                log_path=launch.log_path,
                label=f"vllm {launch.spec.raw} ctx={launch.ctx}",
                env=env,
                state_dir=self.state_dir,
            )
        except OSError as exc:
            if exc.errno in DISK_FULL:  # our own state folder is full: not the engine's fault
                raise
            raise EngineError(
                "start_failed", f"cannot run {argv[0]!r}: {exc.strerror}", model_id=launch.spec.raw
            ) from exc

    def exit_status(self) -> str | None:
        if self._proc is not None:
            return None if self._proc.alive() else f"exited with code {self._proc.returncode}"
        return "not running"

    def listener_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def root_pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid if self._proc.alive() else None
        return None

    def flush_log(self) -> None:
        return None  # the process writes its log file itself

    def close(self) -> None:
        return None

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.stop(self.cfg.stop_timeout_s)

    def detach(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.detach()


class DockerLauncher(Launcher):
    """The server in a container of ours, labelled so that leftovers can be found."""

    in_container = True

    def __init__(
        self,
        cfg: VllmConfig,
        *,
        run_label: str,
        client_factory: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__(cfg)
        self.run_label = run_label
        self._factory = client_factory
        self._client: Any = None
        self._container: Any = None
        self._name: str | None = None
        self._follower: LogFollower | None = None

    def api_key_env(self) -> Mapping[str, str]:
        return dict(self.cfg.env)

    def description(self) -> str:
        return f"docker {self.cfg.image}"

    def installed_version(self) -> str | None:
        return None

    def unknown_version(self) -> str:
        return f"vllm (image {self.cfg.image})"

    def client(self) -> Any:
        if self._client is None:
            factory = self._factory
            if factory is None:
                import docker

                factory = docker.from_env
            from docker.errors import DockerException

            try:
                self._client = factory()
            except DockerException as exc:
                raise EngineError("start_failed", f"no Docker engine: {redact(str(exc))}") from exc
        return self._client

    def run_kwargs(self, launch: Launch) -> dict[str, Any]:
        """Everything `containers.run` gets for this start (the environment holds HF_TOKEN)."""
        model, volumes = container_volumes(self.cfg.hf_cache, launch.spec, launch.found)
        command = server_args(
            model=model,
            ctx=launch.ctx,
            gpu_memory_utilization=launch.gpu_memory_utilization,
            host="0.0.0.0",  # inside the container; published on cfg.host (127.0.0.1) only
            port=self.cfg.container_port,
            limit_mm_per_prompt=launch.spec.limit_mm_per_prompt,
            extra_args=self.cfg.extra_args,
        )
        return {
            "image": self.cfg.image,
            "command": command,
            "name": container_name(self.cfg.container_name, launch.spec),
            "detach": True,
            "environment": {**self.engine_env(launch.kv_space_gib), **secret_env()},
            "ports": {f"{self.cfg.container_port}/tcp": (self.cfg.host, launch.port)},
            "volumes": volumes,
            "ipc_mode": "host",
            "device_requests": device_requests(self.cfg.gpus),
            "labels": {
                MANAGED_LABEL: "1",
                RUN_LABEL: self.run_label,
                MODEL_LABEL: launch.spec.raw,
                "vramphysics.launcher_pid": str(os.getpid()),
            },
        }

    def start(self, launch: Launch) -> None:
        from docker.errors import APIError, DockerException, ImageNotFound, NotFound

        spec = launch.spec
        client = self.client()
        kwargs = self.run_kwargs(launch)
        name = kwargs["name"]
        clear_container_name(client, name, spec)
        hub = hf_cache.hub_cache(self.cfg.hf_cache)
        (hub.home_dir or hub.hub_dir).mkdir(parents=True, exist_ok=True)
        self._name = name
        log.debug(
            "docker run %s %s as %s", kwargs["image"], redact(" ".join(kwargs["command"])), name
        )
        try:
            self._container = client.containers.run(**kwargs)
        except (ImageNotFound, NotFound) as exc:
            raise EngineError(
                "start_failed", f"image {self.cfg.image}: {redact(str(exc))}", model_id=spec.raw
            ) from exc
        except (APIError, DockerException) as exc:
            raise EngineError(
                "start_failed", f"docker run: {redact(str(exc))}", model_id=spec.raw
            ) from exc
        self._follower = LogFollower(self._container, launch.log_path)

    def exit_status(self) -> str | None:
        if self._container is None:
            return "not running"
        from docker.errors import DockerException, NotFound

        try:
            self._container.reload()
        except NotFound:
            return "container disappeared"
        except (DockerException, OSError) as exc:
            return f"cannot query the container: {redact(str(exc))}"
        status = getattr(self._container, "status", "running")
        if status in ("exited", "dead"):
            code = (self._container.attrs.get("State") or {}).get("ExitCode")
            return f"container {status} with code {code}"
        return None

    def listener_pid(self) -> int | None:
        return None  # the port belongs to Docker's proxy, not to the server

    def root_pid(self) -> int | None:
        if self._container is not None:
            pid = (self._container.attrs.get("State") or {}).get("Pid")
            return int(pid) if isinstance(pid, int) and pid > 0 else None
        return None

    def flush_log(self) -> None:
        if self._follower is not None:
            self._follower.close(timeout_s=2.0)

    def _take(self) -> tuple[Any, str | None, LogFollower | None]:
        held = (self._container, self._name, self._follower)
        self._container, self._name, self._follower = None, None, None
        return held

    def stop(self) -> None:
        container, name, follower = self._take()
        if container is not None or name is not None:
            stop_container(container, name, client=self.client, timeout_s=self.cfg.stop_timeout_s)
        if follower is not None:
            follower.close()

    def detach(self) -> None:
        container, _, follower = self._take()
        if follower is not None:
            follower.close(timeout_s=0.1)
        if container is not None:
            log.info("leaving container %s running", getattr(container, "name", "?"))

    def kill_managed(self) -> list[str]:
        try:
            client = self.client()
        except EngineError as exc:
            log.warning("no Docker engine to look for vLLM containers: %s", exc)
            return []
        return [f"container {n}" for n in remove_managed_containers(client)]

    def close(self) -> None:
        if self._client is not None and hasattr(self._client, "close"):
            self._client.close()
            self._client = None


def make_launcher(
    cfg: VllmConfig,
    *,
    state_dir: Path,
    run_label: str,
    docker_client_factory: Callable[[], Any] | None = None,
) -> Launcher:
    """The launcher `cfg.mode` names."""
    if cfg.mode == "docker":
        return DockerLauncher(cfg, run_label=run_label, client_factory=docker_client_factory)
    return NativeLauncher(cfg, state_dir=state_dir)
