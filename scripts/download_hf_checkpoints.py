#!/usr/bin/env python
"""Tutorial step 1: download the official SAM 3D Objects weights. Same as `sam3d-med download`."""
import sys

from sam3d_med.cli import main

if __name__ == "__main__":
    sys.exit(main(["download", *sys.argv[1:]]))
