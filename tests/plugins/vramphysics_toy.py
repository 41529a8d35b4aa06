"""A toy engine: a real child process that holds `base + ctx x cost` bytes of memory.

It is the worked example of docs/adding-an-engine.md and the proof that an engine registered
from outside the package works end to end (setups, calibration, plan, guardrail).
"""

from __future__ import annotations

import socket
import sys
import time
from typing import Any

from pydantic import Field

from vramphysics.allocate import Plan
from vramphysics.config_base import EngineConfig
from vramphysics.engines.base import (
    Availability,
    Completion,
    Engine,
    GenRequest,
    MemoryComponents,
    Usage,
)
from vramphysics.engines.process import ManagedProcess
from vramphysics.engines.registry import Advice, AdviceRequest, EngineInfo
from vramphysics.errors import EngineError
from vramphysics.setups import ModelSpec
from vramphysics.theory import Theory

# The "server": allocate base + ctx * cost bytes, touch every page, listen on a loopback port,
# say so, then tell every caller the model it serves (one line: "toy MODEL").
_SERVER = """
import socket, sys
base, cost, ctx = (int(a) for a in sys.argv[1:4])
model = sys.argv[4]
block = bytearray(base + ctx * cost)
for i in range(0, len(block), 4096):
    block[i] = 1
server = socket.create_server(("127.0.0.1", 0))
print("ready", server.getsockname()[1], flush=True)
while True:
    conn, _ = server.accept()
    with conn:
        conn.sendall(f"toy {model}\\n".encode())
"""


class ToyConfig(EngineConfig):
    """`engines.toy` in config.yaml."""

    base_bytes: int = Field(8 * 2**20, ge=0)
    cost_per_token_bytes: int = Field(16 * 2**10, ge=1)


class ToyEngine(Engine):
    name = "toy"

    def __init__(self, cfg: ToyConfig, *, state_dir: Any, log_dir: Any) -> None:
        super().__init__(state_dir=state_dir, log_dir=log_dir)
        self.cfg = cfg
        self._proc: ManagedProcess | None = None
        self._ctx = 0
        self.base_url: str | None = None  # where the toy server answers (ours or attached)

    def version(self) -> str:
        return "toy 0.1"

    def check_available(self, spec: ModelSpec) -> Availability:
        present = not spec.name.startswith("missing")
        return Availability(present, "toy models exist unless named missing*")

    def theory(self, spec: ModelSpec) -> Theory | None:
        return Theory(
            source="toy",
            arch="toy",
            n_layers=1,
            n_kv_heads=None,
            k_head_dim=None,
            v_head_dim=None,
            kv_dtype="f16",
            kv_bytes_per_token=float(self.cfg.cost_per_token_bytes),
            weights_bytes=self.cfg.base_bytes,
        )

    def settings(self) -> dict[str, Any]:
        return {"cost_per_token_bytes": self.cfg.cost_per_token_bytes}

    def start(self, spec: ModelSpec, ctx: int) -> None:
        self.stop()
        self._ctx = ctx
        self.base_url = None
        argv = [sys.executable, "-c", _SERVER, str(self.cfg.base_bytes)]
        argv += [str(self.cfg.cost_per_token_bytes), str(ctx), spec.name]
        self._proc = ManagedProcess(
            argv,
            log_path=self.log_dir / f"toy-{spec.name}-ctx{ctx}.log",
            label=f"toy {spec.name}",
            state_dir=self.state_dir,
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.cfg.start_timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            for line in self.log_tail(5).splitlines():
                if line.startswith("ready "):
                    self.base_url = f"http://127.0.0.1:{line.split()[1]}"
                    return
            time.sleep(0.05)
        raise EngineError("timeout", "the toy server never said ready")

    def complete(self, prompt: str, max_tokens: int) -> Completion:
        return self.generate(GenRequest(prompt, max_tokens))

    def generate(self, request: GenRequest) -> Completion:
        """A token a millisecond, each a content event; exactly `output_tokens` of them."""
        self.check_alive()
        if self.base_url is None:
            raise RuntimeError("toy engine not ready")
        t0 = time.monotonic()
        n = request.output_tokens
        steps = tuple(t0 + 0.001 * (i + 1) for i in range(n))
        usage = Usage(self.count_prompt_tokens(request.prompt), n, "engine-usage")
        return Completion(
            t0,
            steps[0],
            steps[-1],
            steps[-1],
            usage,
            n,
            content_times_s=steps,
            finish_reason="length",
        )

    def count_prompt_tokens(self, text: str) -> int:
        """The toy's tokenizer: one token a word."""
        return len(text.split())

    def max_concurrency(self) -> tuple[int | None, str]:
        return 1, "the toy server answers one caller at a time"

    def attach(self, url: str, model: str) -> None:
        """Ask the toy server at `url` which model it serves."""
        self.stop()
        parsed = url.rstrip("/").rsplit(":", 1)
        try:
            with socket.create_connection(("127.0.0.1", int(parsed[1])), timeout=5) as conn:
                served = conn.makefile().readline().split()[-1]
        except OSError as exc:
            raise EngineError("unreachable", f"nothing answers at {url} ({exc.strerror})") from exc
        if served != model:
            raise EngineError(
                "model_not_found", f"the toy server at {url} serves {served!r}, not {model!r}"
            )
        self.base_url = url

    def root_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def memory_report(self) -> MemoryComponents | None:
        kv = self._ctx * self.cfg.cost_per_token_bytes
        return MemoryComponents("toy", kv_pool_bytes=kv, kv_tokens=self._ctx, device_resident=False)

    def log_tail(self, n_lines: int = 40) -> str:
        return self._proc.log_tail(n_lines) if self._proc is not None else ""

    def check_alive(self) -> None:
        if self._proc is not None and not self._proc.alive():
            raise EngineError("engine_crashed", "the toy server exited", log_tail=self.log_tail())

    def stop(self) -> None:
        if self._proc is not None:
            self.base_url = None
            self._proc.stop(self.cfg.stop_timeout_s)
            self._proc = None


def _advice(plan: Plan, request: AdviceRequest) -> Advice:
    if not plan.fits or plan.ctx is None:
        return Advice()
    argv = ["toy-serve", request.model, "--ctx", str(plan.ctx)]
    return Advice(lines=(("toy", " ".join(argv)),), commands={"command": argv})


ENGINE = EngineInfo(
    name="toy",
    label="Toy",
    prefixes=("toy:",),
    config_model=ToyConfig,
    engine_module=__name__,
    engine_class_name="ToyEngine",
    memory_kind="on_demand",
    probes=("process",),
    advice=_advice,
)
