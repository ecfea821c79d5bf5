#!/usr/bin/env python
"""Tutorial step 2: TotalSegmentator NIfTI cases -> per-slice cache. Same as `sam3d-med preprocess`."""
import sys

from sam3d_med.cli import main

if __name__ == "__main__":
    sys.exit(main(["preprocess", *sys.argv[1:]]))
