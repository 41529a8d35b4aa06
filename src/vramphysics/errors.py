"""The error hierarchy: every error a user can act on names the file, line, key or model ID."""

from __future__ import annotations

from pathlib import Path


class VramPhysicsError(Exception):
    """Base of every error the CLI prints in one line (no traceback without --debug)."""


class ConfigError(VramPhysicsError):
    """A configuration or data file is wrong: names the file, and the line or key when known."""

    def __init__(
        self,
        message: str,
        *,
        path: Path | str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.line = line
        self.key = key
        self.message = message
        super().__init__(self._format())

    def _format(self) -> str:
        where = ""
        if self.path is not None:
            where = str(self.path)
            if self.line is not None:
                where += f":{self.line}"
            where += ": "
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.message}"


class SetupError(ConfigError):
    """A model ID or a test setup is wrong: names the file, line and model ID."""

    def __init__(
        self,
        message: str,
        *,
        model_id: str | None = None,
        path: Path | str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        self.model_id = model_id
        if model_id is not None:
            message = f"model ID {model_id!r}: {message}"
        super().__init__(message, path=path, line=line, key=key)


FAILURE_KINDS = (
    "timeout",
    "engine_crashed",
    "start_failed",
    "kv_too_small",
    "cuda_oom",
    "insufficient_free_memory",
    "model_not_found",
    "download_failed",
    "request_failed",
    "unauthorized",  # the engine wants an API key we do not send (HTTP 401/403)
    "port_in_use",  # another process holds the port our engine must listen on
    "probe_failed",  # the memory probe could not be read before the start (e.g. an NVML error)
    "unreachable",  # nothing answers at a server URL we were given (`bench --url`)
    "interrupted",
    "node_lost",  # the Ray node (or its worker) running the sweep died before the step finished
    "other",
)


class EngineError(VramPhysicsError):
    """An engine failed: `kind` is one of FAILURE_KINDS; `log_tail` holds the end of its log."""

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        model_id: str | None = None,
        log_tail: str = "",
        max_context: int | None = None,
    ) -> None:
        if kind not in FAILURE_KINDS:
            raise ValueError(f"unknown failure kind {kind!r}")
        self.kind = kind
        self.model_id = model_id
        self.log_tail = log_tail
        self.max_context = max_context
        self.message = message
        prefix = f"{model_id}: " if model_id else ""
        super().__init__(f"{prefix}{kind}: {message}")


class Interrupted(VramPhysicsError):
    """SIGINT or SIGTERM arrived; `signum` says which (the CLI exits 128 + signum)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by signal {signum}")
