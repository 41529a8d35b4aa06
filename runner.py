"""Calibrate and benchmark the models of test_setups.yaml (see README). Thin wrapper."""

import sys

from vramphysics.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
