#!/usr/bin/env python
"""Tutorial step 5: PNG image + mask -> reconstructed mesh, overlay and renders. Same as `sam3d-med visualize finetuned`."""
import sys

from sam3d_med.cli import main

if __name__ == "__main__":
    sys.exit(main(["visualize", "finetuned", *sys.argv[1:]]))
