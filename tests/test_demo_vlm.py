"""The tiny vision-language model: what the generator writes, the theory read back from it, and
(slow) vLLM's CPU build serving it: prompt tokens per image equal the theory exactly.

The real-engine test starts vLLM once (80 s on two idle cores, several minutes on a busy
machine) with `#img_lim=4`.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from vramphysics.cli import main
from vramphysics.config import load_config
from vramphysics.demo_vlm import (
    FAKE_TOKEN,
    GLOBAL_TOKEN,
    IMAGE_TOKEN,
    VLM_SHAPE,
    write_tiny_vlm,
)
from vramphysics.engines.vllm.config import VllmConfig
from vramphysics.engines.vllm.engine import VllmEngine
from vramphysics.engines.vllm.log import encoder_components, parse_log_file
from vramphysics.setups import load_setups
from vramphysics.theory import theory_from_hf_config
from vramphysics.theory.vision import Idefics3Processor, image_tokens
from vramphysics.theory.vision_load import load_vision_processor, predict_media_tokens
from vramphysics.theory.vision_weights import vision_weights_from_safetensors

HAS_VLLM = importlib.util.find_spec("vllm") is not None
NO_VLLM = "vLLM is not installed here (`make install-vllm` installs its CPU build)"
GIB = 2**30
ROOT = Path(__file__).resolve().parent.parent
# (width, height) -> tokens, worked out by hand in tests/test_theory_vision.py
SIZES = {(64, 64): 107, (256, 128): 57}


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not HAS_VLLM:  # the generator needs torch and transformers, which come with vLLM
        pytest.skip(NO_VLLM)
    return write_tiny_vlm(tmp_path_factory.mktemp("models") / "tiny-vlm")


def test_the_folder_has_what_vllm_loads(tiny_vlm: Path) -> None:
    for name in (
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "processor_config.json",
        "tokenizer.json",
        "chat_template.jinja",
    ):
        assert (tiny_vlm / name).is_file(), name
    assert not tiny_vlm.with_name("tiny-vlm.partial").exists()


def test_theory_read_back_from_the_folder(tiny_vlm: Path) -> None:
    proc = load_vision_processor(tiny_vlm)
    assert proc == Idefics3Processor(
        "idefics3", longest_edge=256, tile_edge=64, image_seq_len=4, newline_pair_tokens=1
    )
    for (w, h), tokens in SIZES.items():
        assert image_tokens(proc, w, h).tokens == tokens
    theory = theory_from_hf_config(tiny_vlm / "config.json", weights_dir=tiny_vlm)
    assert theory.kv_bytes_per_token == VLM_SHAPE.kv_bytes_per_token() == 512
    weights = vision_weights_from_safetensors(tiny_vlm)
    assert weights is not None and weights.total_bytes == theory.weights_bytes
    # bf16: 2 x 64 x (3 x 16 x 16) patch embedding is part of the tower; the connector is
    # one 256 x 128 projection (64 x 2^2 pixel-shuffled features -> the text hidden size)
    assert weights.projector_bytes == 2 * 64 * 4 * 128
    assert weights.vision_bytes > 2 * 64 * 3 * 16 * 16


def test_predict_media_tokens_of_the_generated_folder(tiny_vlm: Path) -> None:
    for (width, height), tokens in SIZES.items():
        assert predict_media_tokens(tiny_vlm, "image", width, height) == tokens
    assert predict_media_tokens(tiny_vlm, "video", 64, 64, frames=2) is None  # images only


def test_the_vllm_engine_finds_the_folder_of_the_demo_vlm_setup(
    tiny_vlm: Path, tmp_path: Path
) -> None:
    """config.cpu-vlm.yaml's vLLM section with model_dir at the generated folder's parent, as
    `make demo-vlm` has it (models/tiny-vlm): both IDs of the setup resolve to the folder."""
    cfg = load_config(ROOT / "config.cpu-vlm.yaml").engines.section("vllm")
    cfg = cfg.model_copy(update={"model_dir": tiny_vlm.parent})
    assert isinstance(cfg, VllmConfig)
    specs = load_setups(ROOT / "test_setups.yaml")["demo-vlm"]
    with VllmEngine(cfg, state_dir=tmp_path, log_dir=tmp_path / "logs") as engine:
        for spec in specs:
            engine.validate(spec)
            found = engine.check_available(spec)
            assert found.present, found.detail
            assert found.location is not None and Path(found.location) == tiny_vlm
            theory = engine.theory(spec)
            assert (
                theory is not None and theory.kv_bytes_per_token == 512
            )  # 2 layers x 2 KV heads x 32 x K+V x bf16


def test_theory_equals_the_transformers_processor(tiny_vlm: Path) -> None:
    """The processor itself, on real images, over sizes that exercise rounding and aspect."""
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_vlm)
    proc = load_vision_processor(tiny_vlm)
    prompt = f"user:{IMAGE_TOKEN}Describe"
    text_only = len(processor.tokenizer("user:Describe", add_special_tokens=False)["input_ids"])
    for w, h in [(64, 64), (256, 128), (100, 30), (30, 100), (65, 64), (1000, 10), (300, 200)]:
        ids = processor(text=[prompt], images=[[Image.new("RGB", (w, h))]])["input_ids"][0]
        assert len(ids) - text_only == image_tokens(proc, w, h).tokens, (w, h)


def test_tokenizer_has_the_vision_tokens_as_single_tokens(tiny_vlm: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_vlm)
    text = f"{FAKE_TOKEN}<row_2_col_3>{IMAGE_TOKEN}{GLOBAL_TOKEN}<end_of_utterance>"
    assert len(tok(text, add_special_tokens=False)["input_ids"]) == 5
    assert len(tok("\n\n", add_special_tokens=False)["input_ids"]) == 1  # as in SmolVLM
    assert tok.convert_tokens_to_ids(IMAGE_TOKEN) == 3


def test_make_demo_model_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not HAS_VLLM:
        pytest.skip(NO_VLLM)
    assert main(["make-demo-model", "--vlm", str(tmp_path / "vlm")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (tmp_path / "vlm" / "preprocessor_config.json").is_file()


# --------------------------------------------------------------------------- the real engine


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _image_url(width: int, height: int) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (120, 30, 200)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _chat(base_url: str, model: str, sizes: list[tuple[int, int]]) -> httpx.Response:
    parts: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": _image_url(w, h)}} for w, h in sizes
    ]
    parts.append({"type": "text", "text": "Describe this image"})
    body = {
        "model": model,
        "messages": [{"role": "user", "content": parts}],
        "max_tokens": 2,
        "temperature": 0,
    }
    return httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=300)


@pytest.fixture(scope="module")
def served(tiny_vlm: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from vramphysics.engines.vllm import VllmEngine
    from vramphysics.engines.vllm.config import VllmConfig
    from vramphysics.setups import parse_model_id

    cfg = VllmConfig.model_validate(
        {
            "port": _port(),
            "model_dir": tiny_vlm.parent,
            "start_timeout_s": 600,
            "request_timeout_s": 300,
            "env": {"HF_HUB_OFFLINE": "1"},
            "cpu_kvcache_space_gib": [1],
        }
    )
    tmp = tmp_path_factory.mktemp("vllm-vlm")
    engine = VllmEngine(cfg, state_dir=tmp / "state", log_dir=tmp / "logs")
    try:
        engine.start(parse_model_id(f"vl_{tiny_vlm.name}#img_lim=4"), 4096)
        engine.wait_ready()
        yield engine
    finally:
        engine.close()


@pytest.mark.skipif(not HAS_VLLM, reason=NO_VLLM)
@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_counts_exactly_the_theory_per_image(served: Any, tiny_vlm: Path) -> None:
    model = httpx.get(f"{served.base_url}/v1/models", timeout=10).json()["data"][0]["id"]
    proc = load_vision_processor(tiny_vlm)

    def prompt_tokens(sizes: list[tuple[int, int]]) -> int:
        r = _chat(served.base_url, model, sizes)
        assert r.status_code == 200, r.text
        return int(r.json()["usage"]["prompt_tokens"])

    text_only = prompt_tokens([])
    for (w, h), tokens in SIZES.items():
        measured = prompt_tokens([(w, h)]) - text_only
        assert measured == image_tokens(proc, w, h).tokens == tokens, (w, h)
    assert prompt_tokens([(64, 64)] * 4) - text_only == 4 * SIZES[(64, 64)]
    # one image too many: vLLM refuses the request, and says why
    refused = _chat(served.base_url, model, [(64, 64)] * 5)
    assert refused.status_code == 400
    assert "At most 4 image(s) may be provided in one prompt" in refused.text
    # the KV pool: VLLM_CPU_KVCACHE_SPACE 1 GiB at the theory's 512 bytes per token
    mem = served.memory_report()
    assert mem is not None and mem.kv_pool_bytes == GIB
    assert mem.kv_pool_bytes / mem.kv_tokens == VLM_SHAPE.kv_bytes_per_token() == 512


@pytest.mark.skipif(not HAS_VLLM, reason=NO_VLLM)
@pytest.mark.slow
@pytest.mark.vllm
def test_the_server_log_states_the_encoder_budget(served: Any, tiny_vlm: Path) -> None:
    """The line as vLLM CPU writes it, prefixes and all, read by the log parser: the budget is
    the batched-token budget (2048) and the profiling run used 2048 // 68 = 30 images of the
    largest feature size (4 x 4 tiles + global = 17 x 4 features)."""
    logs = list(served.log_dir.glob("vllm-*.log"))
    assert logs, "no server log"
    facts = parse_log_file(logs[0])
    assert (facts.encoder_budget_tokens, facts.encoder_profiled_items) == (2048, 30)
    assert facts.encoder_profiled_modality == "image"
    assert encoder_components(facts) == {
        "encoder_budget_tokens": 2048,
        "encoder_profiled_items": 30,
        "encoder_profiled_modality": "image",
    }
