"""llama.cpp's own memory lines (engines/llamacpp/log.parse_buffers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vramphysics.engines.llamacpp.log import components_from_log, is_host_device, parse_buffers

MIB = 2**20
FIXTURES = Path(__file__).parent.parent / "fixtures" / "llamacpp"

# A CPU start of the tiny demo model (llama-cpp-python), as in the module's docstring.
CPU_LOG = """\
llama_model_loader: - type  f32:   17 tensors
llama_model_loader: - type  f16:   58 tensors
load_tensors:   CPU_Mapped model buffer size =     9.52 MiB
llama_context: n_ctx         = 2048
llama_kv_cache:        CPU KV buffer size =     8.00 MiB
llama_kv_cache: size =    8.00 MiB (  2048 cells,   8 layers,  1/1 seqs), K (f16):    4.00 MiB, V (f16):    4.00 MiB
llama_context:        CPU  output buffer size =     0.00 MiB
sched_reserve:        CPU compute buffer size =    23.01 MiB
"""

# A CUDA start (all layers offloaded): weights and KV in VRAM, a pinned host compute buffer.
CUDA_LOG = """\
ggml_cuda_init: found 1 CUDA devices:
  Device 0: NVIDIA GeForce RTX 4090, compute capability 8.9, VMM: yes
load_tensors: offloading 32 repeating layers to GPU
load_tensors: offloaded 33/33 layers to GPU
load_tensors:        CUDA0 model buffer size =  4403.49 MiB
load_tensors:   CPU_Mapped model buffer size =   281.81 MiB
llama_kv_cache_unified:      CUDA0 KV buffer size =   448.00 MiB
llama_kv_cache_unified: size =  448.00 MiB (  3584 cells,  32 layers,  1/1 seqs), K (f16):  224.00 MiB, V (f16):  224.00 MiB
llama_context:  CUDA_Host  output buffer size =     0.58 MiB
llama_new_context_with_model:      CUDA0 compute buffer size =   258.50 MiB
llama_new_context_with_model:  CUDA_Host  compute buffer size =    12.01 MiB
"""


def test_cpu_log() -> None:
    b = parse_buffers(CPU_LOG)
    assert b.buffers == {
        ("weights", "CPU_Mapped"): round(9.52 * MIB),  # 9_982_444
        ("kv", "CPU"): 8 * MIB,
        ("output", "CPU"): 0,
        ("compute", "CPU"): round(23.01 * MIB),  # 24_127_734
    }
    assert b.buffers[("weights", "CPU_Mapped")] == 9_982_444
    assert b.buffers[("compute", "CPU")] == 24_127_734
    assert b.devices == ("CPU", "CPU_Mapped")
    # everything is host memory
    assert b.total("kv", vram=True) == 0
    assert b.total("kv", vram=False) == 8 * MIB
    assert b.total("kv") == 8 * MIB
    kv = b.kv_cache
    assert kv is not None
    assert (kv.size_bytes, kv.cells, kv.layers, kv.k_type, kv.v_type) == (
        8 * MIB,
        2048,
        8,
        "f16",
        "f16",
    )
    # 8 MiB / 2048 cells = 4096 B per token = 2 (K, V) x 8 layers x 2 KV heads x 64 x 2 B
    assert kv.bytes_per_cell == 4096.0


def test_cuda_log() -> None:
    b = parse_buffers(CUDA_LOG)
    assert b.buffers[("weights", "CUDA0")] == round(4403.49 * MIB)  # 4_617_393_930
    assert b.buffers[("weights", "CUDA0")] == 4_617_393_930
    assert b.buffers[("weights", "CPU_Mapped")] == round(281.81 * MIB)
    assert b.buffers[("kv", "CUDA0")] == 448 * MIB
    assert b.buffers[("compute", "CUDA0")] == round(258.5 * MIB)  # 271_056_896
    assert b.buffers[("compute", "CUDA_Host")] == round(12.01 * MIB)
    assert b.buffers[("output", "CUDA_Host")] == round(0.58 * MIB)
    assert b.devices == ("CPU_Mapped", "CUDA0", "CUDA_Host")
    # VRAM vs host
    assert b.total("weights", vram=True) == 4_617_393_930
    assert b.total("weights", vram=False) == round(281.81 * MIB)
    assert b.total("weights") == 4_617_393_930 + round(281.81 * MIB)
    assert b.total("compute", vram=True) == 271_056_896
    assert b.total("compute", vram=False) == round(12.01 * MIB)
    assert b.by_component(vram=True) == {
        "weights": 4_617_393_930,
        "kv": 448 * MIB,
        "output": 0,
        "compute": 271_056_896,
    }
    kv = b.kv_cache
    assert kv is not None
    assert (kv.cells, kv.layers) == (3584, 32)
    # 448 MiB / 3584 cells = 131_072 B per token = 2 x 32 layers x 8 KV heads x 128 x 2 B
    assert kv.bytes_per_cell == 131_072.0


def test_last_value_wins() -> None:
    # a server that reloads the model prints its buffers again
    log = (
        CUDA_LOG
        + "llama_kv_cache_unified:      CUDA0 KV buffer size =   896.00 MiB\n"
        + "llama_kv_cache_unified: size =  896.00 MiB (  7168 cells,  32 layers,  1/1 seqs), "
        "K (f16):  448.00 MiB, V (f16):  448.00 MiB\n"
    )
    b = parse_buffers(log)
    assert b.buffers[("kv", "CUDA0")] == 896 * MIB
    assert b.kv_cache is not None and b.kv_cache.cells == 7168
    assert b.kv_cache.bytes_per_cell == 131_072.0


def test_several_gpus_add_up() -> None:
    log = (
        "load_tensors:        CUDA0 model buffer size =  2000.00 MiB\n"
        "load_tensors:        CUDA1 model buffer size =  2403.49 MiB\n"
        "llama_kv_cache:      CUDA0 KV buffer size =   224.00 MiB\n"
        "llama_kv_cache:      CUDA1 KV buffer size =   224.00 MiB\n"
    )
    b = parse_buffers(log)
    assert b.total("weights", vram=True) == round(2000 * MIB) + round(2403.49 * MIB)
    assert b.total("kv", vram=True) == 448 * MIB
    assert b.total("kv", vram=False) == 0


def test_ollama_server_log_with_quantized_kv() -> None:
    # Ollama embeds llama.cpp's lines in its own log; q8_0 KV types parse too
    log = (
        'time=2025-05-01T10:00:00Z level=INFO source=server.go:405 msg="starting llama server"\n'
        "llama_kv_cache: size =  238.00 MiB (  4096 cells,  28 layers,  1/1 seqs), "
        "K (q8_0):  119.00 MiB, V (q8_0):  119.00 MiB\n"
        "load_tensors:      Metal model buffer size =  1918.36 MiB\n"
    )
    b = parse_buffers(log)
    assert b.kv_cache is not None
    assert (b.kv_cache.k_type, b.kv_cache.v_type) == ("q8_0", "q8_0")
    assert b.buffers == {("weights", "Metal"): round(1918.36 * MIB)}
    assert b.total("weights", vram=True) == round(1918.36 * MIB)


def test_nothing_to_parse() -> None:
    b = parse_buffers("llama_model_loader: loaded meta data\nsomething else = 5 MiB\n")
    assert b.buffers == {}
    assert b.kv_cache is None
    assert b.total("kv") == 0
    assert b.by_component() == {}
    assert b.devices == ()
    assert parse_buffers("").buffers == {}


@pytest.mark.parametrize(
    ("device", "host"),
    [
        ("CPU", True),
        ("CPU_Mapped", True),
        ("CPU_REPACK", True),
        ("CUDA_Host", True),
        ("cuda_host", True),
        ("ROCm_Host", True),
        ("CUDA0", False),
        ("CUDA1", False),
        ("Metal", False),
        ("Vulkan0", False),
        ("ROCm0", False),
    ],
)
def test_is_host_device(device: str, host: bool) -> None:
    assert is_host_device(device) is host


# -- sliding-window models: two KV caches per context ----------------------------------------


def test_sliding_window_model_on_the_cpu_sums_both_caches() -> None:
    # captured: the tiny Gemma 2 model, n_ctx 8192, a small SWA cache as llama-server makes it
    text = (FIXTURES / "iswa_cpu_llama_cpp_python_8192.log").read_text()
    b = parse_buffers(text)
    assert [(c.cells, c.layers, c.swa) for c in b.kv_caches] == [(8192, 4, False), (768, 4, True)]
    assert b.kv_cache is not None and b.kv_cache.cells == 8192  # the full-attention one
    assert b.buffers[("kv", "CPU")] == 16 * MIB + round(1.5 * MIB)  # both buffer lines
    assert b.kv_bytes == 16 * MIB + round(1.5 * MIB)
    mem = components_from_log(text, "llamacpp-log")
    assert mem is not None and not mem.device_resident
    assert mem.kv_pool_bytes == 16 * MIB + round(1.5 * MIB)  # not the last cache's 1.5 MiB
    assert mem.kv_tokens == 8192  # not the window's 768: the context check passes
    assert mem.extra["kv_cells"] == 8192
    assert mem.extra["kv_caches"] == [
        {"cells": 8192, "layers": 4, "bytes": 16 * MIB, "swa": False},
        {"cells": 768, "layers": 4, "bytes": round(1.5 * MIB), "swa": True},
    ]


def test_sliding_window_model_on_a_gpu_sums_both_caches() -> None:
    text = (FIXTURES / "iswa_cuda_llama_server_gemma3_12b.log").read_text()
    mem = components_from_log(text, "llamacpp-log")
    assert mem is not None and mem.device_resident
    assert mem.kv_pool_bytes == (512 + 480) * MIB  # 8 global layers x 8192 + 40 SWA x 1536
    assert mem.kv_tokens == 8192
    assert mem.weights_bytes == round(6956.38 * MIB)
    assert mem.compute_bytes == round(519.62 * MIB)
    assert mem.extra["host_buffers_bytes"] == {
        "weights": round(787.5 * MIB),
        "output": MIB,
        "compute": round(29.01 * MIB),
    }


def test_a_reload_of_a_sliding_window_model_keeps_only_the_new_caches() -> None:
    text = (FIXTURES / "iswa_cuda_llama_server_gemma3_12b.log").read_text()
    reload = text.replace("8192 cells", "16384 cells").replace("512.00 MiB", "1024.00 MiB")
    b = parse_buffers(text + reload)
    assert [c.cells for c in b.kv_caches] == [16384, 1536]
    assert b.buffers[("kv", "CUDA0")] == (1024 + 480) * MIB


def test_older_builds_print_seqs_without_a_maximum() -> None:
    b = parse_buffers(
        "llama_kv_cache_unified_iswa: creating non-SWA KV cache, size = 4096 cells\n"
        "llama_kv_cache_unified: size =   64.00 MiB (  4096 cells,   4 layers,  1 seqs), "
        "K (f16):   32.00 MiB, V (f16):   32.00 MiB\n"
        "llama_kv_cache_unified_iswa: creating     SWA KV cache, size = 4096 cells\n"
        "llama_kv_cache_unified: size =   64.00 MiB (  4096 cells,   4 layers,  1 seqs), "
        "K (f16):   32.00 MiB, V (f16):   32.00 MiB\n"
    )
    assert [(c.cells, c.swa) for c in b.kv_caches] == [(4096, False), (4096, True)]
    assert b.kv_bytes == 128 * MIB


# -- where the engine lives: CPU or GPU buffers ------------------------------------------------


def test_all_layers_on_a_gpu_is_device_resident() -> None:
    mem = components_from_log(CUDA_LOG, "llamacpp-log")
    assert mem is not None and mem.device_resident
    assert mem.kv_pool_bytes == 448 * MIB and mem.kv_tokens == 3584
    assert mem.weights_bytes == round(4403.49 * MIB)  # VRAM only


def test_cpu_build_is_not_device_resident() -> None:
    mem = components_from_log(CPU_LOG, "llamacpp-log")
    assert mem is not None and not mem.device_resident
    assert mem.weights_bytes == round(9.52 * MIB) and mem.kv_pool_bytes == 8 * MIB
    assert "vram_buffers_bytes" not in mem.extra


def test_cuda_build_with_nothing_offloaded_lives_on_the_cpu() -> None:
    # weights and KV cache in host memory; the GPU holds only a compute buffer: the memory that
    # grows with the context is the process's, so the engine is not device resident
    text = (FIXTURES / "cuda_build_no_offload.log").read_text()
    mem = components_from_log(text, "llamacpp-log")
    assert mem is not None and not mem.device_resident
    assert mem.weights_bytes == round(9.52 * MIB)
    assert mem.kv_pool_bytes == 8 * MIB and mem.kv_tokens == 2048
    assert mem.compute_bytes == round(36.5 * MIB) + round(5.01 * MIB)
    assert mem.extra["vram_buffers_bytes"] == {"compute": round(36.5 * MIB)}


def test_partial_offload_is_device_resident_without_a_per_token_figure() -> None:
    text = (
        "load_tensors:        CUDA0 model buffer size =  2000.00 MiB\n"
        "load_tensors:          CPU model buffer size =  2403.49 MiB\n"
        "llama_kv_cache:      CUDA0 KV buffer size =   224.00 MiB\n"
        "llama_kv_cache:        CPU KV buffer size =   224.00 MiB\n"
        "llama_kv_cache: size =  448.00 MiB (  3584 cells,  32 layers,  1/1 seqs), "
        "K (f16):  224.00 MiB, V (f16):  224.00 MiB\n"
    )
    mem = components_from_log(text, "llamacpp-log")
    assert mem is not None and mem.device_resident
    assert mem.kv_pool_bytes == 224 * MIB  # the VRAM half
    assert mem.kv_tokens is None  # 224 MiB / 3584 would not be a cost per token
    assert mem.extra["kv_cells"] == 3584  # but the context check still sees the cells
