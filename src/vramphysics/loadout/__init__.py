"""`manage_loadout.py`: status of engines and GPUs, applying a loadout preset, killing services.

- `status`: each configured engine (up/down, version, what it holds and the memory it reports),
  each NVIDIA GPU (name, total, used, free; per process where the driver says), and predicted vs
  reported memory for what is loaded.
- `apply`: the presets are `loadouts:` in config.yaml (lists of model IDs with their `#ctx`). The
  predicted sum (calibration, else theory from the model's metadata, labelled; vLLM at what it
  reserves, utilization x total with the margin) is checked against free device memory before
  anything starts; a loadout that does not fit is refused, naming its biggest consumers. What
  cannot be checked (a model with neither calibration nor theory, no free-memory figure) is
  refused unless `--force`. What is missing is started and left running.
- `kill`: stop what this tool started or manages (recorded processes, labelled containers), and
  nothing else.

Modules: `resident` (status: what runs now), `plan` (a preset's items and their predicted need),
`check` (does it fit; what `--force` waived), `start` (apply, kill), `cli` (the command line).
"""

from vramphysics.loadout.check import check_fits, unchecked
from vramphysics.loadout.cli import main
from vramphysics.loadout.plan import LoadoutItem, LoadoutPlan, plan_loadout
from vramphysics.loadout.resident import LoadoutStatus, Prediction, parse_model_id_name, status
from vramphysics.loadout.start import apply, kill

__all__ = [
    "LoadoutItem",
    "LoadoutPlan",
    "LoadoutStatus",
    "Prediction",
    "apply",
    "check_fits",
    "kill",
    "main",
    "parse_model_id_name",
    "plan_loadout",
    "status",
    "unchecked",
]
