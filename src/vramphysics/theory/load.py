"""One entry point for the CLI: theory from exactly one source file."""

from __future__ import annotations

from pathlib import Path

from vramphysics.errors import ConfigError
from vramphysics.theory.common import Theory
from vramphysics.theory.gguf import theory_from_gguf
from vramphysics.theory.hf import theory_from_hf_config
from vramphysics.theory.ollama import load_ollama_show, theory_from_ollama_show


def load_theory(
    *,
    hf_config: Path | None = None,
    gguf: Path | None = None,
    ollama_show: Path | None = None,
    kv_dtype: str = "auto",
    num_parallel: int = 1,
    dtype: str = "auto",
) -> Theory:
    """Loader for the CLI: theory from exactly one source file.

    With `hf_config`, the weights come from the safetensors files in the same folder, and
    `dtype` is vLLM's `--dtype` (GGUF and Ollama models are served as stored).
    """
    given = [p for p in (hf_config, gguf, ollama_show) if p is not None]
    if len(given) != 1:
        raise ConfigError("give exactly one of an HF config, a GGUF file or an Ollama show answer")
    if hf_config is not None:
        path = Path(hf_config)
        folder = path if path.is_dir() else path.parent
        return theory_from_hf_config(path, kv_dtype=kv_dtype, weights_dir=folder, dtype=dtype)
    if gguf is not None:
        return theory_from_gguf(Path(gguf), kv_dtype=kv_dtype)
    assert ollama_show is not None
    try:
        show = load_ollama_show(Path(ollama_show))
        return theory_from_ollama_show(show, kv_dtype=kv_dtype, num_parallel=num_parallel)
    except ConfigError as exc:
        if exc.path is None:
            raise ConfigError(exc.message, path=ollama_show, line=exc.line, key=exc.key) from exc
        raise
