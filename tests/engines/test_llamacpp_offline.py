"""llama.cpp without a server: model paths, the context check, the tiny SWA model (fast)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from vramphysics.demo_models import TinyModelShape, write_tiny_gguf
from vramphysics.engines.llamacpp import LlamaCppEngine, resolve_model_path
from vramphysics.engines.llamacpp.config import LlamaCppConfig
from vramphysics.errors import EngineError, SetupError
from vramphysics.setups import parse_model_id

FIXTURES = Path(__file__).parent.parent / "fixtures" / "llamacpp"

# -- model paths: names stay under model_dir; elsewhere only as an absolute .gguf path ----------


def test_a_name_is_looked_up_in_the_model_folder(tmp_path: Path) -> None:
    models = tmp_path / "models"
    assert resolve_model_path("tiny", models) == models.resolve() / "tiny.gguf"
    assert resolve_model_path("tiny.gguf", models) == models.resolve() / "tiny.gguf"
    assert resolve_model_path("TINY.GGUF", models) == models.resolve() / "TINY.GGUF"
    # a name with slashes is a sub-folder of the model folder, not a path from the cwd
    assert resolve_model_path("q4/llama-7b.gguf", models) == models.resolve() / "q4/llama-7b.gguf"
    assert resolve_model_path("./q4/llama-7b", models) == models.resolve() / "q4/llama-7b.gguf"


@pytest.mark.parametrize(
    "name", ["../x.gguf", "../../x.gguf", "sub/../../x.gguf", "../models/x.gguf", "a/../../etc/x"]
)
def test_a_relative_name_may_not_leave_the_model_folder(tmp_path: Path, name: str) -> None:
    models = tmp_path / "models"
    (tmp_path / "x.gguf").write_bytes(b"GGUF")  # bait: a real file just outside
    with pytest.raises(SetupError) as info:
        resolve_model_path(name, models)
    message = str(info.value)
    assert repr(name) in message and "escapes the model folder" in message
    assert "llamacpp:/abs/path" in message  # says how to name a file elsewhere


def test_an_absolute_gguf_path_is_the_way_out_of_the_folder(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere" / "x.gguf"
    assert resolve_model_path(str(outside), tmp_path / "models") == outside


def test_tilde_is_an_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_model_path("~/m/x.gguf", tmp_path / "models") == tmp_path / "m" / "x.gguf"


@pytest.mark.parametrize("name", ["/etc/passwd", "/models/q4/llama-7b", "~/secret"])
def test_an_absolute_path_must_name_a_gguf_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(SetupError) as info:
        resolve_model_path(name, tmp_path / "models")
    assert repr(name) in str(info.value) and "does not end in .gguf" in str(info.value)
    assert "model folder" in str(info.value)


def test_a_symlink_placed_in_the_model_folder_is_followed(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    target = tmp_path / "disk2" / "big.gguf"
    target.parent.mkdir()
    target.write_bytes(b"GGUF")
    os.symlink(target, models / "big.gguf")
    path = resolve_model_path("big", models)
    assert path == models.resolve() / "big.gguf" and path.resolve() == target.resolve()


def _engine(tmp_path: Path) -> LlamaCppEngine:
    cfg = LlamaCppConfig.model_validate({"model_dir": tmp_path / "models", "port": 1})
    return LlamaCppEngine(cfg, state_dir=tmp_path / "state", log_dir=tmp_path / "logs")


def test_validate_names_the_model_id(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    try:
        with pytest.raises(SetupError) as info:
            engine.validate(parse_model_id("llamacpp:../../x.gguf#ctx=512"))
        assert info.value.model_id == "llamacpp:../../x.gguf#ctx=512"
        engine.validate(parse_model_id(f"llamacpp:{tmp_path / 'x.gguf'}"))  # accepted
    finally:
        engine.close()


# -- the context check: the full-attention cache's cells, not the sliding window's ---------------


class _LoggedProcess:
    """What `memory_report` reads of a started server: its log file."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path

    def stop(self, timeout_s: float) -> None:
        """Nothing runs."""


def _check(tmp_path: Path, log: str, ctx: int) -> None:
    engine = _engine(tmp_path)
    log_path = tmp_path / "server.log"
    log_path.write_text(log)
    engine._proc = _LoggedProcess(log_path)  # type: ignore[assignment]
    engine._spec, engine._ctx = parse_model_id("llamacpp:gemma.gguf"), ctx
    try:
        engine._check_context_applied()
    finally:
        engine.close()


@pytest.mark.parametrize(
    ("fixture", "ctx"),
    [("iswa_cpu_llama_cpp_python_8192.log", 8192), ("iswa_cuda_llama_server_gemma3_12b.log", 8192)],
)
def test_a_sliding_window_model_passes_the_context_check(
    tmp_path: Path, fixture: str, ctx: int
) -> None:
    # the SWA cache (768 / 1536 cells) is printed last; the check must read the full one
    _check(tmp_path, (FIXTURES / fixture).read_text(), ctx)


def test_a_context_the_server_did_not_apply_is_still_refused(tmp_path: Path) -> None:
    log = (FIXTURES / "iswa_cpu_llama_cpp_python_8192.log").read_text()
    with pytest.raises(EngineError) as info:
        _check(tmp_path, log, 16384)
    assert "asked for n_ctx 16384 but the KV cache has 8192 cells" in str(info.value)


def test_a_cpu_kv_cache_of_a_cuda_build_is_checked_too(tmp_path: Path) -> None:
    log = (FIXTURES / "cuda_build_no_offload.log").read_text()
    _check(tmp_path, log, 2048)
    with pytest.raises(EngineError):
        _check(tmp_path, log, 4096)


# -- the generated sliding-window model --------------------------------------------------------


def test_the_tiny_sliding_window_model_is_a_gemma2(tmp_path: Path) -> None:
    import gguf

    path = write_tiny_gguf(tmp_path / "swa.gguf", sliding_window=256)
    reader = gguf.GGUFReader(path)
    fields = {name: f.contents() for name, f in reader.fields.items() if not name.startswith("tok")}
    assert fields["general.architecture"] == "gemma2"
    assert fields["gemma2.attention.sliding_window"] == 256
    assert fields["gemma2.block_count"] == TinyModelShape().n_layers
    names = {t.name for t in reader.tensors}
    assert "output.weight" not in names  # tied to the embeddings, as llama.cpp expects
    assert {"blk.7.post_attention_norm.weight", "blk.7.post_ffw_norm.weight"} <= names
    plain = gguf.GGUFReader(write_tiny_gguf(tmp_path / "plain.gguf"))
    assert plain.fields["general.architecture"].contents() == "llama"
    assert "output.weight" in {t.name for t in plain.tensors}
    with pytest.raises(ValueError, match="sliding_window must be >= 1"):
        write_tiny_gguf(tmp_path / "bad.gguf", sliding_window=0)


def _printing_engine(tmp_path: Path, **cfg: object) -> LlamaCppEngine:
    """An engine whose 'server' prints its CUDA_VISIBLE_DEVICES and exits."""
    (tmp_path / "models").mkdir(exist_ok=True)
    (tmp_path / "models" / "m.gguf").write_bytes(b"")
    script = "import os; print('CVD=%r' % os.environ.get('CUDA_VISIBLE_DEVICES'), flush=True)"
    config = LlamaCppConfig(
        command=[sys.executable, "-c", script], model_dir=tmp_path / "models", port="auto", **cfg
    )
    return LlamaCppEngine(config, state_dir=tmp_path / "state", log_dir=tmp_path / "logs")


def test_a_start_runs_on_the_chosen_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """engines.llamacpp.gpus reaches the server as CUDA_VISIBLE_DEVICES, and the probe is told."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    for gpus, seen, indices in (([1, 2], "'1,2'", (1, 2)), ("all", "'3'", None)):
        engine = _printing_engine(tmp_path, gpus=gpus)
        assert engine.gpu_indices() == indices
        engine.start(parse_model_id("llamacpp:m.gguf"), 512)
        deadline = time.monotonic() + 20
        while f"CVD={seen}" not in engine.log_tail() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert f"CVD={seen}" in engine.log_tail()
        engine.stop()
        engine.close()


def test_a_full_state_folder_is_not_reported_as_the_engine_failing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while recording the started process stays an OSError (the runner says the disk
    is full and how to resume) rather than `start_failed: cannot run llama-server`."""
    import errno

    from vramphysics.engines.llamacpp import engine as engine_module

    def full(*_a: object, **_k: object) -> object:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(engine_module, "ManagedProcess", full)
    engine = _printing_engine(tmp_path)
    with pytest.raises(OSError, match="No space") as info:
        engine.start(parse_model_id("llamacpp:m.gguf"), 512)
    assert not isinstance(info.value, EngineError)
    engine.close()
