"""`make demo-vlm`'s inputs: config.cpu-vlm.yaml validates and plans the cells the issue asks
for, and test_setups.yaml's `demo-vlm` setup parses into the two image limits. (That the vLLM
engine finds the generated folder is in tests/test_demo_vlm.py, which needs torch.)"""

from __future__ import annotations

from pathlib import Path

from vramphysics.bench.workload import plan_cells
from vramphysics.config import load_config
from vramphysics.engines.vllm.args import server_args
from vramphysics.setups import load_setups

ROOT = Path(__file__).resolve().parent.parent


def test_the_config_validates_with_images_at_two_resolutions_and_three_counts() -> None:
    cfg = load_config(ROOT / "config.cpu-vlm.yaml")
    vllm = cfg.engines.section("vllm")
    assert vllm.model_dir == ROOT / "models"  # type: ignore[attr-defined]
    assert vllm.host == "127.0.0.1"  # type: ignore[attr-defined]
    assert [(i.count, i.width, i.height) for i in cfg.bench.images] == [
        (1, 64, 64),
        (1, 256, 128),
        (4, 64, 64),
    ]
    ctx = max(cfg.sweep.contexts)
    cells = [c.cell for c in plan_cells(cfg.bench, ctx)]
    assert cells == [
        "p64-o16-c1",  # the 0-image cell: the baseline of tokens per image and TTFT
        "p64-o16-c1-i1x64x64",
        "p64-o16-c1-i1x256x128",
        "p64-o16-c1-i4x64x64",
    ]
    # 4 images of 107 tokens, the prompt and the output fit the benchmark's context
    assert 4 * 107 + 64 + 16 < ctx


def test_the_setup_runs_the_tiny_vlm_at_image_limits_1_and_4() -> None:
    specs = load_setups(ROOT / "test_setups.yaml")["demo-vlm"]
    assert [(s.engine, s.key, s.img_lim) for s in specs] == [
        ("vllm", "vl_tiny-vlm", 1),
        ("vllm", "vl_tiny-vlm", 4),
    ]
    args = server_args(
        model="models/tiny-vlm",
        ctx=4096,
        gpu_memory_utilization=0.9,
        host="127.0.0.1",
        port=8310,
        limit_mm_per_prompt=specs[0].limit_mm_per_prompt,
    )
    assert args[args.index("--limit-mm-per-prompt") + 1] == '{"image": 1}'
