#!/usr/bin/env python
"""Tutorial step 4: evaluate a checkpoint on a test cache. Same as `sam3d-med eval`."""
import sys

from sam3d_med.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
