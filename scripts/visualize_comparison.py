#!/usr/bin/env python
"""Tutorial step 5: NIfTI scan (+ labels) -> comparison grid and meshes. Same as `sam3d-med visualize comparison`."""
import sys

from sam3d_med.cli import main

if __name__ == "__main__":
    sys.exit(main(["visualize", "comparison", *sys.argv[1:]]))
