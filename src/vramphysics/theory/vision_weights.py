"""The vision tower's weights vs the language model's, from the safetensors headers.

A tensor belongs to the vision tower when a component of its dotted name is one of the tower
names checkpoints use (`visual` in Qwen2-VL, `vision_model` in Idefics3/SmolVLM, `vision_tower`
in LLaVA and Gemma 3), to the projector when it is a connector (`connector`,
`multi_modal_projector`, `mm_projector`), and to the language model otherwise. The first
matching component decides, so Qwen2-VL's `visual.merger` counts with the tower.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vramphysics.theory.safetensors import tensor_bytes_by_name

_TOWER = frozenset({"visual", "vision_model", "vision_tower", "vision_encoder", "vpm"})
_PROJECTOR = frozenset({"connector", "multi_modal_projector", "mm_projector"})


@dataclass(frozen=True)
class VisionWeights:
    """Bytes of a checkpoint's tensors as stored, by part."""

    vision_bytes: int  # the vision tower (with its own merger/patch embedding)
    projector_bytes: int  # the connector from the tower to the language model
    language_bytes: int  # everything else: embeddings, decoder layers, LM head
    vision_tensors: int
    projector_tensors: int
    language_tensors: int

    @property
    def total_bytes(self) -> int:
        return self.vision_bytes + self.projector_bytes + self.language_bytes

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["total_bytes"] = self.total_bytes
        return d


def tensor_part(name: str) -> str:
    """ "vision", "projector" or "language" for one tensor name."""
    for component in name.split("."):
        if component in _TOWER:
            return "vision"
        if component in _PROJECTOR:
            return "projector"
    return "language"


def split_weights(sizes: dict[str, int]) -> VisionWeights:
    """Sum tensor bytes (by name) into the vision tower, the projector and the language model."""
    bytes_by = {"vision": 0, "projector": 0, "language": 0}
    count_by = {"vision": 0, "projector": 0, "language": 0}
    for name, nbytes in sizes.items():
        part = tensor_part(name)
        bytes_by[part] += nbytes
        count_by[part] += 1
    return VisionWeights(
        vision_bytes=bytes_by["vision"],
        projector_bytes=bytes_by["projector"],
        language_bytes=bytes_by["language"],
        vision_tensors=count_by["vision"],
        projector_tensors=count_by["projector"],
        language_tensors=count_by["language"],
    )


def vision_weights_from_safetensors(folder: Path) -> VisionWeights | None:
    """The split for a model folder; None when it has no safetensors files."""
    sizes = tensor_bytes_by_name(Path(folder))
    return split_weights(sizes) if sizes else None
