"""The Ollama server at engines.ollama.host:port: one `ollama serve` we started (its launch,
environment, readiness and stop), or someone else's that we only talk to and never stop."""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

import httpx
import psutil

from vramphysics.engines.base import MemoryComponents
from vramphysics.engines.gpus import gpu_env, pinned_indices
from vramphysics.engines.ollama import api
from vramphysics.engines.ollama.config import OllamaConfig
from vramphysics.engines.ollama.log import components_since, log_size
from vramphysics.engines.process import DISK_FULL, ManagedProcess
from vramphysics.errors import EngineError

if TYPE_CHECKING:
    from vramphysics.engines.base import Engine

log = logging.getLogger(__name__)


def launch_env(cfg: OllamaConfig) -> dict[str, str]:
    """The environment a server we start gets on top of ours."""
    env = {"OLLAMA_HOST": f"{cfg.host}:{cfg.port}"}
    env["OLLAMA_KV_CACHE_TYPE"] = cfg.kv_cache_type
    flash = cfg.flash_attention
    if flash is None and cfg.kv_cache_type != "f16":
        flash = True  # Ollama ignores a quantized cache type without flash attention
    if flash is not None:
        env["OLLAMA_FLASH_ATTENTION"] = "1" if flash else "0"
    if cfg.num_parallel is not None:
        env["OLLAMA_NUM_PARALLEL"] = str(cfg.num_parallel)
    env.update(gpu_env(cfg.gpus, docker=False))
    env.update(cfg.env)
    return env


class OllamaServer:
    """Whose server answers, and the one we started (`proc`, None when it is not ours)."""

    def __init__(self, cfg: OllamaConfig, client: httpx.Client, owner: Engine) -> None:
        self.cfg = cfg
        self._client = client
        self._owner = owner  # its port checks, state and log folders
        self.proc: ManagedProcess | None = None  # only a server we started
        self.env: dict[str, str] = {}
        self.version: str | None = None
        self._foreign: tuple[int, float] | None = None  # (pid, create time) of a server not ours

    @property
    def base_url(self) -> str:
        return f"http://{self.cfg.host}:{self.cfg.port}"

    @property
    def ours(self) -> bool:
        return self.proc is not None

    def died(self) -> bool:
        """A server we started has exited."""
        return self.proc is not None and not self.proc.alive()

    def probe_version(self) -> str | None:
        return api.probe_version(self._client, self.base_url)

    def ensure(self) -> None:
        """Make sure an Ollama server answers; start `cfg.command` when allowed and none does."""
        if self.proc is not None:
            if self.proc.alive() and self.version is not None:
                return
            if not self.proc.alive():
                # the start in flight has already failed (check_alive, wait_ready, complete):
                # start a fresh server for what follows rather than failing every later model
                dead, self.proc, self.version = self.proc, None, None
                log.warning(
                    "the Ollama server we started exited with code %s; starting it again",
                    dead.returncode,
                )
                dead.stop(self.cfg.stop_timeout_s)
        version = self.probe_version()
        if version is not None:
            self.version = version
            return
        if not self.cfg.start_server:
            raise EngineError(
                "start_failed",
                f"no Ollama server answers at {self.base_url} and engines.ollama.start_server is "
                "false: start `ollama serve` or allow start_server",
            )
        self.launch()

    def launch(self) -> None:
        """Start `cfg.command` and wait until it answers as Ollama on our port."""
        argv = list(self.cfg.command)
        env = launch_env(self.cfg)
        log.info("no Ollama server at %s: starting %s", self.base_url, " ".join(argv))
        self._owner.claim_port(self.cfg.host, self.cfg.port)  # port_in_use: something mute holds it
        proc = self._spawn(argv, env)
        self.proc, self.env = proc, {**os.environ, **env}
        self._await_answer(proc, argv)

    def _spawn(self, argv: list[str], env: dict[str, str]) -> ManagedProcess:
        try:
            return ManagedProcess(
                argv,
                log_path=self._owner.log_dir / "ollama-serve.log",
                label=f"ollama serve {self.cfg.host}:{self.cfg.port}",
                env=env,
                state_dir=self._owner.state_dir,
            )
        except OSError as exc:
            if exc.errno in DISK_FULL:  # our own state folder is full: not the engine's fault
                raise
            raise EngineError(
                "start_failed",
                f"cannot run {argv[0]!r} ({exc.strerror}): install Ollama or set engines.ollama.command",
            ) from exc

    def _await_answer(self, proc: ManagedProcess, argv: list[str]) -> None:
        deadline = time.monotonic() + self.cfg.start_timeout_s
        while time.monotonic() < deadline:
            if not proc.alive():
                tail = proc.log_tail()
                self.proc = None
                proc.stop(self.cfg.stop_timeout_s)
                raise EngineError(
                    "start_failed",
                    f"`{' '.join(argv)}` exited with code {proc.returncode} before it answered "
                    f"at {self.base_url}",
                    log_tail=tail,
                )
            try:
                version = self.probe_version()
            except EngineError:
                version = None  # another server answered: wait for ours to fail on the port
            if version is not None:
                self._owner.check_listener(proc.pid, self.cfg.host, self.cfg.port)
                self.version = version
                log.info("Ollama %s started (pid %d), log %s", version, proc.pid, proc.log_path)
                return
            time.sleep(0.2)
        tail = proc.log_tail()
        self.proc = None
        proc.stop(self.cfg.stop_timeout_s)
        raise EngineError(
            "timeout",
            f"`{' '.join(argv)}` did not answer at {self.base_url} within {self.cfg.start_timeout_s:.0f} s",
            log_tail=tail,
        )

    # -- whose server, and how it runs ---------------------------------------------------------
    def gpu_indices(self) -> tuple[int, ...] | None:
        """The GPUs of a server we started (engines.ollama.gpus); a server someone else runs
        may use any GPU it sees: None."""
        return pinned_indices(self.cfg.gpus) if self.proc is not None else None

    def pid(self) -> int | None:
        """Our server's pid while it runs, else the pid of whoever listens on the port."""
        if self.proc is not None:
            return self.proc.pid if self.proc.alive() else None
        if self._foreign is not None:
            pid, created = self._foreign
            try:
                if abs(psutil.Process(pid).create_time() - created) < 1.0:
                    return pid
            except psutil.Error:
                pass
            self._foreign = None
        found = _listening_pid(self.cfg.port)
        if found is not None:
            try:
                self._foreign = (found, psutil.Process(found).create_time())
            except psutil.Error:
                return None
        return found

    def environ(self) -> dict[str, str] | None:
        """The environment of the server: ours as we launched it, another's when psutil may read it."""
        if self.proc is not None:
            return self.env
        pid = self.pid()
        if pid is None:
            return None
        try:
            return dict(psutil.Process(pid).environ())
        except psutil.Error:
            return None

    def num_parallel(self) -> tuple[int, str]:
        """OLLAMA_NUM_PARALLEL (Ollama caches num_ctx x it tokens) and where the value came from."""
        if self.cfg.num_parallel is not None:
            return self.cfg.num_parallel, "config"
        env = self.environ()
        raw = (env or {}).get("OLLAMA_NUM_PARALLEL", "").strip()
        if raw.isdigit() and int(raw) > 0:
            return int(raw), "server environment"
        if env is None:
            return 1, "assumed (Ollama's default; the server's environment is not readable)"
        return 1, "Ollama's default"

    def kv_cache_type(self) -> tuple[str, str]:
        """The KV cache type the server uses, and where the value came from."""
        if self.proc is not None:
            return self.cfg.kv_cache_type, "config"
        env = self.environ()
        if env is None:
            return self.cfg.kv_cache_type, "config (the server's environment is not readable)"
        kv = env.get("OLLAMA_KV_CACHE_TYPE", "").strip().lower() or "f16"
        if kv != "f16" and env.get("OLLAMA_FLASH_ATTENTION", "").strip().lower() not in (
            "1",
            "true",
        ):
            return "f16", "server environment (quantized cache ignored without flash attention)"
        return kv, "server environment"

    # -- our server's log ------------------------------------------------------------------------
    def log_tail(self, n_lines: int = 40) -> str:
        return self.proc.log_tail(n_lines) if self.proc is not None else ""

    def log_size(self) -> int:
        return log_size(self.proc.log_path) if self.proc is not None else 0

    def log_components(self, offset: int) -> MemoryComponents | None:
        """llama.cpp's buffer lines in our server's log from `offset` on (None when not ours)."""
        if self.proc is None:
            return None
        return components_since(self.proc.log_path, offset)

    # -- the end ---------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop the server we started (nothing when it is not ours)."""
        if self.proc is not None:  # forgotten only once stopped (a signal may cut in)
            log.info("stopping the Ollama server we started (pid %d)", self.proc.pid)
            self.proc.stop(self.cfg.stop_timeout_s)
            self.proc = None

    def detach(self) -> None:
        """Leave the server we started running (a loadout)."""
        if self.proc is not None:
            proc, self.proc = self.proc, None
            proc.detach()


def _listening_pid(port: int) -> int | None:
    """The pid listening on a local TCP port, when psutil may see it."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return None
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            return int(c.pid)
    return None
