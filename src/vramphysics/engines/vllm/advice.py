"""How a plan is served with vLLM: `vllm serve ...` or `docker run ... vllm/vllm-openai`, and
whether the installed vLLM takes `--kv-cache-memory-bytes`."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path

from vramphysics.allocate.records import Plan
from vramphysics.engines.registry import Advice, AdviceRequest


def _format_util(util: float) -> str:
    return f"{util:.3f}".rstrip("0").rstrip(".")


def _vllm_args(plan: Plan, kv_cache_bytes: bool) -> list[str]:
    if plan.ctx is None or plan.gpu_memory_utilization is None:
        raise ValueError("this plan has no context to serve (it was refused)")
    args = ["--max-model-len", str(plan.ctx)]
    if kv_cache_bytes:
        if plan.kv_cache_memory_bytes is None:
            raise ValueError("this plan has no KV-cache size")
        args += ["--kv-cache-memory-bytes", str(plan.kv_cache_memory_bytes)]
    else:
        args += ["--gpu-memory-utilization", _format_util(plan.gpu_memory_utilization)]
    return args


def vllm_command(
    plan: Plan,
    model: str,
    port: int = 8000,
    extra: Sequence[str] = (),
    kv_cache_bytes: bool = False,
) -> list[str]:
    """`vllm serve MODEL --max-model-len N --gpu-memory-utilization U` as an argument list.

    With `kv_cache_bytes`, `--kv-cache-memory-bytes B` replaces the utilization (newer vLLM).
    """
    return ["vllm", "serve", model, *_vllm_args(plan, kv_cache_bytes), "--port", str(port), *extra]


def docker_command(
    plan: Plan,
    model: str,
    host_port: int = 8300,
    container_port: int = 8000,
    image: str = "vllm/vllm-openai:latest",
    hf_cache: str = "~/.cache/huggingface",
    extra: Sequence[str] = (),
    kv_cache_bytes: bool = False,
) -> list[str]:
    """The same plan as `docker run ... vllm/vllm-openai`, published on 127.0.0.1 only.

    `hf_cache` is used as given: expand `~` before running the list without a shell.
    """
    return [
        "docker",
        "run",
        "--gpus",
        "all",
        "-p",
        f"127.0.0.1:{host_port}:{container_port}",
        "--ipc=host",
        "-v",
        f"{hf_cache}:/root/.cache/huggingface",
        image,
        "--model",
        model,
        *_vllm_args(plan, kv_cache_bytes),
        *extra,
    ]


def _flag_note() -> tuple[str, bool | None, str | None]:
    """What the installed vLLM says about --kv-cache-memory-bytes, whether it takes it, and its
    version as the engine writes it into entries (`vllm X`; None: no vLLM here)."""
    from vramphysics.engines.vllm.args import installed_flag_support

    version, supports = installed_flag_support()
    if version is None:
        note = "no vLLM installed here: check `vllm serve --help` for --kv-cache-memory-bytes"
        return note, None, None
    verb = "accepts" if supports else "does not accept"
    return (
        f"the installed vLLM {version} {verb} --kv-cache-memory-bytes",
        supports,
        f"vllm {version}",
    )


def advice(plan: Plan, request: AdviceRequest) -> Advice:
    """`vllm serve ...` and `docker run ...` for a plan that fits, and what the installed vLLM
    accepts (said for every plan)."""
    note, supports, version = _flag_note()
    facts = {"kv_cache_memory_bytes_supported": supports, "installed_engine_version": version}
    if not plan.fits or plan.ctx is None:
        return Advice(notes=(note,), facts=facts)
    hf_home = os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    kv = request.kv_cache_bytes
    command = vllm_command(plan, request.model, port=request.port or 8000, kv_cache_bytes=kv)
    docker = docker_command(plan, request.model, hf_cache=hf_home, kv_cache_bytes=kv)
    return Advice(
        lines=(("command", shlex.join(command)), ("docker", shlex.join(docker))),
        commands={"command": command, "docker_command": docker},
        notes=(note,),
        facts=facts,
    )
