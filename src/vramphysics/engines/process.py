"""Engine processes: launched in their own session, logs captured, whole tree stopped.

Every process we launch is recorded in `<state_dir>/procs/<pid>.json` (pid, process group,
create time, who launched it). A later run, `--resume` or `manage_loadout.py --kill all` finds the
records whose launcher is gone and stops those trees; the create time guards against a reused pid,
so nothing that is not ours is ever signalled.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from vramphysics.errors import EngineError

log = logging.getLogger(__name__)

_PROCS = "procs"
# errnos of a full disk or quota: our own folders are full, which no engine can mend
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class ProcessRecord:
    """What we wrote down about a process we launched."""

    pid: int
    pgid: int
    create_time: float
    label: str
    argv0: str
    launcher_pid: int
    launcher_create_time: float
    log_path: str
    keep: bool = False  # left running on purpose (manage_loadout.py --apply): not a leftover

    @property
    def engine(self) -> str:
        """The engine that launched it: the first word of the label."""
        return self.label.split(" ", 1)[0]


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


class ManagedProcess:
    """A child process in its own session, with its output in a log file."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        label: str,
        env: Mapping[str, str] | None = None,
        state_dir: Path | None = None,
        cwd: Path | None = None,
    ) -> None:
        if not argv:
            raise ValueError("empty command")
        self.argv = list(argv)
        self.log_path = log_path
        self.label = label
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        try:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError:
            self._log_file.close()
            raise
        self.pid = self._popen.pid
        self._record_path: Path | None = None
        if state_dir is not None:
            try:
                self._record_path = _write_record(
                    state_dir, self.pid, label, self.argv[0], log_path
                )
            except OSError:  # e.g. a full disk: a process nobody records must not outlive us
                self.stop(timeout_s=5.0)
                (state_dir / _PROCS / f"{self.pid}.tmp").unlink(missing_ok=True)
                raise

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    def alive(self) -> bool:
        return self._popen.poll() is None

    def tree(self) -> list[psutil.Process]:
        """The root and all its descendants that are alive now."""
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def log_tail(self, n_lines: int = 40) -> str:
        return read_tail(self.log_path, n_lines)

    def detach(self) -> None:
        """Leave the process running on purpose: its record is kept and marked `keep`, so that
        leftover clean-up skips it and `manage_loadout.py --kill` can still stop it."""
        if self._record_path is not None and self._record_path.exists():
            data = json.loads(self._record_path.read_text(encoding="utf-8"))
            data["keep"] = True
            tmp = self._record_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data), encoding="utf-8")
            tmp.replace(self._record_path)
        self._record_path = None
        self._log_file.close()

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM the whole tree, then SIGKILL what is left after `timeout_s`; reap the root."""
        try:
            stop_tree(self.pid, timeout_s=timeout_s, pgid=self.pid)
            try:
                self._popen.wait(timeout=max(1.0, timeout_s))
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait(timeout=5)
        finally:
            self._log_file.close()
        # only once the tree is gone: an interrupted stop keeps the record for a later clean-up
        if self._record_path is not None:
            self._record_path.unlink(missing_ok=True)


def read_tail(path: Path, n_lines: int = 40, max_bytes: int = 64_000) -> str:
    """The last `n_lines` of a text file (empty when it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return ""
    lines = data.decode("utf-8", errors="replace").splitlines()
    return "\n".join(lines[-n_lines:])


def stop_tree(pid: int, *, timeout_s: float = 15.0, pgid: int | None = None) -> int:
    """Stop `pid`, its process group and every descendant. Returns how many were signalled."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    if pgid is not None:
        procs += _group_members(pgid, exclude={p.pid for p in procs})
    if not procs:
        return 0
    for p in procs:
        _signal(p, signal.SIGTERM)
    _gone, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for p in alive:
        _signal(p, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5)
    return len(procs)


def _group_members(pgid: int, exclude: set[int]) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        if p.pid in exclude:
            continue
        try:
            if os.getpgid(p.pid) == pgid:
                out.append(p)
        except (ProcessLookupError, PermissionError):
            continue
    return out


def _signal(p: psutil.Process, sig: int) -> None:
    try:
        p.send_signal(sig)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass


def _write_record(state_dir: Path, pid: int, label: str, argv0: str, log_path: Path) -> Path:
    folder = state_dir / _PROCS
    folder.mkdir(parents=True, exist_ok=True)
    me = os.getpid()
    record = ProcessRecord(
        pid=pid,
        pgid=pid,
        create_time=_create_time(pid) or 0.0,
        label=label,
        argv0=argv0,
        launcher_pid=me,
        launcher_create_time=_create_time(me) or 0.0,
        log_path=str(log_path),
    )
    path = folder / f"{pid}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record)), encoding="utf-8")
    tmp.replace(path)
    return path


def _matches(pid: int, create_time: float) -> bool:
    actual = _create_time(pid)
    return actual is not None and abs(actual - create_time) < 1.0


def list_records(state_dir: Path) -> list[tuple[Path, ProcessRecord]]:
    folder = state_dir / _PROCS
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            out.append((path, ProcessRecord(**json.loads(path.read_text(encoding="utf-8")))))
        except (OSError, ValueError, TypeError) as exc:
            log.warning("ignoring unreadable process record %s: %s", path, exc)
    return out


def find_leftovers(
    state_dir: Path, *, include_live_launchers: bool = False, include_kept: bool = False
) -> list[ProcessRecord]:
    """Recorded processes still running whose launcher is gone (or all, if asked).

    Processes left running on purpose (`keep`) are included only with `include_kept`.
    """
    out = []
    for path, rec in list_records(state_dir):
        if not _matches(rec.pid, rec.create_time):
            path.unlink(missing_ok=True)  # the process is gone: the record is stale
            continue
        if rec.keep and not include_kept:
            continue
        launcher_alive = _matches(rec.launcher_pid, rec.launcher_create_time)
        if include_live_launchers or rec.keep or not launcher_alive:
            out.append(rec)
    return out


def kill_leftovers(
    state_dir: Path,
    *,
    include_live_launchers: bool = False,
    include_kept: bool = False,
    engine: str | None = None,
    timeout_s: float = 15.0,
) -> list[ProcessRecord]:
    """Stop the trees of `find_leftovers` (of one engine, when named); returns what was stopped."""
    stopped = []
    found = find_leftovers(
        state_dir, include_live_launchers=include_live_launchers, include_kept=include_kept
    )
    for rec in found:
        if engine is not None and rec.engine != engine:
            continue
        log.warning(
            "stopping leftover %s (pid %d) started by runner pid %d",
            rec.label,
            rec.pid,
            rec.launcher_pid,
        )
        stop_tree(rec.pid, timeout_s=timeout_s, pgid=rec.pgid)
        (state_dir / _PROCS / f"{rec.pid}.json").unlink(missing_ok=True)
        stopped.append(rec)
    return stopped


# --------------------------------------------------------------------------- ports


def can_bind(host: str, port: int) -> bool:
    """Could a server bind `host:port` now? (SO_REUSEADDR, as servers set it, so that a closed
    connection in TIME_WAIT does not count; a listening socket does, on Linux even on 0.0.0.0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str) -> int:
    """A port the system has free on `host` now (`port: auto`)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_holder(port: int) -> str:
    """Who listens on TCP `port`: `pid N (name)` when psutil may see it."""
    try:
        conns = psutil.net_connections(kind="inet")
    except (psutil.AccessDenied, PermissionError) as exc:
        log.debug("cannot list the sockets of other processes (%s)", exc)
        return "a process this user may not see"
    pids = sorted(
        {
            c.pid
            for c in conns
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid
        }
    )
    if not pids:
        return "a process this user may not see"
    names = []
    for pid in pids:
        try:
            names.append(f"pid {pid} ({psutil.Process(pid).name()})")
        except psutil.Error:
            names.append(f"pid {pid}")
    return ", ".join(names)


def port_in_use(host: str, port: int, *, model_id: str | None = None) -> EngineError:
    return EngineError(
        "port_in_use",
        f"port {port} on {host} is held by {port_holder(port)}: stop that server, or give "
        "the engine another port (or `port: auto`)",
        model_id=model_id,
    )


def ensure_port_free(host: str, port: int, *, model_id: str | None = None) -> None:
    """Before a start: EngineError(kind="port_in_use") naming the holder when `port` is taken."""
    if not can_bind(host, port):
        raise port_in_use(host, port, model_id=model_id)


def _inet_connections(p: psutil.Process) -> list[Any]:
    method = getattr(p, "net_connections", None) or p.connections  # psutil < 6
    return list(method(kind="inet"))


def tree_listens_on(pid: int, port: int) -> bool | None:
    """Does the process tree of `pid` hold the listening socket of TCP `port`? None when psutil
    may not tell (AccessDenied)."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return False
    for p in tree:
        try:
            conns = _inet_connections(p)
        except psutil.NoSuchProcess:
            continue
        except psutil.AccessDenied:
            return None
        if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns):
            return True
    return False
