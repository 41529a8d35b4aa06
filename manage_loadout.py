"""Status of engines and GPUs, apply a loadout preset, kill managed services (see README). Thin."""

import sys

from vramphysics.loadout import main

if __name__ == "__main__":
    sys.exit(main())
