#!/usr/bin/env python
"""Flow targets: the released SS encoder vs decoder inversion vs encoder + refinement, as training makes
them (``trainer.prepare_latent_targets``), on the same cases in one run.

For each method, ``--runs`` times from scratch (the cached targets removed before each run): wall
seconds per volume (median over runs) and the per-class round-trip Dice of decoder(target) > 0
against the true occupancy (mean over volumes; deterministic, so the same every run). The ratio
column is each method's time over the encoder's, measured in the same run.

Methods (the demo's settings, ``configs/experiment/demo_cpu.yaml``, unless overridden):
- ``encoder``: ``latent_targets.source=encoder`` with ``target_dice=0`` (posterior means, nothing refined);
- ``encoder+refine``: the default, ``source=auto`` with the release's encoder: means, refined by
  inversion from the mean where the round trip is below ``--target_dice``;
- ``inversion``: ``source=inversion``: the decoder inverted from the generator's own sample, as
  training does without an encoder (``--inversion_steps``).

Default: the rehearsal release and the demo's 12 training phantoms (seed 0), on 2 CPU cores about
10 minutes. With Meta's release: ``--release checkpoints/hf --cache dataset/ts_processed --experiment ''
--device cuda``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir

from sam3d_med.data.dataset import load_manifest, split_cases
from sam3d_med.data.phantom import write_phantom_dataset
from sam3d_med.data.preprocess import PreprocessOptions, run_preprocess
from sam3d_med.runtime import keep_freed_memory_for_reuse
from sam3d_med.train.latent_targets import TARGETS_DIR
from sam3d_med.train.trainer import Ranks, build_model, configure_trainable, place_on_device, prepare_latent_targets

REPO = Path(__file__).resolve().parents[1]
METHODS = {"encoder": ["latent_targets.source=encoder", "latent_targets.target_dice=0.0"],
           "encoder+refine": ["latent_targets.source=auto"],
           "inversion": ["latent_targets.source=inversion"]}


def config(args, method: str):
    overrides = [f"experiment={args.experiment}"] if args.experiment else []
    overrides += [f"model.checkpoint_dir={Path(args.release).resolve()}", f"data.slice_cache_dir={args.cache}",
                  f"device={args.device}", f"latent_targets.steps={args.inversion_steps}",
                  f"latent_targets.target_dice={args.target_dice}", *METHODS[method], *args.overrides]
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        return compose(config_name="train", overrides=overrides)


def per_class(folder: Path, cases: list[str], names: dict[int, str]) -> dict[str, float]:
    values: dict[str, list[float]] = {}
    for case in cases:
        record = json.loads((folder / f"{case}.json").read_text())
        for index, dice in enumerate(record["dice"], start=1):
            if dice is not None:
                values.setdefault(names.get(index, f"class {index}"), []).append(dice)
    return {name: float(np.mean(v)) for name, v in values.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", default=str(REPO / "release" / "rehearsal" / "checkpoints"))
    parser.add_argument("--cache", default=None, help="preprocessed cache (default: the demo's 12 phantoms, seed 0)")
    parser.add_argument("--experiment", default="demo_cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--inversion_steps", type=int, default=30, help="the demo's 30")
    parser.add_argument("--target_dice", type=float, default=0.95, help="the demo's 0.95")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("overrides", nargs="*", help="more key=value training settings")
    args = parser.parse_args()
    keep_freed_memory_for_reuse()
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="bench_targets_"))
    if args.cache is None:
        write_phantom_dataset(work / "raw", 12, seed=0)
        args.cache = str(work / "cache")
        assert run_preprocess(work / "raw", args.cache, PreprocessOptions(), workers=1, progress=False,
                              log=lambda m: None).ok
    else:  # the user's cache seen through links, so that its own cached targets are never removed
        view = work / "cache"
        view.mkdir()
        for entry in Path(args.cache).resolve().iterdir():
            if entry.name != TARGETS_DIR:
                (view / entry.name).symlink_to(entry)
        args.cache = str(view)
    manifest = load_manifest(args.cache)
    names = {int(k): v for k, v in manifest.get("class_names", {}).items()}
    rows = []
    for method in args.methods.split(","):
        cfg = config(args, method)
        model, identity = build_model(cfg)
        configure_trainable(model, cfg, quiet=True)
        ranks = Ranks(cfg.device)
        place_on_device(model, cfg, ranks.device, "object")
        train_ids, val_ids = split_cases([c["case_id"] for c in manifest["cases"]], float(cfg.data.val_fraction),
                                         int(cfg.seed))
        ids = train_ids + val_ids
        times, folder = [], None
        for _ in range(args.runs):
            shutil.rmtree(Path(args.cache) / TARGETS_DIR, ignore_errors=True)
            started = time.perf_counter()
            folder = prepare_latent_targets(model, cfg, manifest, ids, ranks, identity)
            times.append(time.perf_counter() - started)
        volumes = sum(1 for case in ids for d in json.loads((folder / f"{case}.json").read_text())["dice"]
                      if d is not None)
        refined = sum(sum(bool(r) for r in (json.loads((folder / f"{case}.json").read_text()).get("refined") or []))
                      for case in ids)
        rows.append((method, statistics.median(times) / volumes, per_class(folder, ids, names), volumes, refined))
        print(f"{method}: {statistics.median(times):.1f} s for {volumes} volumes (runs: "
              f"{', '.join(f'{t:.1f}' for t in times)} s)", flush=True)
    reference = next((r[1] for r in rows if r[0] == "encoder"), rows[0][1])
    classes = list(rows[0][2])
    print(f"\n{'method':<16}{'ms/volume':>10}{'x encoder':>10}{'refined':>9}" + "".join(f"{c[:12]:>13}" for c in classes)
          + f"{'mean':>8}")
    for method, seconds, dice, volumes, refined in rows:
        print(f"{method:<16}{1000 * seconds:>10.1f}{seconds / reference:>10.1f}{refined:>5}/{volumes:<3}"
              + "".join(f"{dice[c]:>13.3f}" for c in classes) + f"{np.mean(list(dice.values())):>8.3f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
