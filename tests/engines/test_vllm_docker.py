"""The vLLM engine's Docker path at the Docker SDK boundary: a fake client records every call.

No Docker engine runs on our machines, so these tests check what the engine asks of the SDK
(the exact `containers.run` call, stop and remove on every way out) and, with a small HTTP server
standing in for the container's published port, readiness and `/metrics`.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from docker.errors import DockerException, NotFound
from docker.types import DeviceRequest

from vramphysics.engines.vllm import (
    MANAGED_LABEL,
    VllmEngine,
    container_name,
    managed_containers,
    remove_managed_containers,
)
from vramphysics.engines.vllm.config import VllmConfig
from vramphysics.errors import EngineError
from vramphysics.setups import parse_model_id

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "vllm_logs"
TOKEN = "hf_TESTtoken1234567890secret"
MODEL = "Qwen/Qwen2.5-0.5B-Instruct"


class FakeContainer:
    def __init__(
        self,
        name: str,
        labels: dict[str, str],
        *,
        logs: bytes = b"",
        statuses: list[Any] | None = None,
    ) -> None:
        self.name = name
        self.id = hashlib.sha256(name.encode()).hexdigest()
        self.labels = labels
        self.status = "created"
        self.attrs: dict[str, Any] = {"State": {"Pid": 0, "ExitCode": 0}}
        self.calls: list[tuple[str, Any]] = []
        self._logs = logs
        self._statuses = list(statuses or ["running"])

    def reload(self) -> None:
        self.calls.append(("reload", None))
        nxt = self._statuses.pop(0) if len(self._statuses) > 1 else self._statuses[0]
        if isinstance(nxt, BaseException):
            raise nxt
        self.status = nxt
        if nxt == "exited":
            self.attrs["State"]["ExitCode"] = 1

    def logs(self, *, stream: bool, follow: bool) -> Iterator[bytes]:
        assert stream and follow
        data = self._logs
        return iter(
            [data[i : i + 97] for i in range(0, len(data), 97)]
        )  # lines split across chunks

    def stop(self, timeout: int) -> None:
        self.calls.append(("stop", timeout))
        self.status = "exited"

    def remove(self, force: bool = False) -> None:
        self.calls.append(("remove", force))


class FakeContainers:
    def __init__(self, container_logs: bytes = b"", statuses: list[Any] | None = None) -> None:
        self.run_calls: list[dict[str, Any]] = []
        self.existing: dict[str, FakeContainer] = {}
        self.list_calls: list[dict[str, Any]] = []
        self.run_error: BaseException | None = None
        self._logs = container_logs
        self._statuses = statuses

    def get(self, name: str) -> FakeContainer:
        if name not in self.existing:
            raise NotFound(f"No such container: {name}")
        return self.existing[name]

    def run(self, **kwargs: Any) -> FakeContainer:
        self.run_calls.append(kwargs)
        container = FakeContainer(
            kwargs["name"], kwargs["labels"], logs=self._logs, statuses=self._statuses
        )
        self.existing[kwargs["name"]] = container
        if self.run_error is not None:
            raise self.run_error
        return container

    def list(self, *, all: bool, filters: dict[str, Any]) -> list[FakeContainer]:  # noqa: A002
        self.list_calls.append({"all": all, "filters": filters})
        return [c for c in self.existing.values() if c.labels.get(MANAGED_LABEL) == "1"]


class FakeDocker:
    def __init__(self, **kw: Any) -> None:
        self.containers = FakeContainers(**kw)
        self.closed = False

    def close(self) -> None:
        self.closed = True


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A configured HF home with one complete cached model; HF_TOKEN set, no HF_* overrides."""
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    home = tmp_path / "hf"
    snap = home / "hub" / "models--Qwen--Qwen2.5-0.5B-Instruct" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text('{"model_type": "qwen2"}')
    (snap / "model.safetensors").write_bytes(b"x")
    (snap / "tokenizer_config.json").write_text('{"chat_template": "{{ m }}"}')
    return home


def _engine(tmp_path: Path, client: FakeDocker, **kw: Any) -> VllmEngine:
    settings: dict[str, Any] = {
        "mode": "docker",
        "port": _port(),
        "hf_cache": tmp_path / "hf",
        "container_name": "vllm-{model}",
        "cpu_kvcache_space_gib": [3],
        "start_timeout_s": 30,
        "stop_timeout_s": 7,
        **kw,
    }
    cfg = VllmConfig.model_validate(settings)
    return VllmEngine(
        cfg,
        state_dir=tmp_path / "state",
        log_dir=tmp_path / "logs" / "run-42",
        docker_client_factory=lambda: client,
    )


def test_the_exact_containers_run_call(tmp_path: Path, hf_home: Path) -> None:
    client = FakeDocker()
    engine = _engine(tmp_path, client)
    spec = parse_model_id(f"vl_{MODEL}#img_lim=4#vid_lim=2")
    engine.start(spec, 4096)
    (call,) = client.containers.run_calls
    assert call == {
        "image": "vllm/vllm-openai:latest",
        "command": [
            "--model",
            MODEL,
            "--max-model-len",
            "4096",
            "--gpu-memory-utilization",
            "0.9",
            "--limit-mm-per-prompt",
            '{"image": 4, "video": 2}',
            "--host",
            "0.0.0.0",
            "--port",
            "8000",
        ],
        "name": "vllm-Qwen-Qwen2.5-0.5B-Instruct",
        "detach": True,
        "environment": {"VLLM_CPU_KVCACHE_SPACE": "3", "HF_TOKEN": TOKEN},
        "ports": {"8000/tcp": ("127.0.0.1", engine.cfg.port)},
        "volumes": {str(hf_home): {"bind": "/root/.cache/huggingface", "mode": "rw"}},
        "ipc_mode": "host",
        "device_requests": [DeviceRequest(count=-1, capabilities=[["gpu"]])],
        "labels": {
            "vramphysics.managed": "1",
            "vramphysics.run": "run-42",
            "vramphysics.model": spec.raw,
            "vramphysics.launcher_pid": call["labels"]["vramphysics.launcher_pid"],
        },
    }
    container = client.containers.existing[call["name"]]
    engine.close()
    assert ("stop", 7) in container.calls and ("remove", True) in container.calls
    assert client.closed
    settings = json.dumps(engine.settings())
    assert TOKEN not in settings


def test_chosen_gpus_a_local_folder_and_hf_hub_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hubcache"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    folder = tmp_path / "models" / "my.model+v1"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"x")
    client = FakeDocker()
    engine = _engine(
        tmp_path, client, gpus=[0, 2], model_dir=tmp_path / "models", container_name="bench"
    )
    with engine:
        engine.start(parse_model_id("vl_my.model+v1"), 2048)
    (call,) = client.containers.run_calls
    assert call["device_requests"] == [DeviceRequest(device_ids=["0", "2"], capabilities=[["gpu"]])]
    assert call["command"][:2] == ["--model", "/models/my.model-v1"]
    assert call["volumes"] == {
        str(tmp_path / "hubcache"): {"bind": "/root/.cache/huggingface/hub", "mode": "rw"},
        str(folder.resolve()): {"bind": "/models/my.model-v1", "mode": "ro"},
    }
    assert call["name"] == "bench"
    assert "HF_TOKEN" not in call["environment"]
    # The NVIDIA runtime also reads this variable (CUDA images set it to `all`); inside the
    # container the GPUs are renumbered from 0, so CUDA_VISIBLE_DEVICES must not be set.
    assert call["environment"]["NVIDIA_VISIBLE_DEVICES"] == "0,2"
    assert "CUDA_VISIBLE_DEVICES" not in call["environment"]


def test_no_gpus_for_a_container(tmp_path: Path, hf_home: Path) -> None:
    client = FakeDocker()
    with _engine(tmp_path, client, gpus="none") as engine:
        engine.start(parse_model_id(f"vl_{MODEL}"), 1024)
    (call,) = client.containers.run_calls
    assert call["device_requests"] == []
    assert call["environment"]["NVIDIA_VISIBLE_DEVICES"] == "void"


def test_a_leftover_container_of_ours_with_that_name_is_removed_first(
    tmp_path: Path, hf_home: Path
) -> None:
    client = FakeDocker()
    old = FakeContainer("vllm-Qwen-Qwen2.5-0.5B-Instruct", {MANAGED_LABEL: "1"})
    client.containers.existing[old.name] = old
    with _engine(tmp_path, client) as engine:
        engine.start(parse_model_id(f"vl_{MODEL}"), 1024)
        assert old.calls == [("remove", True)]
        assert len(client.containers.run_calls) == 1


def test_a_container_we_did_not_start_is_never_removed(tmp_path: Path, hf_home: Path) -> None:
    """Someone's own container with the name: the start is refused, naming it; it is untouched."""
    client = FakeDocker()
    theirs = FakeContainer("vllm-Qwen-Qwen2.5-0.5B-Instruct", {"com.example.owner": "alice"})
    client.containers.existing[theirs.name] = theirs
    engine = _engine(tmp_path, client)
    with pytest.raises(EngineError) as err:
        engine.start(parse_model_id(f"vl_{MODEL}"), 1024)
    engine.stop()
    engine.close()
    assert err.value.kind == "start_failed"
    message = str(err.value)
    assert "'vllm-Qwen-Qwen2.5-0.5B-Instruct'" in message and theirs.id[:12] in message
    assert "engines.vllm.container_name" in message
    assert theirs.calls == []  # neither stopped nor removed
    assert client.containers.run_calls == []
    assert client.containers.existing["vllm-Qwen-Qwen2.5-0.5B-Instruct"] is theirs


def test_each_model_gets_its_own_default_container_name(tmp_path: Path, hf_home: Path) -> None:
    default = VllmConfig().container_name
    a = container_name(default, parse_model_id(f"vl_{MODEL}"))
    b = container_name(default, parse_model_id("vl_meta-llama/Llama-3.1-8B-Instruct"))
    assert a == "vram-physics-vllm-Qwen-Qwen2.5-0.5B-Instruct"
    assert b == "vram-physics-vllm-meta-llama-Llama-3.1-8B-Instruct"
    client = FakeDocker()
    cfg = VllmConfig(mode="docker", hf_cache=hf_home)
    with VllmEngine(
        cfg, state_dir=tmp_path, log_dir=tmp_path / "logs", docker_client_factory=lambda: client
    ) as engine:
        engine.start(parse_model_id(f"vl_{MODEL}"), 1024)
    assert client.containers.run_calls[0]["name"] == a


def test_a_failed_start_is_classified_stopped_removed_and_redacted(
    tmp_path: Path, hf_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log_text = (
        f"(APIServer pid=1) INFO 01-01 00:00:00 [api_utils.py:286] token seen: {TOKEN}\n".encode()
        + (FIXTURES / "fail_v1_kv_too_small_estimate.log").read_bytes()
    )
    client = FakeDocker(container_logs=log_text, statuses=["running", "exited"])
    caplog.set_level(logging.DEBUG)
    with _engine(tmp_path, client) as engine:
        engine.start(parse_model_id(f"vl_{MODEL}"), 221000)
        log_path = engine._log_path
        with pytest.raises(EngineError) as err:
            engine.wait_ready()
        container = client.containers.existing["vllm-Qwen-Qwen2.5-0.5B-Instruct"]
        assert ("stop", 7) in container.calls and ("remove", True) in container.calls
    assert err.value.kind == "kv_too_small" and err.value.max_context == 122080
    assert log_path is not None
    written = log_path.read_text()
    assert "estimated maximum model length is 122080" in written
    assert TOKEN not in written and "token seen: ***" in written
    for text in (str(err.value), err.value.message, err.value.log_tail, caplog.text):
        assert TOKEN not in text


def test_ctrl_c_while_waiting_stops_and_removes_the_container(
    tmp_path: Path, hf_home: Path
) -> None:
    client = FakeDocker(statuses=["running", KeyboardInterrupt()])
    engine = _engine(tmp_path, client)
    engine.start(parse_model_id(f"vl_{MODEL}"), 1024)
    container = client.containers.existing["vllm-Qwen-Qwen2.5-0.5B-Instruct"]
    with pytest.raises(KeyboardInterrupt):
        engine.wait_ready()
    assert ("stop", 7) in container.calls and ("remove", True) in container.calls
    engine.close()


def test_ctrl_c_inside_docker_run_still_removes_the_container(
    tmp_path: Path, hf_home: Path
) -> None:
    client = FakeDocker()
    client.containers.run_error = KeyboardInterrupt()
    engine = _engine(tmp_path, client)
    with pytest.raises(KeyboardInterrupt):
        engine.start(parse_model_id(f"vl_{MODEL}"), 1024)
    engine.stop()
    container = client.containers.existing["vllm-Qwen-Qwen2.5-0.5B-Instruct"]
    assert ("remove", True) in container.calls
    engine.close()


def test_no_docker_engine_is_a_start_failure(tmp_path: Path, hf_home: Path) -> None:
    def no_daemon() -> FakeDocker:
        raise DockerException(f"Error while fetching server API version (token {TOKEN})")

    cfg = VllmConfig(mode="docker", hf_cache=hf_home)
    with VllmEngine(
        cfg, state_dir=tmp_path, log_dir=tmp_path / "logs", docker_client_factory=no_daemon
    ) as engine:
        with pytest.raises(EngineError) as err:
            engine.start(parse_model_id(f"vl_{MODEL}"), 1024)
    assert err.value.kind == "start_failed" and TOKEN not in str(err.value)


def test_leftover_containers_are_found_by_label(tmp_path: Path) -> None:
    client = FakeDocker()
    ours = FakeContainer("vllm-a", {MANAGED_LABEL: "1", "vramphysics.run": "r1"})
    theirs = FakeContainer("postgres", {})
    client.containers.existing.update({"vllm-a": ours, "postgres": theirs})
    assert managed_containers(client, "r1") == [ours]
    assert client.containers.list_calls[-1] == {
        "all": True,
        "filters": {"label": ["vramphysics.managed=1", "vramphysics.run=r1"]},
    }
    assert remove_managed_containers(client) == ["vllm-a"]
    assert ours.calls == [("remove", True)] and theirs.calls == []


class _FakeVllmHandler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[str, bytes]] = {}

    def do_GET(self) -> None:  # noqa: N802
        content_type, body = self.routes.get(self.path, ("text/plain", b""))
        self.send_response(200 if self.path in self.routes else 404)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_ready_container_reports_memory_from_metrics(tmp_path: Path, hf_home: Path) -> None:
    """The container's published port answers as vLLM does; /metrics gives the KV pool."""
    models = {"data": [{"id": MODEL, "max_model_len": 2048}]}
    _FakeVllmHandler.routes = {
        "/health": ("text/plain", b""),
        "/v1/models": ("application/json", json.dumps(models).encode()),
        "/metrics": ("text/plain", (FIXTURES / "metrics_cpu_local.txt").read_bytes()),
    }
    log_text = (FIXTURES / "cpu_vllm_cpu_local.log").read_bytes()
    client = FakeDocker(container_logs=log_text)
    port = _port()  # free before the start (checked), published once the container runs
    server: http.server.ThreadingHTTPServer | None = None
    try:
        with _engine(tmp_path, client, port=port) as engine:
            engine.start(parse_model_id(f"vl_{MODEL}"), 2048)
            server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _FakeVllmHandler)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            client.containers.existing["vllm-Qwen-Qwen2.5-0.5B-Instruct"].attrs["State"]["Pid"] = (
                4242
            )
            engine.wait_ready()
            assert engine.root_pid() == 4242
            mem = engine.memory_report()
            assert mem is not None
            assert (mem.source, mem.calibration) == ("vllm-metrics", "engine-kv")
            assert (mem.kv_pool_bytes, mem.kv_tokens) == (1073741824, 524288)
            assert mem.kv_bytes_per_token == 2048
            engine.check_alive()
    finally:
        if server is not None:
            server.shutdown()
