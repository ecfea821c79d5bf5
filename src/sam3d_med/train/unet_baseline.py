"""Training of the supervised 3-D U-Net baseline (``model.unet_baseline``) on a preprocessed cache.

The training cases are those the LoRA run trains on: the first part of ``split_cases(case ids,
val_fraction, seed)`` (give the run's ``data.val_fraction`` and ``seed``; configs/train.yaml has 0.1
and 0). A sample is a (case, cached slice along any cached axis, class with at least one pixel on
that slice); each step draws ``batch_size`` of them uniformly, with replacement, from
``np.random.default_rng([seed, step])``. Nothing else is random once the weights are initialised
(from ``seed``), so a run is reproducible for a seed on the CPU. No augmentation: flips would swap
anatomical sides (left / right atrium), and the input slice must stay where it is.

Loss: binary cross-entropy with logits + soft Dice (MONAI ``DiceLoss(sigmoid=True)``, per sample),
AdamW at a constant learning rate. The checkpoint is written atomically every ``save_every`` steps
and at the end (``training.completed`` tells which), with the optimiser's state until it is complete;
an interrupted run (Ctrl-C) saves what it has. Running the same training again (same cache, settings
and ``out_path``) resumes from the steps saved, and the same losses and weights result as without the
interruption (the draws of step n depend only on (seed, n)); a completed one is not trained again.
An ``out_path`` that holds a U-Net trained with other settings is refused (name another).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..data.cache import case_ids_of, case_sdf, cases_of, slice_classes
from ..data.dataset import load_manifest, split_cases
from ..errors import ConfigError, InputError
from ..model.unet_baseline import (DEFAULT_CHANNELS, DEFAULT_SIDE, DEFAULT_STRIDES, UNetBaseline, cache_sample_input,
                                   check_side, load_unet_baseline, plane_in_window)
from ..runtime import keep_freed_memory_for_reuse

DEFAULT_VAL_FRACTION = 0.1  # configs/train.yaml data.val_fraction: the same split as the LoRA run
FINAL_LOSS_STEPS = 20  # final_loss: the mean loss of the last this many steps (one batch's loss is noisy)


def training_samples(manifest: dict, case_ids: list[str], num_classes: int) -> list[tuple[dict, dict, int]]:
    """(case, slice entry, class) for every cached slice of ``case_ids`` and every class 1..num_classes
    with at least one pixel on it, in a fixed order (case, file order, class)."""
    samples = []
    for case in sorted(cases_of(manifest, case_ids), key=lambda c: c["case_id"]):
        for entry in case["slices"]:
            for cls in slice_classes(entry):
                if cls <= num_classes:
                    samples.append((case, entry, cls))
    return samples


def _batch(cache_dir: Path, samples, indices, num_classes: int, model: UNetBaseline, sdfs: dict):
    """Inputs (B, C, side^3) and targets (B, side^3) of the drawn samples, on the network's window."""
    inputs, targets = [], []
    for i in indices:
        case, entry, cls = samples[int(i)]
        if case["case_id"] not in sdfs:
            sdfs[case["case_id"]] = case_sdf(cache_dir, case)
        sdf = sdfs[case["case_id"]]
        x = torch.from_numpy(cache_sample_input(cache_dir, case, entry, cls, num_classes, sdf=sdf))[None]
        y = torch.from_numpy(np.asarray(sdf[cls - 1]) < 0).float()
        inputs.append(model.to_side(x)[0])
        targets.append(model.fit_target(y))
    return torch.stack(inputs), torch.stack(targets)


def train_unet(train_cache, out_path, *, steps: int, batch_size: int, lr: float = 1e-3, seed: int = 0,
               val_fraction: float = DEFAULT_VAL_FRACTION, device="cpu", num_classes: int | None = None, log=print,
               progress: bool = True, side: int = DEFAULT_SIDE, channels=DEFAULT_CHANNELS, strides=DEFAULT_STRIDES,
               num_res_units: int = 1, save_every: int = 100, weight_decay: float = 1e-2) -> UNetBaseline:
    """Train the U-Net baseline on the training cases of ``train_cache`` and save it to ``out_path``
    (module doc). ``device``: "cpu", "cuda", "cuda:N" or "auto". ``num_classes``: default the cache's
    classes (fewer: only classes 1..num_classes). ``side``: the network's window (``model.unet_baseline``)."""
    from monai.losses import DiceLoss
    from tqdm import tqdm

    from ..devices import resolve_device

    if int(steps) < 1 or int(batch_size) < 1:
        raise ConfigError(f"steps and batch_size must be at least 1 (got {steps}, {batch_size})")
    if not lr > 0:
        raise ConfigError(f"the learning rate must be positive (got {lr})")
    if not 0 <= float(val_fraction) < 1:
        raise ConfigError(f"val_fraction must be in [0, 1) (got {val_fraction})")
    check_side(side, strides)
    cache_dir = Path(train_cache)
    manifest = load_manifest(cache_dir)
    names = manifest["class_names"]
    cache_classes = len(names)
    num_classes = cache_classes if num_classes is None else int(num_classes)
    if not 1 <= num_classes <= cache_classes:
        raise ConfigError(f"num_classes must be 1..{cache_classes} (the cache's classes), got {num_classes}")
    class_names = {str(c): names[str(c)] for c in range(1, num_classes + 1)}
    train_ids, val_ids = split_cases(case_ids_of(manifest), float(val_fraction), int(seed))
    samples = training_samples(manifest, train_ids, num_classes)
    seen = [s for s in samples if plane_in_window(s[0]["shape_ijk"], s[1]["axis"], s[1]["slice_idx"], side)]
    if len(seen) < len(samples):
        log(f"{len(samples) - len(seen)} samples skipped: their slice is outside the network's centre {side}^3 window")
        samples = seen
    if not samples:
        raise InputError(f"{cache_dir}: no training samples (training cases {train_ids})")
    device = torch.device(resolve_device(str(device)))
    if device.type == "cpu":
        keep_freed_memory_for_reuse()  # as the LoRA trainer: 64^3 batches reuse freed memory (runtime.py)
    shapes = sorted({tuple(c["shape_ijk"]) for c in cases_of(manifest, train_ids)})
    log(f"U-Net baseline: {len(train_ids)} training cases ({len(val_ids)} held out as the LoRA run's validation, "
        f"val_fraction {val_fraction}, seed {seed}), {len(samples)} (slice, class) samples, {num_classes} classes, "
        f"grids {', '.join('x'.join(map(str, s)) for s in shapes)} -> window {side}^3; {steps} steps of batch "
        f"{batch_size} on {device}")

    out_path = Path(out_path)
    settings = {"train_cache": str(cache_dir.resolve()), "planned_steps": int(steps), "batch": int(batch_size),
                "lr": float(lr), "seed": int(seed), "val_fraction": float(val_fraction),
                "weight_decay": float(weight_decay), "num_classes": num_classes, "side": int(side),
                "channels": [int(c) for c in channels], "strides": [int(s) for s in strides],
                "num_res_units": int(num_res_units)}
    earlier = _earlier_run(out_path, settings, device)
    if earlier is not None and earlier.training.get("completed"):
        log(f"U-Net baseline: {out_path} already holds this training, complete ({earlier.training['steps']} steps): "
            f"not trained again")
        return earlier
    if earlier is not None:
        model = earlier
    else:
        with torch.random.fork_rng(devices=[]):  # the weights from the seed, the caller's generator untouched
            torch.manual_seed(int(seed))
            model = UNetBaseline.create(num_classes, side, class_names, channels, strides, num_res_units,
                                        train_cache=str(cache_dir), train_case_ids=train_ids)
    model.network.to(device).train()
    optimizer = torch.optim.AdamW(model.network.parameters(), lr=float(lr), weight_decay=float(weight_decay))
    losses: list[float] = []
    minutes_before = 0.0
    if earlier is not None:
        optimizer.load_state_dict(earlier.optimizer_state)
        losses = [float(v) for v in earlier.training["losses"]]
        minutes_before = float(earlier.training.get("minutes", 0.0))
        log(f"U-Net baseline: resuming {out_path} at step {len(losses)} of {steps}")
    bce = torch.nn.BCEWithLogitsLoss()
    dice = DiceLoss(sigmoid=True)
    started = time.perf_counter()

    def save(completed: bool) -> None:
        recent = losses[-FINAL_LOSS_STEPS:]
        model.training = {"steps": len(losses), "planned_steps": int(steps), "batch": int(batch_size), "lr": float(lr),
                          "seed": int(seed), "val_fraction": float(val_fraction), "weight_decay": float(weight_decay),
                          "minutes": minutes_before + (time.perf_counter() - started) / 60,
                          "final_loss": float(np.mean(recent)) if recent else None,
                          "losses": [float(v) for v in losses], "completed": completed, "device": str(device),
                          "settings": settings}
        model.optimizer_state = None if completed else optimizer.state_dict()
        model.save(out_path)

    sdfs: dict = {}
    bar = tqdm(total=int(steps), initial=len(losses), desc="train-unet", unit="step", disable=not progress)
    try:
        for step in range(len(losses), int(steps)):
            draw = np.random.default_rng([int(seed), step]).integers(len(samples), size=int(batch_size))
            inputs, targets = _batch(cache_dir, samples, draw, num_classes, model, sdfs)
            inputs, targets = inputs.to(device), targets.to(device)
            logits = model.forward_side(inputs)
            loss = bce(logits, targets) + dice(logits[:, None], targets[:, None])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            bar.update(1)
            if save_every and (step + 1) % int(save_every) == 0 and step + 1 < int(steps):
                save(completed=False)
    except KeyboardInterrupt:
        bar.close()
        if losses:
            save(completed=False)
            log(f"interrupted after {len(losses)} steps: {out_path} holds that model (training.completed false); "
                f"run the same command again to resume")
        raise
    bar.close()
    save(completed=True)
    model.network.eval()
    log(f"U-Net baseline: final loss {model.training['final_loss']:.4f} (mean of the last "
        f"{min(FINAL_LOSS_STEPS, len(losses))} steps), {model.training['minutes']:.2f} min "
        f"({model.training['minutes'] * 60 / len(losses):.2f} s/step); saved {out_path}")
    return model


def _earlier_run(out_path: Path, settings: dict, device) -> UNetBaseline | None:
    """The U-Net saved at ``out_path`` by a training with these ``settings`` (to resume, or done), None
    when there is no file; ``InputError`` when the file holds another training (or is not a U-Net)."""
    if not out_path.exists():
        return None
    earlier = load_unet_baseline(out_path, device)
    theirs = earlier.training.get("settings")
    if theirs != settings:
        differ = sorted(k for k in settings if (theirs or {}).get(k) != settings[k])
        raise InputError(f"{out_path} holds a U-Net trained with other settings (different: {', '.join(differ)}): give "
                         f"another --out, or delete it to train anew")
    if not earlier.training.get("completed") and earlier.optimizer_state is None:
        raise InputError(f"{out_path}: an unfinished U-Net without its optimiser state: delete it to train anew")
    return earlier
