"""The CPU model and CUDA version a run header records."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from vramphysics.hostinfo import cpu_model, cuda_driver_version


def test_cpu_model_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7763 64-Core\n"
    )
    assert cpu_model(info) == "AMD EPYC 7763 64-Core"


def test_cuda_version_from_nvml() -> None:
    class NVMLError(Exception):
        pass

    nv = SimpleNamespace(NVMLError=NVMLError, nvmlSystemGetCudaDriverVersion=lambda: 12040)
    assert cuda_driver_version(nv) == "12.4"

    def broken() -> int:
        raise NVMLError("not supported")

    assert (
        cuda_driver_version(
            SimpleNamespace(NVMLError=NVMLError, nvmlSystemGetCudaDriverVersion=broken)
        )
        is None
    )
