#!/usr/bin/env python
"""Pretrain the rehearsal base on generic shapes and package it like Meta's release (release/rehearsal/).

    python scripts/pretrain_rehearsal.py [--cases 60] [--epochs 8] [--steps 60] [--out release/rehearsal]
"""
import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "release" / "rehearsal"), help="release folder (checkpoints/ inside)")
    parser.add_argument("--work", default="rehearsal_work", help="generic shapes, cache, checkpoints, log")
    parser.add_argument("--cases", type=int, default=60)
    parser.add_argument("--shapes_seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per epoch")
    parser.add_argument("overrides", nargs="*", help="more key=value settings for the training config")
    args = parser.parse_args()
    from hydra import compose, initialize_config_dir  # after parsing: an argument error is immediate

    from sam3d_med.rehearsal import pretrain_rehearsal
    from sam3d_med.runtime import keep_freed_memory_for_reuse

    keep_freed_memory_for_reuse()
    work = Path(args.work).resolve()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose(config_name="train", overrides=[
            "experiment=rehearsal_pretrain", f"data.slice_cache_dir={work / 'cache'}",
            f"training.checkpoint_dir={work / 'checkpoints'}", f"training.epochs={args.epochs}",
            f"training.max_steps_per_epoch={args.steps}", *args.overrides])
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    summary = pretrain_rehearsal(cfg, args.out, work, args.cases, args.shapes_seed)
    print(f"release written to {summary['release']} ({sum(summary['files'].values()) / 1e6:.1f} MB) in "
          f"{summary['cpu_seconds'] / 60:.1f} CPU minutes")
    sys.exit(0)
