"""Install llama-cpp-python for `make demo` / `make test`: with CUDA where a CUDA toolkit is found.

    python scripts/llama_cpp_build.py -- PIP COMMAND...   e.g. -- .venv/bin/pip install -v llama-cpp-python
    python scripts/llama_cpp_build.py --plan                 says which build would be made

A CUDA toolkit is `nvcc` on PATH, else in `$CUDA_HOME/bin` (or `$CUDA_PATH/bin`), else in
`/usr/local/cuda/bin`. With a toolkit and an NVIDIA driver (`/proc/driver/nvidia/version`, or
`nvidia-smi` on PATH) the build gets `CMAKE_ARGS=-DGGML_CUDA=on` (and `CUDACXX` pointing at that
nvcc); a toolkit without a driver (a build box, a container without the GPU) gets the CPU build,
which its llama.cpp could not load without the driver's libcuda anyway. A `CMAKE_ARGS` already set is used as it is (`CMAKE_ARGS=-DGGML_CUDA=off` forces a
CPU build). One line says which build is made; the compile's progress lines are shown as they
come (pip runs with -v, everything else it prints is held back), and its last lines when it fails.

Standard library only: it runs before the project is installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CUDA_ROOT = Path("/usr/local/cuda")
DEFAULT_DRIVER_FILE = Path("/proc/driver/nvidia/version")
# cmake/make "[ 42%] Building C object ...", ninja "[17/180] Building CXX object ..."
_PROGRESS = re.compile(r"^\s*\[\s*\d+(?:%|/\d+)\]")
_MAX_PROGRESS = 160
# pip's own top-level lines worth showing (not the build backend's indented chatter)
_PIP_LINE = re.compile(
    r"^(Collecting|Building wheel|Created wheel|Installing collected|Successfully|ERROR|WARNING)"
)
_ALREADY = re.compile(r"^Requirement already satisfied: llama[-_]cpp[-_]python\b", re.IGNORECASE)
_TAIL_LINES = 80


@dataclass(frozen=True)
class BuildPlan:
    """What to add to pip's environment, and the one line that says so."""

    cuda: bool
    message: str
    env: Mapping[str, str] = field(default_factory=dict)


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_nvcc(env: Mapping[str, str], cuda_root: Path = DEFAULT_CUDA_ROOT) -> Path | None:
    """nvcc on PATH, else under $CUDA_HOME / $CUDA_PATH, else under `cuda_root`."""
    on_path = shutil.which("nvcc", path=env.get("PATH", ""))
    if on_path:
        return Path(on_path)
    roots = [Path(env[k]) for k in ("CUDA_HOME", "CUDA_PATH") if env.get(k)]
    for root in [*roots, cuda_root]:
        if _executable(root / "bin" / "nvcc"):
            return root / "bin" / "nvcc"
    return None


def find_driver(env: Mapping[str, str], driver_file: Path = DEFAULT_DRIVER_FILE) -> str | None:
    """Where an NVIDIA driver shows: its /proc file, or nvidia-smi on PATH."""
    if driver_file.is_file():
        return str(driver_file)
    return shutil.which("nvidia-smi", path=env.get("PATH", ""))


def plan_build(
    env: Mapping[str, str],
    cuda_root: Path = DEFAULT_CUDA_ROOT,
    driver_file: Path = DEFAULT_DRIVER_FILE,
) -> BuildPlan:
    """With CUDA when a toolkit and a driver are found; a CMAKE_ARGS the user set wins."""
    user_args = env.get("CMAKE_ARGS", "").strip()
    if user_args:
        cuda = bool(re.search(r"-DGGML_CUDA=(on|1|true|yes)\b", user_args, re.IGNORECASE))
        return BuildPlan(cuda, f"building llama-cpp-python with CMAKE_ARGS={user_args} (yours)")
    nvcc = find_nvcc(env, cuda_root)
    if nvcc is not None and find_driver(env, driver_file) is None:
        return BuildPlan(
            False,
            f"building llama-cpp-python without CUDA: nvcc at {nvcc} but no NVIDIA driver "
            f"({driver_file} missing, no nvidia-smi on PATH)",
        )
    if nvcc is not None:
        return BuildPlan(
            True,
            f"building llama-cpp-python with CUDA (nvcc at {nvcc}); this takes several minutes",
            {"CMAKE_ARGS": "-DGGML_CUDA=on", "CUDACXX": str(nvcc)},
        )
    homes = [k for k in ("CUDA_HOME", "CUDA_PATH") if env.get(k)]
    where = f"; ${homes[0]} has no bin/nvcc" if homes else ""
    return BuildPlan(
        False,
        "building llama-cpp-python without CUDA: no CUDA toolkit found (nvcc not on PATH, "
        f"in $CUDA_HOME/bin or {cuda_root}/bin{where})",
    )


def progress_text(line: str) -> str:
    """A build progress line, short: `[70/193] llama-model.cpp` for a verbose ninja line that
    is the whole compiler command (pip -v shows those); other lines as they are, at most 160
    characters."""
    step, _, rest = line.strip().partition("]")
    words = rest.split()
    if "-c" in words[:-1]:
        return f"{step}] {Path(words[words.index('-c') + 1]).name}"
    text = line.strip()
    return text if len(text) <= _MAX_PROGRESS else text[: _MAX_PROGRESS - 3] + "..."


def run_pip(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """Run pip, echo its progress lines as they come, its last lines when it fails."""
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    installed = False
    with subprocess.Popen(
        list(argv),
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line)
            if _PROGRESS.match(line):
                print(progress_text(line), flush=True)
            elif _PIP_LINE.match(line):
                print(line.strip(), flush=True)
            installed = installed or bool(_ALREADY.match(line))
    if installed:
        print(
            "nothing built: llama-cpp-python is installed already (to rebuild it, e.g. for "
            "another backend: pip uninstall llama-cpp-python, then run this again)"
        )
    if proc.returncode != 0:
        print(f"pip failed with exit code {proc.returncode}; its last lines:", file=sys.stderr)
        sys.stderr.write("".join(tail))
    return proc.returncode


def main(args: Sequence[str]) -> int:
    plan = plan_build(os.environ)
    if list(args) == ["--plan"]:
        print(plan.message)
        return 0
    if len(args) < 2 or args[0] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    print(plan.message, flush=True)
    return run_pip(args[1:], {**os.environ, **plan.env})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
