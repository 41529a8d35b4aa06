import sys

from vramphysics.cli import main

sys.exit(main())
