"""One lifecycle, every registered engine that can run here: start -> ready -> complete ->
memory report -> stop, with no process left behind.

The test is parametrized over the registry, so a new engine is collected automatically; what it
cannot know is how to make a model for the engine, which is the engine's `Harness` below. An
engine without one is reported as skipped, with that reason. The toy engine of
docs/adding-an-engine.md runs it too, registered as a plugin.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from vramphysics.config import config_model
from vramphysics.demo_models import write_tiny_gguf
from vramphysics.engines import create_engine, registry
from vramphysics.engines.base import Engine, GenRequest
from vramphysics.errors import EngineError
from vramphysics.setups import parse_model_id

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "tests" / "plugins"
OLLAMA_DOUBLE = ROOT / "tests" / "doubles" / "ollama_server.py"
HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
HAS_VLLM = importlib.util.find_spec("vllm") is not None


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Case:
    """An engine's config section and a model ID it can serve, made in `tmp`."""

    section: dict[str, object]
    model_id: str
    served_name: str  # the name the running server knows the model by (`attach`)
    download_first: bool = False  # the engine holds its models in a store (Ollama)


def _llamacpp(tmp: Path) -> Case:
    write_tiny_gguf(tmp / "models" / "tiny.gguf")
    section = {"port": _port(), "model_dir": str(tmp / "models"), "start_timeout_s": 120}
    return Case(section, "llamacpp:tiny.gguf", "tiny")


def _ollama(tmp: Path) -> Case:
    write_tiny_gguf(tmp / "library" / "tiny" / "latest.gguf")
    command = [sys.executable, str(OLLAMA_DOUBLE), "--store", str(tmp / "store")]
    command += ["--library", str(tmp / "library")]
    section = {"port": _port(), "start_server": True, "command": command, "start_timeout_s": 120}
    return Case(section, "ol_tiny", "tiny", download_first=True)


def _vllm(tmp: Path) -> Case:
    from vramphysics.demo_models import write_tiny_hf

    write_tiny_hf(tmp / "models" / "tiny-hf")
    section = {
        "port": _port(),
        "model_dir": str(tmp / "models"),
        "start_timeout_s": 400,
        "cpu_kvcache_space_gib": [1],
        "env": {"HF_HUB_OFFLINE": "1"},
    }
    return Case(section, "vl_tiny-hf", "tiny-hf")


def _toy(tmp: Path) -> Case:
    return Case({"base_bytes": 2**20, "cost_per_token_bytes": 1024}, "toy:m1", "m1")


@dataclass(frozen=True)
class Harness:
    make: Callable[[Path], Case]
    missing: str | None = None  # why it cannot run here (skipped with this reason)
    marks: tuple[pytest.MarkDecorator, ...] = ()


HARNESSES = {
    "llamacpp": Harness(_llamacpp, None if HAS_LLAMA_CPP else "llama-cpp-python not installed"),
    "ollama": Harness(_ollama, None if HAS_LLAMA_CPP else "the double serves with llama.cpp"),
    "vllm": Harness(
        _vllm, None if HAS_VLLM else "vLLM's CPU build not installed", (pytest.mark.vllm,)
    ),
    "toy": Harness(_toy),
}


def _params() -> list[object]:
    names = [*registry.names(), "toy"]  # the toy plugin: registered by the `engine` fixture
    return [pytest.param(n, marks=HARNESSES[n].marks if n in HARNESSES else ()) for n in names]


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@pytest.fixture
def plugin_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(PLUGINS))
    path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(PLUGINS), path) if p))


def _engine(name: str, tmp: Path, *, state: str = "state") -> tuple[Engine, Case]:
    harness = HARNESSES.get(name)
    if harness is None:
        pytest.skip(f"engine {name!r} has no harness in tests/engines/test_contract.py: add one")
    if harness.missing is not None:
        pytest.skip(harness.missing)
    case = harness.make(tmp)
    cfg = config_model().model_validate({"engines": {name: case.section}})
    folder = tmp / state
    return create_engine(name, cfg, state_dir=folder, log_dir=folder / "logs"), case


@pytest.mark.slow
@pytest.mark.parametrize("name", _params())
def test_lifecycle(name: str, tmp_path: Path, plugin_path: None) -> None:
    engine, case = _engine(name, tmp_path)
    spec = parse_model_id(case.model_id)
    pids: list[psutil.Process] = []
    try:
        engine.validate(spec)
        if case.download_first:
            engine.download(spec)
        assert engine.check_available(spec).present
        engine.start(spec, 512)
        engine.wait_ready()
        root = engine.root_pid()
        assert root is not None
        pids = _tree(root)
        assert pids, "the engine's process tree is gone after ready"
        done = engine.complete("Hello there", 4)
        assert done.usage.completion_tokens is not None and done.usage.completion_tokens >= 1
        assert done.sent_s <= done.end_s  # a random tiny model may stream no visible text
        assert done.ttft_ms is None or 0 <= done.ttft_ms <= (done.end_s - done.sent_s) * 1e3
        engine.check_alive()
        assert engine.memory_report() is not None
    finally:
        engine.stop()
        engine.close()
    gone, alive = psutil.wait_procs(pids, timeout=15)
    assert not alive, f"left behind: {[p.pid for p in alive]}"


PROMPT = "The memory of a language model grows with its context because every token keeps"


def _check_generate(engine: Engine, n_out: int) -> None:
    """Exactly n_out tokens by the engine's count; content events in order, the first = TTFT's;
    count_prompt_tokens == the prompt tokens the engine reports for a generate of that text."""
    done = engine.generate(GenRequest(PROMPT, n_out))
    assert done.usage.completion_tokens == n_out, done.usage
    times = done.content_times_s
    assert times, "no content event"
    assert list(times) == sorted(times)
    assert times[0] == done.first_text_s and times[-1] == done.last_text_s
    assert done.sent_s <= times[0] <= times[-1] <= done.end_s
    assert engine.count_prompt_tokens(PROMPT) == done.usage.prompt_tokens


@pytest.mark.slow
@pytest.mark.parametrize("name", _params())
def test_benchmark_requests_and_attach(name: str, tmp_path: Path, plugin_path: None) -> None:
    """generate / count_prompt_tokens / max_concurrency on a start of ours, then the same through
    `attach` to that server (started by the test), whose close leaves it running; attach to a
    dead port is `unreachable`, a model it does not serve `model_not_found`."""
    engine, case = _engine(name, tmp_path)
    spec = parse_model_id(case.model_id)
    try:
        if case.download_first:
            engine.download(spec)
        engine.start(spec, 512)
        engine.wait_ready()
        _check_generate(engine, 8)
        limit, why = engine.max_concurrency()
        assert limit is None or (limit >= 1 and why)
        url = str(getattr(engine, "base_url"))  # noqa: B009 (not on the interface)
        root = engine.root_pid()
        assert root is not None
        guest, _ = _engine(name, tmp_path, state="guest")
        try:
            guest.attach(url, case.served_name)
            assert guest.root_pid() is None
            assert guest.version()
            _check_generate(guest, 4)
            with pytest.raises(EngineError) as wrong:
                guest.attach(url, "no-such-model")
            assert wrong.value.kind == "model_not_found"
        finally:
            guest.stop()
            guest.close()
        assert psutil.pid_exists(root) and psutil.Process(root).status() != "zombie"
        _check_generate(engine, 2)  # still serving after the guest closed
        dead, _ = _engine(name, tmp_path, state="dead")
        with pytest.raises(EngineError) as unreachable:
            dead.attach(f"http://127.0.0.1:{_port()}", case.served_name)
        assert unreachable.value.kind == "unreachable"
        dead.close()
    finally:
        engine.stop()
        engine.close()
