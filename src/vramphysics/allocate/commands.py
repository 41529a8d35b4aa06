"""A plan as a command line: `vllm serve ...` or `docker run ... vllm/vllm-openai`."""

from __future__ import annotations

from collections.abc import Sequence

from vramphysics.allocate.records import Plan


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
