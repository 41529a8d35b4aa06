"""The llama.cpp server's command line, and the GGUF file a `llamacpp:` model ID names."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from vramphysics.engines.llamacpp.config import LlamaCppConfig
from vramphysics.errors import SetupError

# the variables that give the server an API key: llama-server (LLAMA_API_KEY),
# llama-cpp-python (its settings read API_KEY)
API_KEY_VARIABLES = ("LLAMA_API_KEY", "API_KEY")


def resolve_model_path(name: str, model_dir: Path) -> Path:
    """The GGUF file a `llamacpp:` model ID names.

    - An absolute path (`/models/x.gguf`, or `~/models/x.gguf`) is taken as written: the one way
      to name a file outside the model folder; it must end in `.gguf`.
    - Anything else is a name under `model_dir` (`tiny`, `tiny.gguf`, `q4/llama-7b.gguf`;
      `.gguf` is added when missing) and may not leave it: a `..` part is refused. Symbolic
      links inside the folder are followed (whoever owns the folder put them there).
    """
    try:
        candidate = Path(name).expanduser()
    except RuntimeError as exc:  # ~user of a user that does not exist
        raise SetupError(f"model path {name!r}: {exc}") from exc
    if candidate.is_absolute():
        if candidate.suffix.lower() != ".gguf":
            raise SetupError(
                f"model path {name!r} is absolute but does not end in .gguf: outside the model "
                f"folder {model_dir} only a .gguf file named by its absolute path is accepted"
            )
        return candidate
    if ".." in candidate.parts:
        raise SetupError(
            f"model name {name!r} escapes the model folder {model_dir}: names are relative to "
            "it; write a file elsewhere as an absolute path (llamacpp:/abs/path/model.gguf)"
        )
    resolved = model_dir.expanduser().resolve() / candidate
    if resolved.suffix.lower() != ".gguf":
        resolved = resolved.with_name(resolved.name + ".gguf")
    return resolved


def uses_llama_server(cfg: LlamaCppConfig) -> bool:
    """No command configured and `llama-server` on PATH: run it (else llama-cpp-python)."""
    return cfg.command is None and shutil.which("llama-server") is not None


def base_command(cfg: LlamaCppConfig, *, llama_server: bool) -> list[str]:
    """The launcher: the configured command, `llama-server`, or `python -m llama_cpp.server`."""
    if cfg.command:
        return list(cfg.command)
    if llama_server:
        return ["llama-server"]
    return [sys.executable, "-m", "llama_cpp.server"]


def server_command(
    cfg: LlamaCppConfig, *, llama_server: bool, path: Path, ctx: int, port: int
) -> list[str]:
    """The full argv: the launcher, its flags for the model, context and address (llama-server's
    or llama-cpp-python's spelling), then the configured extra arguments."""
    base = base_command(cfg, llama_server=llama_server)
    host, port_text = cfg.host, str(port)
    if llama_server or (cfg.command and "llama-server" in Path(base[0]).name):
        args = ["-m", str(path), "-c", str(ctx), "--host", host, "--port", port_text]
        args += ["-ngl", str(cfg.n_gpu_layers), "--parallel", "1"]
    else:
        args = ["--model", str(path), "--n_ctx", str(ctx), "--host", host, "--port", port_text]
        args += ["--n_gpu_layers", str(cfg.n_gpu_layers)]
    return base + args + list(cfg.extra_args)


def speaks_llama_server(cfg: LlamaCppConfig, *, llama_server: bool) -> bool:
    """The server we start is llama-server (its API: /tokenize, /props, `timings`), not
    llama-cpp-python: found on PATH, or the configured command names it."""
    return llama_server or bool(cfg.command and "llama-server" in Path(cfg.command[0]).name)


_PARALLEL_FLAGS = ("--parallel", "-np")


def parallel_slots(argv: list[str]) -> int | None:
    """llama-server's `--parallel N` / `-np N` in `argv` (the last one wins, as in its parser)."""
    slots = None
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if flag not in _PARALLEL_FLAGS:
            continue
        if not eq:
            value = argv[i + 1] if i + 1 < len(argv) else ""
        if value.strip().isdigit():
            slots = int(value)
    return slots


def gen_payload(
    prompt: str, output_tokens: int, *, exact: bool, llama_server: bool
) -> dict[str, object]:
    """A timed benchmark request to /v1/completions: never `logprobs` (they make the engine
    compute a softmax per token). Exactly `output_tokens` when `exact`: llama-server's
    `ignore_eos`, llama-cpp-python's `min_tokens` (it masks the end-of-sequence token until
    then); both stop at `max_tokens`."""
    payload: dict[str, object] = {
        "prompt": prompt,
        "max_tokens": output_tokens,
        "temperature": 0.0,
        "stream_options": {"include_usage": True},
    }
    if exact and llama_server:
        payload["ignore_eos"] = True
    elif exact:
        payload["min_tokens"] = output_tokens
    return payload
