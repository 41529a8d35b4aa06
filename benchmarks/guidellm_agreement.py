"""Our TTFT p50 and TPOT p50 against guidellm's, on the same llama.cpp server and workload.

Run: `make bench-guidellm GUIDELLM=/path/to/guidellm` (guidellm 0.8.1 in its own virtualenv: it
is not a dependency of vram-physics). Starts llama-cpp-python's server on the demo GGUF, then for
each prompt length runs guidellm (synchronous, W warm-up requests dropped, R measured, exactly
O output tokens via `min_tokens`) and `python -m vramphysics bench --url` with the same W, R, O,
and prints both p50s and their relative difference, beside what llama.cpp itself logged for
the same requests (median prompt eval time, the floor under TTFT; median decode time per token,
the floor under TPOT); exit 1 when one differs by more than 5 %. `--pin` runs the server on
core 0 and the clients on core 1 (`taskset`).

Both send `temperature: 0` (greedy decoding: sampling costs the server time per token, so a
sampling client and a greedy one do not time the same decode). guidellm names: its
`time_to_first_token_ms` is our TTFT; its `inter_token_latency_ms` is our
TPOT (its `time_per_output_token_ms` includes TTFT and is not compared). Prompts for guidellm are
built with our prompt maker (the server's own token count, a unique prefix each), so both tools
send prompts of exactly P tokens. Run it on a quiet machine: on 2 busy cores the streamed chunks
arrive bunched and the TTFT/TPOT split of either tool is noise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from vramphysics.bench.prompts import make_prompts

BOUND = 0.05
WARMUP = 2
# llama.cpp's own timing of each request, in the server's log
_PROMPT_EVAL = re.compile(r"prompt eval time =\s*([\d.]+) ms")
_EVAL = re.compile(r"\beval time =\s*[\d.]+ ms /\s*\d+ runs\s*\(\s*([\d.]+) ms per token")


PIN = {"on": False}  # set once from --pin, before anything starts


def _pin(core: int) -> list[str]:
    """With --pin, `taskset -c CORE` (where it exists and the machine has a second core): the
    server on one core, the clients on another. On 2 cores that starves the server's own
    streaming thread (chunks arrive bunched), so it is off by default."""
    if PIN["on"] and shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(core)]
    return []


def _engine_figures(log: Path, n: int) -> tuple[float, float]:
    """The median over the last `n` requests of llama.cpp's own prompt eval time (ms) and decode
    time per token (ms): what the engine itself says the requests took."""
    text = log.read_text(errors="replace")
    prompt = [float(x) for x in _PROMPT_EVAL.findall(text)][-n:]
    decode = [float(x) for x in _EVAL.findall(text)][-n:]
    return statistics.median(prompt), statistics.median(decode)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(model: Path, port: int, ctx: int, log: Path) -> subprocess.Popen[bytes]:
    argv = [*_pin(0), sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host",
            "127.0.0.1", "--port", str(port), "--n_ctx", str(ctx)]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: see {log}")
        time.sleep(0.1)
    proc.terminate()
    raise SystemExit("the server did not answer within 60 s")


def _count(url: str):  # type: ignore[no-untyped-def]
    def count(text: str) -> int:
        r = httpx.post(f"{url}/extras/tokenize", json={"input": text}, timeout=60)
        r.raise_for_status()
        return len(r.json()["tokens"])

    return count


def _guidellm(args: argparse.Namespace, url: str, p: int, work: Path) -> tuple[float, float]:
    """guidellm's TTFT p50 and ITL (= our TPOT) p50, in ms."""
    cell = f"gl-p{p}"
    prompts = make_prompts(cell, p, _count(url))
    data = work / f"{cell}.jsonl"
    with data.open("w") as f:
        for i in range(WARMUP + args.repetitions + 2):
            row = {"prompt": prompts.prompt(i), "prompt_tokens_count": prompts.tokens,
                   "output_tokens_count": args.output_tokens}  # fmt: skip
            f.write(json.dumps(row) + "\n")
    out = work / f"{cell}.json"
    o = args.output_tokens
    backend = {"kind": "openai_http", "target": url, "model": str(args.model),
               "request_format": "/v1/completions", "validate_backend": False,
               "extras": {"body": {"min_tokens": o, "max_tokens": o, "temperature": 0}}}  # fmt: skip
    # guidellm 0.8.1 drops k+1 requests for a warm-up value of k (seen), so k = WARMUP - 1
    profile = {"kind": "synchronous", "warmup": {"mode": "requests", "value": WARMUP - 1}}
    argv = [*_pin(1), args.guidellm, "run", "--backend", json.dumps(backend),
            "--tokenizer", f"kind=huggingface_auto,model={args.hf}",
            "--data", f"kind=json_file,path={data}", "--profile", json.dumps(profile),
            "--constraint", f"kind=max_requests,count={args.repetitions + WARMUP}",
            "--output", f"kind=json,path={out}", "--disable-console-interactive"]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"guidellm failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    metrics = json.loads(out.read_text())["benchmarks"][0]["metrics"]
    ttft = metrics["time_to_first_token_ms"]["successful"]
    if ttft["count"] < args.repetitions // 2:
        raise SystemExit(f"guidellm measured {ttft['count']} requests of {args.repetitions}")
    if ttft["count"] != args.repetitions:  # its warm-up drops a varying number (seen: 2 to 4)
        print(f"(guidellm measured {ttft['count']} requests of {args.repetitions})")
    itl = metrics["inter_token_latency_ms"]["successful"]
    return float(ttft["percentiles"]["p50"]), float(itl["percentiles"]["p50"])


def _ours(args: argparse.Namespace, url: str, p: int, work: Path) -> tuple[float, float]:
    cfg = work / "config.yaml"
    paths = {k: str(work / k) for k in ("calibration_dir", "report_dir", "state_dir")}
    cfg.write_text(json.dumps({"bench": {"warmup_requests": WARMUP}, "paths": paths}))
    argv = [*_pin(1), sys.executable, "-m", "vramphysics", "bench", "--url", url, "--engine", "llamacpp",
            "--model", str(args.model), "--config", str(cfg), "--ctx", str(args.ctx),
            "--prompt-tokens", str(p), "--output-tokens", str(args.output_tokens),
            "--repetitions", str(args.repetitions), "--json"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"vramphysics bench failed:\n{done.stderr[-2000:]}")
    (cell,) = json.loads(done.stdout)["cells"]
    return float(cell["ttft_ms"]["p50"]), float(cell["tpot_ms"]["p50"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--guidellm", default="guidellm", help="the guidellm executable")
    ap.add_argument("--model", type=Path, default=Path("models/tiny-llama.gguf"))
    ap.add_argument("--hf", type=Path, default=Path("models/tiny-llama-hf"),
                    help="an HF folder with the model's tokenizer (guidellm loads one)")  # fmt: skip
    ap.add_argument("--prompt-tokens", type=int, nargs="+", default=[128, 1024])
    ap.add_argument("--output-tokens", type=int, default=32)
    ap.add_argument("--repetitions", type=int, default=20)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--pin", action="store_true", help="server on core 0, clients on core 1")
    args = ap.parse_args()
    PIN["on"] = args.pin
    port = _port()
    url = f"http://127.0.0.1:{port}"
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = _start_server(args.model, port, args.ctx, work / "server.log")
        try:
            print(f"{'prompt':>6} {'figure':>9} {'guidellm':>10} {'ours':>10} {'diff':>7} "
                  f"{'engine(g)':>10} {'engine(o)':>10}")  # fmt: skip
            log = work / "server.log"
            for p in args.prompt_tokens:
                theirs = _guidellm(args, url, p, work)
                eng_g = _engine_figures(log, args.repetitions)
                ours = _ours(args, url, p, work)
                eng_o = _engine_figures(log, args.repetitions)
                for i, name in enumerate(("TTFT p50", "TPOT p50")):
                    g, o = theirs[i], ours[i]
                    diff = o / g - 1
                    worst = max(worst, abs(diff))
                    print(f"{p:>6} {name:>9} {g:>8.2f}ms {o:>8.2f}ms {diff:>+7.1%} "
                          f"{eng_g[i]:>8.2f}ms {eng_o[i]:>8.2f}ms")  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"largest difference {worst:.1%} (bound {BOUND:.0%})")
    return 0 if worst <= BOUND else 1


if __name__ == "__main__":
    raise SystemExit(main())
