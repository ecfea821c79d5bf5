"""The rehearsal release: a small base model, packaged exactly like Meta's release, pretrained here.

Meta's weights cannot be downloaded on a CPU-only machine (nor in CI), so the demo and the tests
rehearse the user's workflow on a stand-in: the release's architecture at the ``rehearsal`` preset's
sizes, pretrained from scratch on a *source* population that is not hearts (generic shapes in
CT-like volumes, ``data.shapes``), in the object frame, as SAM3D was pretrained on generic objects.
Every weight trains (the VAE too); then the model is packaged like the release is today
(``save_official_layout(release=True)``: the same file names under ``checkpoints/``, YAML in the
official schema, a Lightning-style generator checkpoint, fp16 decoder and encoder: ``ss_encoder.ckpt``
is the rehearsal base's own encoder, trained with its decoder, as Meta released theirs on
2026-06-01). Every difference from the real release is a size in its YAML. Snapshots from before
then (0-byte encoder placeholders) are rehearsed with ``save_official_layout(...,
encoder_released=False)``.

``pretrain_rehearsal`` runs the whole recipe reproducibly (fixed seeds, fixed step counts, one
process) and writes the release folder and its training log.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .data.preprocess import PreprocessOptions, run_preprocess
from .data.shapes import CLASS_NAMES, write_shapes_dataset
from .io.atomic import atomic_write_text
from .model.checkpoint import save_official_layout
from .train.trainer import load_model_from_checkpoint, train

HUB_SUBFOLDER = "checkpoints"  # the Hub repository keeps the files under checkpoints/, as Meta's


def pretrain_rehearsal(cfg: DictConfig, release_dir: str | Path, work_dir: str | Path, cases: int, shapes_seed: int,
                       log=print) -> dict:
    """Generic shapes -> preprocessing -> pretraining as ``cfg`` says -> the release in
    ``release_dir/checkpoints/`` with ``TRAINING.md`` and ``train.log`` beside it. Returns a summary."""
    release_dir, work_dir = Path(release_dir), Path(work_dir)
    started = time.process_time(), time.perf_counter()
    raw, cache = work_dir / "shapes", Path(cfg.data.slice_cache_dir)
    log(f"1/4 {cases} generic-shape cases (seed {shapes_seed}) -> {raw}")
    write_shapes_dataset(raw, cases, seed=shapes_seed, progress=True)
    log(f"2/4 preprocessing -> {cache}")
    summary = run_preprocess(raw, cache, PreprocessOptions(classes=len(CLASS_NAMES), class_names=dict(CLASS_NAMES)),
                             workers=1, progress=True)
    if not summary.ok:
        raise RuntimeError(f"preprocessing failed for {summary.failed}")
    log(f"3/4 pretraining ({cfg.training.epochs} epochs x {cfg.training.max_steps_per_epoch} steps of "
        f"{cfg.training.batch_size}) -> {cfg.training.checkpoint_dir}")
    run_dir = work_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "train.log", mode="w")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logger = logging.getLogger("sam3d_med")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        result = train(cfg, run_dir)
    finally:
        logger.removeHandler(handler)
        handler.close()
    model, payload = load_model_from_checkpoint(Path(cfg.training.checkpoint_dir) / "last.pt")
    log(f"4/4 packaging like the release -> {release_dir / HUB_SUBFOLDER}")
    target = release_dir / HUB_SUBFOLDER
    if target.exists():
        shutil.rmtree(target)
    save_official_layout(model.float(), target, release=True)
    cpu_s, wall_s = time.process_time() - started[0], time.perf_counter() - started[1]
    history = payload["history"]
    files = {p.name: p.stat().st_size for p in sorted(target.iterdir())}
    log_path = run_dir / "train.log"
    if log_path.is_file():
        shutil.copyfile(log_path, release_dir / "train.log")
    atomic_write_text(release_dir / "TRAINING.md", _training_record(cfg, cases, shapes_seed, history, files, cpu_s,
                                                                    wall_s))
    return {"release": str(target), "files": files, "cpu_seconds": cpu_s, "wall_seconds": wall_s,
            "history": history, "status": result["status"]}


def _training_record(cfg: DictConfig, cases: int, shapes_seed: int, history: list[dict], files: dict, cpu_s: float,
                     wall_s: float) -> str:
    rows = "\n".join(f"| {h['epoch']} | {'-' if h.get('train_loss') is None else format(h['train_loss'], '.4f')} | "
                     f"{h.get('val_loss', float('nan')):.4f} | {h.get('val_dice', float('nan')):.4f} | "
                     f"{h.get('val_dice_one_step', float('nan')):.4f} |" for h in history)
    sizes = "\n".join(f"| {name} | {size:,d} |" for name, size in files.items())
    return f"""# The rehearsal release: how it was made

A stand-in for Meta's SAM 3D Objects release, packaged like it (see `sam3d_med/rehearsal.py`):
the release's architecture at the `rehearsal` preset's sizes, pretrained from scratch on generic
shapes (not hearts), in the object frame. Made by `python scripts/pretrain_rehearsal.py` on
{platform.machine()} ({torch.get_num_threads()} CPU threads), torch {torch.__version__}:
**{cpu_s / 60:.1f} CPU minutes, {wall_s / 60:.1f} minutes wall**.

- data: {cases} synthetic generic-shape cases (`sam3d_med.data.shapes`, seed {shapes_seed}), three
  objects each, preprocessed with the tutorial's settings (3 mm, three slicing axes)
- training: {cfg.training.epochs} epochs x {cfg.training.max_steps_per_epoch} steps of batch
  {cfg.training.batch_size}, every weight (VAE included), learning rate {cfg.training.learning_rate},
  seed {cfg.seed}; the packaged weights are those of the last step
- the SS encoder (`ss_encoder.ckpt`, fp16, with `ss_encoder.yaml`) is the base's own, trained jointly
  with its decoder (the flow's targets during pretraining were its posterior means), as Meta's
  release holds its encoder since 2026-06-01

Validation (held-out generic-shape cases; Dice on the scan grid of reconstructions sampled from pure
noise, and of the one-step estimate from pure noise):

| epoch | train loss | val loss | val Dice (sampled) | val Dice (one step) |
| --- | --- | --- | --- | --- |
{rows}

Files (`checkpoints/`, bytes):

| file | size |
| --- | --- |
{sizes}

The resolved training configuration:

```yaml
{OmegaConf.to_yaml(cfg)}```

Summary as JSON: {json.dumps({"cpu_minutes": round(cpu_s / 60, 1), "wall_minutes": round(wall_s / 60, 1)})}
"""
