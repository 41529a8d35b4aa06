"""scripts/llama_cpp_build.py: which llama-cpp-python build `make demo` makes, and its output."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "llama_cpp_build.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("llama_cpp_build", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


build = _load()


def _exe(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def machine(tmp_path: Path) -> dict[str, Path]:
    """An empty PATH folder, a /usr/local/cuda stand-in and a driver file, none there yet."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    return {
        "bin": bin_dir,
        "cuda_root": tmp_path / "usr-local-cuda",
        "driver": tmp_path / "proc-driver-nvidia-version",
    }


def _plan(machine: dict[str, Path], **env: str) -> object:
    return build.plan_build(
        {"PATH": str(machine["bin"]), **env}, machine["cuda_root"], machine["driver"]
    )


def test_nvcc_on_path_with_a_driver_builds_with_cuda(machine: dict[str, Path]) -> None:
    nvcc = _exe(machine["bin"] / "nvcc")
    machine["driver"].write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.86.15\n")
    plan = _plan(machine)
    assert plan.cuda
    assert dict(plan.env) == {"CMAKE_ARGS": "-DGGML_CUDA=on", "CUDACXX": str(nvcc)}
    assert plan.message.startswith(f"building llama-cpp-python with CUDA (nvcc at {nvcc})")


def test_no_toolkit_builds_for_the_cpu(machine: dict[str, Path]) -> None:
    machine["driver"].write_text("NVRM version: 570\n")
    plan = _plan(machine)
    assert not plan.cuda and dict(plan.env) == {}
    assert plan.message.startswith(
        "building llama-cpp-python without CUDA: no CUDA toolkit found (nvcc not on PATH"
    )


def test_toolkit_under_cuda_home_or_usr_local_cuda(
    machine: dict[str, Path], tmp_path: Path
) -> None:
    _exe(machine["bin"] / "nvidia-smi")  # the driver shows through nvidia-smi this time
    home_nvcc = _exe(tmp_path / "cuda-12.8" / "bin" / "nvcc")
    plan = _plan(machine, CUDA_HOME=str(tmp_path / "cuda-12.8"))
    assert plan.cuda and plan.env["CUDACXX"] == str(home_nvcc)
    default_nvcc = _exe(machine["cuda_root"] / "bin" / "nvcc")
    plan = _plan(machine)
    assert plan.cuda and plan.env["CUDACXX"] == str(default_nvcc)


def test_cuda_home_without_nvcc_is_named(machine: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "empty-cuda").mkdir()
    plan = _plan(machine, CUDA_HOME=str(tmp_path / "empty-cuda"))
    assert not plan.cuda and "$CUDA_HOME has no bin/nvcc" in plan.message


def test_a_toolkit_without_a_driver_builds_for_the_cpu(machine: dict[str, Path]) -> None:
    nvcc = _exe(machine["bin"] / "nvcc")
    plan = _plan(machine)
    assert not plan.cuda and dict(plan.env) == {}
    assert f"without CUDA: nvcc at {nvcc} but no NVIDIA driver" in plan.message


@pytest.mark.parametrize(
    ("cmake_args", "cuda"), [("-DGGML_CUDA=off", False), ("-DGGML_CUDA=ON -DGGML_NATIVE=off", True)]
)
def test_cmake_args_the_user_set_win(machine: dict[str, Path], cmake_args: str, cuda: bool) -> None:
    _exe(machine["bin"] / "nvcc")
    machine["driver"].write_text("NVRM version: 570\n")
    plan = _plan(machine, CMAKE_ARGS=cmake_args)
    assert plan.cuda is cuda and dict(plan.env) == {}  # nothing of ours added
    assert plan.message == f"building llama-cpp-python with CMAKE_ARGS={cmake_args} (yours)"


_FAKE_PIP = """\
import os, sys
print("Using pip 25.0 from /venv/lib/python3.11/site-packages/pip (python 3.11)")
print("Collecting llama-cpp-python<0.4,>=0.3.16")
print("  Running command Building wheel for llama-cpp-python (pyproject.toml)")
print("  -- The C compiler identification is GNU 13.3.0")
print("  [1/3] Building C object vendor/llama.cpp/ggml/src/CMakeFiles/ggml-base.dir/ggml.c.o")
print("  [ 66%] Building CXX object vendor/llama.cpp/src/CMakeFiles/llama.dir/llama.cpp.o")
print("  CMAKE_ARGS seen: " + os.environ.get("CMAKE_ARGS", "-"))
print("Successfully installed llama-cpp-python-0.3.16")
sys.exit(int(sys.argv[1]))
"""


def _run_script(tmp_path: Path, code: int) -> subprocess.CompletedProcess[str]:
    fake_pip = tmp_path / "fake_pip.py"
    fake_pip.write_text(_FAKE_PIP)
    env = {"PATH": str(tmp_path), "CMAKE_ARGS": "-DGGML_CUDA=off"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--", sys.executable, str(fake_pip), str(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_build_says_which_build_and_shows_progress(tmp_path: Path) -> None:
    result = _run_script(tmp_path, 0)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "building llama-cpp-python with CMAKE_ARGS=-DGGML_CUDA=off (yours)",
        "Collecting llama-cpp-python<0.4,>=0.3.16",
        "[1/3] Building C object vendor/llama.cpp/ggml/src/CMakeFiles/ggml-base.dir/ggml.c.o",
        "[ 66%] Building CXX object vendor/llama.cpp/src/CMakeFiles/llama.dir/llama.cpp.o",
        "Successfully installed llama-cpp-python-0.3.16",
    ]


def test_a_failed_build_shows_pips_last_lines_and_its_exit_code(tmp_path: Path) -> None:
    result = _run_script(tmp_path, 1)
    assert result.returncode == 1
    assert "pip failed with exit code 1; its last lines:" in result.stderr
    assert "-- The C compiler identification is GNU 13.3.0" in result.stderr
    assert "CMAKE_ARGS seen: -DGGML_CUDA=off" in result.stderr  # pip got the build's settings


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_builds_llama_cpp_python_through_the_script_and_not_quietly() -> None:
    result = subprocess.run(
        ["make", "-n", "-C", str(ROOT), "install-cpu", "PY=python3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if "llama_cpp_build.py" in x)
    assert line.startswith("python3 scripts/llama_cpp_build.py -- python3 -m pip install -v ")
    assert " -q " not in line and "--no-cache-dir" in line
    spec = re.search(r'"(llama-cpp-python[^"]*)"', line)
    assert spec is not None
    # the same requirement as pyproject's `cpu` extra, so `pip install -e .[cpu]` keeps the build
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert extras["cpu"] == [spec[1]]


def test_an_installed_build_is_kept_and_said_so(tmp_path: Path) -> None:
    fake_pip = tmp_path / "fake_pip.py"
    fake_pip.write_text(
        "print('Requirement already satisfied: llama-cpp-python[server]<0.4,>=0.3.16 in "
        "/venv/lib/python3.11/site-packages (0.3.16)')\n"
    )
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--", sys.executable, str(fake_pip)],
        env={"PATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith(
        "nothing built: llama-cpp-python is installed already"
    )


def test_a_verbose_compiler_line_is_shown_as_its_source_file() -> None:
    progress_text = build.progress_text
    line = (
        "[70/193] /usr/bin/g++ -DGGML_SHARED -I/tmp/x/include -O3 -MD -MT a.o -MF a.o.d "
        "-o vendor/llama.cpp/src/CMakeFiles/llama.dir/llama-model.cpp.o "
        "-c /tmp/pip-install-1/llama-cpp-python/vendor/llama.cpp/src/llama-model.cpp\n"
    )
    assert progress_text(line) == "[70/193] llama-model.cpp"
    short = "[ 66%] Building CXX object vendor/llama.cpp/src/CMakeFiles/llama.dir/llama.cpp.o"
    assert progress_text(short + "\n") == short
    assert len(progress_text("[1/2] " + "x" * 500)) == 160
