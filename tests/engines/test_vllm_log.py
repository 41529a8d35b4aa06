"""The vLLM log and /metrics parser, on real excerpts (tests/fixtures/vllm_logs/README.md).

Every expected figure is copied from the excerpt it is read from; sizes printed in GiB (or in
vLLM's "GB", which is also GiB) are written as `gib(<the printed number>)`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vramphysics.engines.vllm.log import (
    VllmFailure,
    VllmLogFacts,
    VllmMetricsFacts,
    classify_failure,
    parse_log,
    parse_log_file,
    parse_metrics,
    to_json_dict,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "vllm_logs"


def gib(printed: float) -> int:
    """Bytes of a size vLLM printed in GiB (or "GB")."""
    return round(printed * 2**30)


def text(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def facts(name: str) -> VllmLogFacts:
    return parse_log_file(FIXTURES / name)


# --- V0 engine (0.5 to 0.8) -----------------------------------------------------------------


def test_v0_5_tensor_parallel_workers() -> None:
    f = facts("v0_5_tp4_lora.log")
    assert f.weights_bytes == gib(6.1138)
    assert f.num_gpu_blocks == 10039  # not the 1310 swap blocks on the same line
    assert f.block_size == 16  # no concurrency line in 0.5: vLLM's GPU default
    assert f.kv_cache_tokens == 10039 * 16
    assert f.device == "gpu"
    assert f.max_concurrency is None
    assert f.available_kv_bytes is None
    assert f.failure is None


def test_v0_6_kv_too_small_run_reads_every_figure() -> None:
    f = facts("v0_6_kv_too_small.log")
    assert f.weights_bytes == gib(14.9888)
    assert f.available_kv_bytes == gib(2.89)  # Memory profiling results: kv_cache_size=2.89GiB
    assert f.num_gpu_blocks == 1478
    assert f.block_size == 16
    assert f.kv_cache_tokens == 23_648
    assert (f.max_concurrency, f.concurrency_tokens) == (0.82, 29_000)
    assert f.failure == VllmFailure(
        "kv_too_small",
        "The model's max seq len (29000) is larger than the maximum number of tokens that can be "
        "stored in KV cache (23648). Try increasing `gpu_memory_utilization` or decreasing "
        "`max_model_len` when initializing the engine.",
        23_648,
    )
    # vLLM's own error confirms blocks x 16 tokens.
    assert f.kv_cache_tokens == f.failure.max_context
    # Llama-3.1-8B: 2 (K, V) x 32 layers x 8 KV heads x 128 x 2 bytes = 131,072 bytes per token;
    # the pool is printed rounded to 0.01 GiB, hence the tolerance.
    assert f.kv_bytes_per_token == pytest.approx(131_072, rel=0.005)


def test_v0_6_block_size_is_read_back_from_the_concurrency_line() -> None:
    f = facts("v0_6_tp8_multiproc.log")
    assert f.weights_bytes == gib(1.9028)
    assert f.num_gpu_blocks == 464_716
    assert (f.max_concurrency, f.concurrency_tokens) == (56.73, 131_072)
    # 464,716 x 16 / 131,072 = 56.728 -> "56.73x"; 8 would print 28.36x, 32 would print 113.46x
    assert f.block_size == 16
    assert f.kv_cache_tokens == 7_435_456


def test_v0_config_line_under_a_torchserve_prefix() -> None:
    f = facts("v0_6_1_torchserve_config.log")
    assert f.vllm_version == "0.6.1.dev238+ge2c6e0a82"
    assert f.max_model_len == 131_072  # max_seq_len=131072
    assert f.device == "gpu"  # device_config=cuda
    assert f.weights_bytes is None


def test_v0_8_worker_summary_and_cuda_graph() -> None:
    f = facts("v0_8_worker_summary.log")
    assert f.weights_bytes == gib(1.12)  # only "model weights take 1.12GiB" in this excerpt
    assert f.available_kv_bytes == gib(61.84)  # "reserved for KV Cache is 61.84GiB"
    assert f.num_gpu_blocks == 36_184  # "# cuda blocks: 36184"
    assert f.kv_cache_tokens == 36_184 * 16
    assert (f.max_concurrency, f.concurrency_tokens) == (70.67, 8_192)
    assert f.cuda_graph_bytes == gib(0.13)
    assert f.device == "gpu"


def test_model_loading_line_beats_the_rounded_summary() -> None:
    f = facts("v0_8_windows_model_loading_gb.log")
    assert f.weights_bytes == gib(0.4678)  # not the summary's "model weights take 0.47GiB"
    assert f.available_kv_bytes == gib(13.40)
    assert f.num_gpu_blocks == 12_200
    assert f.kv_cache_tokens == 195_200
    assert (f.max_concurrency, f.concurrency_tokens) == (95.31, 2_048)


def test_v0_on_cpu_uses_block_size_128() -> None:
    f = facts("v0_8_5_cpu.log")
    assert f.device == "cpu"  # "# cpu blocks: 1170, # CPU blocks: 0"
    assert f.num_gpu_blocks == 1_170
    # 1,170 x 128 / 32,768 = 4.570 -> "4.57x"; the GPU default 16 would print 0.57x
    assert f.block_size == 128
    assert f.kv_cache_tokens == 149_760


def test_v0_on_cpu_without_a_concurrency_line_does_not_guess_tokens() -> None:
    blocks_line = text("v0_8_5_cpu.log").splitlines()[1]
    f = parse_log(blocks_line)
    assert f.num_gpu_blocks == 1_170
    assert f.block_size is None
    assert f.kv_cache_tokens is None


def test_metrics_block_size_overrides_the_v0_default() -> None:
    f = parse_log(text("v0_5_tp4_lora.log"), metrics=VllmMetricsFacts(block_size=32))
    assert f.block_size == 32
    assert f.kv_cache_tokens == 10_039 * 32


def test_block_size_and_max_model_len_from_args_dumps() -> None:
    log = (
        "INFO 11-15 09:07:04 api_server.py:166] args: Namespace(block_size=32, "
        "max_model_len=4096, speculative_max_model_len=None, swap_space=4)\n"
        "INFO 11-15 09:07:30 distributed_gpu_executor.py:57] # GPU blocks: 100, # CPU blocks: 0\n"
    )
    f = parse_log(log)
    assert (f.block_size, f.max_model_len, f.kv_cache_tokens) == (32, 4_096, 3_200)
    newer = parse_log(
        "(APIServer pid=1) INFO [utils.py:1] non-default args: {'max_model_len': 2048}"
    )
    assert newer.max_model_len == 2_048


# --- V1 engine (0.7 onwards) and the newest releases ----------------------------------------


def test_v1_0_7_block_count_and_token_count_agree() -> None:
    before = facts("v1_0_7_gpu_blocks.log")  # "# GPU blocks: 127626"
    after = facts("v1_0_7_kv_tokens.log")  # "GPU KV cache size: 2,042,016 tokens"
    assert before.num_gpu_blocks == 127_626
    assert before.kv_cache_tokens == after.kv_cache_tokens == 2_042_016
    assert after.num_gpu_blocks is None
    assert after.max_concurrency == before.max_concurrency == 997.08
    assert after.concurrency_tokens == 2_048


def test_gb_means_gib_inside_k9s_borders() -> None:
    f = facts("v1_0_8_k9s_gb.log")  # "│ INFO … Model loading took 14.9888 GB and 28.719376 seconds"
    assert f.weights_bytes == 16_094_101_452  # 14.9888 x 2**30
    assert f.weights_bytes != 14_988_800_000  # not decimal gigabytes


def test_v1_engine_core_prefix_and_thousands_separators() -> None:
    f = facts("v1_0_10_engine_core.log")
    assert f.available_kv_bytes == gib(6.51)
    assert f.kv_cache_tokens == 42_656
    assert (f.max_concurrency, f.concurrency_tokens) == (1.30, 32_768)
    assert f.device == "gpu"
    # Qwen3-14B: 2 x 40 layers x 8 KV heads x 128 x 2 bytes = 163,840 bytes per token.
    assert f.kv_bytes_per_token == pytest.approx(163_840, rel=0.005)


def test_loading_weights_in_seconds_is_not_a_size() -> None:
    f = facts("v1_0_11_drafter.log")  # "Loading weights took 1.01 seconds" comes first
    assert f.weights_bytes == gib(4.1801)


def test_v1_config_line() -> None:
    f = facts("v1_0_12_config_line.log")
    assert (f.vllm_version, f.max_model_len, f.device) == ("0.12.0", 32_768, "gpu")


def test_estimated_cuda_graph_memory_is_not_read_as_measured() -> None:
    f = facts("newest_cuda_graph_estimate.log")
    assert f.cuda_graph_bytes is None  # "Estimated CUDA graph memory: 0.26 GiB total"
    assert f.available_kv_bytes == gib(17.36)
    assert f.kv_cache_tokens == 188_640
    assert (f.max_concurrency, f.concurrency_tokens) == (5.23, 131_072)


def test_model_runner_v2_graph_capture() -> None:
    f = facts("newest_model_runner_v2.log")
    assert f.cuda_graph_bytes == gib(0.11)
    assert f.available_kv_bytes == gib(6.13)


def test_newest_model_loading_memory_wording() -> None:
    f = facts("newest_worker_tp.log")  # "Model loading took 12.66 GiB memory and 31.657031 seconds"
    assert f.weights_bytes == gib(12.66)


def test_encoder_cache_budget_of_a_multimodal_model() -> None:
    f = facts("newest_worker_tp.log")  # "... a budget of 8192 tokens, and profiled with 3 video"
    assert (f.encoder_budget_tokens, f.encoder_profiled_items) == (8_192, 3)
    assert f.encoder_profiled_modality == "video"
    assert to_json_dict(f)["encoder_budget_tokens"] == 8_192


def test_encoder_cache_line_of_the_cpu_build_with_the_tiny_vlm() -> None:
    """The words vLLM CPU 0.32.0 logged for the tiny Idefics3 model (/work/shared/ENGINES.md,
    which did not record the line's prefix); a text model's log has no such line."""
    line = (
        "Encoder cache will be initialized with a budget of 2048 tokens, and profiled with "
        "30 image items of the maximum feature size.\n"
    )
    f = parse_log(text("cpu_vllm_cpu_local.log") + line)
    assert (f.encoder_budget_tokens, f.encoder_profiled_items) == (2_048, 30)
    assert f.encoder_profiled_modality == "image"
    assert f.kv_cache_tokens == 524_288  # the other figures are still read
    assert facts("cpu_vllm_cpu_local.log").encoder_budget_tokens is None


def test_cpu_build_on_our_machine() -> None:
    f = facts("cpu_vllm_cpu_local.log")
    assert f.available_kv_bytes == 1_073_741_824  # "Explicitly set (1.0/7.84) GiB"
    assert f.kv_cache_tokens == 524_288
    assert (f.max_concurrency, f.concurrency_tokens) == (256.00, 2_048)
    assert f.device == "cpu"
    assert f.kv_bytes_per_token == 2_048.0  # the tiny model's f16 KV cost


def test_v1_logs_state_max_model_len_in_the_concurrency_line() -> None:
    """V1 prints no max_model_len line; vLLM formats "Maximum concurrency for N tokens per
    request" from its max_model_len, with thousands separators."""
    assert facts("v1_0_10_engine_core.log").max_model_len == 32_768  # "for 32,768 tokens"
    assert facts("v1_0_7_kv_tokens.log").max_model_len == 2_048
    assert facts("cpu_vllm_cpu_local.log").max_model_len == 2_048  # the merged CPU line
    excerpt = (
        "(EngineCore_DP0 pid=7) INFO 10-03 16:22:17 [kv_cache_utils.py:864] "
        "GPU KV cache size: 524,288 tokens\n"
        "(EngineCore_DP0 pid=7) INFO 10-03 16:22:17 [kv_cache_utils.py:868] "
        "Maximum concurrency for 131,072 tokens per request: 4.00x\n"
    )
    assert parse_log(excerpt).max_model_len == 131_072


def test_the_last_stated_max_model_len_wins() -> None:
    """An args dump, then the length the start serves, then a restart's args dump."""
    first = "INFO [utils.py:1] non-default args: {'max_model_len': 4096}\n"
    served = (
        "INFO [kv_cache_utils.py:868] Maximum concurrency for 2,048 tokens per request: 2.00x\n"
    )
    restart = "INFO [utils.py:1] non-default args: {'max_model_len': 8192}\n"
    assert parse_log(first + served).max_model_len == 2_048
    assert parse_log(first + served + restart).max_model_len == 8_192


def test_last_value_wins_when_a_log_holds_a_restart() -> None:
    first, second = text("v1_0_10_engine_core.log"), text("newest_cuda_graph_estimate.log")
    f = parse_log(first + second)
    assert (f.available_kv_bytes, f.kv_cache_tokens) == (gib(17.36), 188_640)
    g = parse_log(second + first)
    assert (g.available_kv_bytes, g.kv_cache_tokens) == (gib(6.51), 42_656)


def test_a_log_with_no_figures_gives_all_none() -> None:
    log = (
        "INFO 05-12 10:11:12 [__init__.py:239] Automatically detected platform unknown.\n"
        "(APIServer pid=1) INFO 05-12 10:11:13 [launcher.py:29] Available routes are:\n"
    )
    assert parse_log(log) == VllmLogFacts()
    assert parse_log("") == VllmLogFacts()
    assert all(value is None for value in to_json_dict(parse_log(log)).values())


def test_version_from_the_api_server_line_and_the_banner() -> None:
    line = "INFO 02-06 22:00:49 api_server.py:838] vLLM API server version 0.7.1"  # issue 12867
    assert parse_log(line).vllm_version == "0.7.1"
    assert facts("fail_model_not_local_folder.log").vllm_version == "0.16.0"


# --- Failures -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "message_start", "max_context"),
    [
        ("fail_v0_kv_too_small.log", "kv_too_small", "ValueError: The model's max seq len", 16_816),
        (
            "fail_v1_kv_too_small_estimate.log",
            "kv_too_small",
            "ValueError: To serve at least one request with the models's max seq len (221000)",
            122_080,
        ),
        (
            "fail_no_cache_blocks.log",
            "kv_too_small",
            "ValueError: No available memory for the cache blocks.",
            None,
        ),
        (
            "fail_cuda_oom_runtime.log",
            "cuda_oom",
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 50.00 MiB.",
            None,
        ),
        (
            "fail_cuda_driver_oom.log",
            "cuda_oom",
            "RuntimeError: CUDA driver error: out of memory",
            None,
        ),
        (
            "fail_free_memory_ci.log",
            "insufficient_free_memory",
            "ValueError: Free memory on device cuda:1 (19.77/22.05 GiB) on startup is less than",
            None,
        ),
        (
            "fail_free_memory_ansi.log",
            "insufficient_free_memory",
            "ValueError: Free memory on device cuda:0 (1.54/22.05 GiB) on startup is less than",
            None,
        ),
        (
            "fail_model_not_found_401.log",
            "model_not_found",
            "huggingface_hub.errors.RepositoryNotFoundError: 401 Client Error.",
            None,
        ),
        (
            "fail_model_not_found_404.log",
            "model_not_found",
            "requests.exceptions.HTTPError: 404 Client Error: Not Found for url: "
            "https://huggingface.co/HuggingFaceH4/gemma-2-2b-gkd/resolve/main/config.json",
            None,
        ),
        (
            "fail_model_not_local_folder.log",
            "model_not_found",
            "OSError: Qwen/Qwen3.5-27B-AWQ is not a local folder and is not a valid model",
            None,
        ),
        (
            "fail_other_engine_core.log",
            "other",
            "RuntimeError: Engine core initialization failed. See root cause above. "
            "Failed core proc(s): {}",
            None,
        ),
        (
            "fail_other_mmap.log",
            "other",
            "RuntimeError: unable to mmap 16933256392 bytes from file",
            None,
        ),
    ],
)
def test_each_failure_kind_from_a_real_excerpt(
    name: str, kind: str, message_start: str, max_context: int | None
) -> None:
    failure = classify_failure(text(name))
    assert failure is not None
    assert failure.kind == kind
    assert failure.message.startswith(message_start)
    assert failure.max_context == max_context
    assert "\x1b" not in failure.message
    assert parse_log(text(name)).failure == failure


def test_the_info_line_of_a_successful_start_is_not_a_failure() -> None:
    # "Free memory on device (110.37/121.69 GiB) on startup." without "is less than desired"
    assert classify_failure(text("ok_free_memory_info_line.log")) is None


@pytest.mark.parametrize(
    "name",
    sorted(p.name for p in FIXTURES.glob("*.log") if not p.name.startswith(("fail_", "v0_6_kv"))),
)
def test_healthy_logs_have_no_failure(name: str) -> None:
    assert facts(name).failure is None


def test_a_specific_root_cause_beats_the_engine_core_wrapper() -> None:
    oom, wrapper = text("fail_cuda_driver_oom.log"), text("fail_other_engine_core.log")
    for log in (oom + wrapper, wrapper + oom):
        failure = classify_failure(log)
        assert failure is not None
        assert (failure.kind, failure.message) == (
            "cuda_oom",
            "RuntimeError: CUDA driver error: out of memory",
        )


def test_the_first_specific_failure_wins() -> None:
    kv, oom = text("fail_v1_kv_too_small_estimate.log"), text("fail_cuda_oom_runtime.log")
    first = classify_failure(kv + oom)
    second = classify_failure(oom + kv)
    assert first is not None and first.kind == "kv_too_small"
    assert second is not None and second.kind == "cuda_oom"


def test_other_names_the_root_cause_not_the_wrapper() -> None:
    failure = classify_failure(text("fail_other_mmap.log") + text("fail_other_engine_core.log"))
    assert failure is not None
    assert failure.kind == "other"
    assert failure.message.startswith("RuntimeError: unable to mmap 16933256392 bytes")


def test_source_lines_quoted_in_a_traceback_are_not_the_message() -> None:
    # The shape of a V0 traceback: the raise statement quotes the message before the exception.
    log = (
        "Traceback (most recent call last):\n"
        '  File "/usr/local/lib/python3.10/dist-packages/vllm/worker/worker.py", line 373, '
        "in raise_if_cache_size_invalid\n"
        '    raise ValueError("No available memory for the cache blocks. "\n'
        "ValueError: No available memory for the cache blocks. Try increasing "
        "`gpu_memory_utilization` when initializing the engine.\n"
    )
    failure = classify_failure(log)
    assert failure is not None
    assert failure.kind == "kv_too_small"
    assert failure.message.startswith("ValueError: No available memory")


def test_caret_escaped_colours_are_stripped_too() -> None:
    log = (
        "^[[0;36m(EngineCore_DP0 pid=738)^[[0;0m ^[[31mERROR^[[0m ^[[90m01-26 09:25:37^[[0m "
        "^[[90m[core.py:935]^[[0m ValueError: Free memory on device cuda:0 (1.54/22.05 GiB) on "
        "startup is less than desired GPU memory utilization (0.9, 19.84 GiB)."
    )
    failure = classify_failure(log)
    assert failure is not None
    assert failure.kind == "insufficient_free_memory"
    assert failure.message.startswith("ValueError: Free memory on device cuda:0")


def test_no_error_means_no_failure() -> None:
    assert classify_failure(text("v1_0_10_engine_core.log")) is None
    assert classify_failure("") is None


# --- JSON -----------------------------------------------------------------------------------


def test_to_json_dict() -> None:
    f = facts("v0_6_kv_too_small.log")
    assert f.failure is not None
    d = to_json_dict(f)
    assert {"weights_bytes", "available_kv_bytes", "kv_cache_tokens", "max_model_len"} <= d.keys()
    assert {
        "num_gpu_blocks",
        "block_size",
        "max_concurrency",
        "cuda_graph_bytes",
        "vllm_version",
        "kv_bytes_per_token",
        "device",
    } <= d.keys()
    assert d["weights_bytes"] == gib(14.9888)
    assert isinstance(d["weights_bytes"], int)
    assert isinstance(d["available_kv_bytes"], int)
    assert d["kv_cache_tokens"] == 23_648
    assert d["max_model_len"] == 29_000  # "Maximum concurrency for 29000 tokens per request"
    assert d["failure"] == {
        "kind": "kv_too_small",
        "message": f.failure.message,
        "max_context": 23_648,
    }


# --- /metrics -------------------------------------------------------------------------------


def test_metrics_of_the_cpu_build() -> None:
    m = parse_metrics(text("metrics_cpu_local.txt"))
    assert m == VllmMetricsFacts(
        kv_cache_memory_bytes=1_073_741_824,
        kv_cache_size_tokens=524_288,
        num_gpu_blocks=4_096,
        block_size=128,
        gpu_memory_utilization=0.92,
        cache_dtype="auto",
        kv_cache_usage_perc=0.0078125,
    )
    assert m.kv_bytes_per_token == 2_048.0  # exact: 1,073,741,824 / 524,288


def test_metrics_with_the_v0_label_set() -> None:
    m = parse_metrics(text("metrics_v0_aibrix.txt"))
    assert (m.block_size, m.num_gpu_blocks) == (16, 81_767)
    assert (m.gpu_memory_utilization, m.cache_dtype) == (0.9, "auto")
    assert m.kv_cache_memory_bytes is None  # V0 had no such label
    assert m.kv_cache_size_tokens is None
    assert m.kv_bytes_per_token is None
    assert m.kv_cache_usage_perc == 0.0  # from the older vllm:gpu_cache_usage_perc


def test_metrics_of_a_hybrid_model_keep_the_reported_token_count() -> None:
    m = parse_metrics(text("metrics_hybrid_dsv4.txt"))
    assert (m.block_size, m.num_gpu_blocks, m.kv_cache_size_tokens) == (4, 20_377, 1_179_770)
    assert m.num_gpu_blocks * m.block_size != m.kv_cache_size_tokens  # see issue 51163
    assert m.cache_dtype == "fp8_ds_mla"


def test_metrics_label_values_with_escapes() -> None:
    metrics = (
        'vllm:kv_cache_usage_perc{model_name="a \\"quoted\\" name, {braced}",engine="0"} 0.25\n'
        "vllm:cache_config_info{"
        'model_name="C:\\\\models\\\\x\\nsecond line",'
        'cache_dtype="fp8_e5m2", block_size="16",num_gpu_blocks="6000",} 1.0 1700000000000\n'
    )
    m = parse_metrics(metrics)
    assert (m.cache_dtype, m.block_size, m.num_gpu_blocks) == ("fp8_e5m2", 16, 6_000)
    assert m.kv_cache_usage_perc == 0.25


def test_metrics_prefer_the_new_usage_name_and_the_fullest_engine() -> None:
    metrics = (
        'vllm:gpu_cache_usage_perc{engine="0",model_name="m"} 0.9\n'
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25\n'
        'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.5\n'
    )
    assert parse_metrics(metrics).kv_cache_usage_perc == 0.5


def test_metrics_skip_malformed_lines_and_none_labels() -> None:
    metrics = (
        'vllm:cache_config_info{block_size="16",cache_dtype="auto' + "\n"  # unterminated
        "not a sample\n"
        'vllm:cache_config_info{block_size="32",kv_cache_size_tokens="None",'
        'num_gpu_blocks="0"} 1.0\n'
    )
    m = parse_metrics(metrics)
    assert m.block_size == 32
    assert m.kv_cache_size_tokens is None
    assert m.num_gpu_blocks == 0
    assert parse_metrics("") == VllmMetricsFacts()
