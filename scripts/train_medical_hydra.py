#!/usr/bin/env python
"""Tutorial step 3: fine-tune with Hydra overrides, e.g. `training.epochs=50 lora.rank=8` (configs/train.yaml)."""
import os
import sys

import hydra

from sam3d_med.train.hydra_entry import run_training_job

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs")


@hydra.main(version_base=None, config_path=CONFIG_DIR, config_name="train")
def main(cfg) -> None:
    code = run_training_job(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
