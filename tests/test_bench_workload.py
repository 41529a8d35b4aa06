"""The benchmark grid (bench.workload) and its prompts (bench.prompts)."""

from __future__ import annotations

import pytest

from vramphysics.bench.prompts import make_prompts
from vramphysics.bench.workload import Grid, plan_cells
from vramphysics.config import BenchConfig
from vramphysics.errors import ConfigError


def test_cells_are_prompt_lengths_by_concurrency() -> None:
    cfg = BenchConfig(prompt_tokens=[1024, 128], concurrency=[4, 1], output_tokens=32)
    cells = plan_cells(cfg, 8192)
    assert [c.cell for c in cells] == [
        "p128-o32-c1",
        "p128-o32-c4",
        "p1024-o32-c1",
        "p1024-o32-c4",
    ]
    assert all(c.note == "" for c in cells)


def test_depth_and_clipping_are_said() -> None:
    cfg = BenchConfig(prompt_tokens=[128, 4000], depth=[0.5, 1.0], output_tokens=64)
    cells = plan_cells(cfg, 4096)
    by_n = {c.prompt_tokens: c.note for c in cells}
    assert set(by_n) == {128, 2048, 4000, 4031}  # 1.0 x 4096 is clipped to 4096 - 64 - 1
    assert by_n[2048] == "depth 0.5 of ctx 4096"
    assert "clipped to 4031" in by_n[4031]
    cfg2 = BenchConfig(prompt_tokens=[8000], output_tokens=64)
    (only,) = plan_cells(cfg2, 4096)
    assert only.prompt_tokens == 4031 and "8000 prompt tokens asked" in only.note


def test_concurrency_held_to_what_the_engine_serves() -> None:
    cfg = BenchConfig(prompt_tokens=[128], concurrency=[1, 4])
    cells = plan_cells(cfg, 2048, max_concurrency=(1, "it serializes requests"))
    (only,) = cells
    assert only.concurrency == 1 and only.note == ""  # 1 was asked: the 4 folds into it
    cells = plan_cells(
        BenchConfig(prompt_tokens=[128], concurrency=[4]), 2048, max_concurrency=(1, "x")
    )
    assert cells[0].concurrency == 1 and "concurrency 4 asked, held to 1: x" in cells[0].note


def test_warm_cells_are_named() -> None:
    (c,) = plan_cells(BenchConfig(prompt_tokens=[64]), 1024, warm=True)
    assert c.cell == "p64-o64-c1-warm" and c.warm


def test_grid_overrides_one_call() -> None:
    cfg = BenchConfig(prompt_tokens=[128], depth=[0.5])
    got = Grid(
        prompt_tokens=[256, 256, 512], output_tokens=16, repetitions=3, concurrency=[2]
    ).apply(cfg)
    assert got.prompt_tokens == [256, 512] and got.depth == []
    assert (got.output_tokens, got.repetitions, got.concurrency) == (16, 3, [2])


@pytest.mark.parametrize(
    "bad",
    [
        {"prompt_tokens": [], "depth": []},
        {"prompt_tokens": [0]},
        {"depth": [1.5]},
        {"concurrency": [0]},
        {"output_tokens": 1},
    ],
)
def test_bad_grid_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        BenchConfig.model_validate(bad)


def test_bad_grid_in_config_names_the_key(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from vramphysics.config import load_config

    path = tmp_path / "config.yaml"
    path.write_text("bench:\n  concurrency: [0]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="bench.concurrency"):
        load_config(path)


def _word_count(text: str) -> int:
    return 1 + len(text.split())  # a BOS token and one token a word


def _char_count(text: str) -> int:
    return 3 + len(text)  # a template of 3 tokens and one token a character


@pytest.mark.parametrize("count", [_word_count, _char_count])
@pytest.mark.parametrize("target", [40, 128, 1024, 4096])
def test_prompts_have_the_exact_count_and_unique_prefixes(count, target: int) -> None:  # type: ignore[no-untyped-def]
    p = make_prompts("p-c1", target, count)
    assert p.tokens == target
    prompts = [p.prompt(i) for i in range(7)]
    assert all(count(x) == target for x in prompts)
    assert len(set(prompts)) == 7
    assert all(
        x.startswith(f"{i}0000 is request {i:05d} of cell p-c1. ") for i, x in enumerate(prompts)
    )
    # consecutive requests differ at their first character: no prefix reuse between them
    assert all(a[0] != b[0] for a, b in zip(prompts, prompts[1:], strict=False))
    assert "A language model keeps".startswith(p.body[:20])  # real prose


def test_warm_prompts_repeat_one_prompt() -> None:
    p = make_prompts("w", 100, _char_count, warm=True)
    assert p.prompt(0) == p.prompt(5)


def test_a_target_below_the_prefix_gets_the_prefix() -> None:
    p = make_prompts("p-c1", 3, _word_count)
    assert p.body == "" and p.tokens == _word_count("99999 is request 99999 of cell p-c1. ")
