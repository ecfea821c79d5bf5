"""Flow targets without the SS encoder: invert the released decoder, cache the latents.

The flow learns to generate the SS VAE's latents x1 of the true occupancy. Meta released the VAE's
decoder but not its encoder (0-byte placeholder files), so for every (case, class) occupancy O
(in the object frame: the structure in its own cube, ``data.object_frame``; in the volume frame:
the class's voxels on the case's grid; both from the cache's signed distances) the target latent
is found by inverting the frozen decoder D:

    z* = argmin_z  BCE(D(z), O) + softDice(D(z), O) + l2 * mean((z - z0)^2)

with Adam from z = z0, keeping for each volume the iterate whose round trip D(z) > 0 has the best
Dice against O (an optimisation batch stops once every volume in it reaches ``target_dice``).

The start z0 (``init``): ``generator`` (default) is the pretrained generator's own sample for that
structure (conditioned on its largest slice, ``init_steps`` sampler steps, adapters off): the target
is then the latent nearest to what the pretrained model already produces that decodes to the true
shape, so it stays in the generator's latent distribution and fine-tuning has to learn only the
difference (measured on the rehearsal release: LoRA from zero-started targets ended *below* the base
model, from in-distribution targets above it; see RESULTS.md). ``zero``: z0 = 0.

Why inversion of the decoder, of the options there are:
- it is exact where it matters: the targets are, by construction, latents that the *released*
  decoder turns into the true shape; the round-trip Dice it reports is measured, per class, on the
  user's own data, and is the ceiling of what the fine-tuned model can reach through this decoder;
- it trains no new network: an encoder fitted to the frozen decoder would need its own training and
  validation (and samples of the 1.6 B-parameter generator to stay in its latent distribution), and
  would still leave an amortisation gap on shapes unlike its training data; the public TRELLIS
  encoder belongs to another decoder and would first have to be measured through SAM3D's;
- it stays in the generator's latent distribution: it starts from the generator's own sample and
  the l2 term holds it near that start; it is deterministic (seeded sampling, fixed optimiser).
Its cost is paid once per data set: ``steps`` decoder forward/backward passes per volume, batched,
cached beside the preprocessing cache and resumable (a case's files are written when it is done).

Cache: ``<cache>/latent_targets/<key>/`` where key hashes the decoder's weights, these settings and
the target frame; ``<case>.npy`` float32 (C, c, R, R, R) latents of classes 1..C (zeros for a class
absent from the case), ``<case>.json`` {"dice": [...]} written last (marks the case finished),
``settings.json`` (what made them).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..data.dataset import case_volume_window
from ..data.object_frame import DEFAULT_CUBE_MARGIN, cube_sdf_mm, object_cube
from ..errors import InputError
from ..io.atomic import atomic_save_npy, atomic_write_json
from ..model.checkpoint import tensors_digest

log = logging.getLogger("sam3d_med.train")
TARGETS_DIR = "latent_targets"
FORMAT = "sam3d-med-latent-targets-1"


@dataclass
class InversionSettings:
    steps: int = 150
    learning_rate: float = 0.1
    l2: float = 1e-3
    batch_size: int = 8
    target_dice: float = 0.98  # an optimisation batch stops when every volume reached this
    init: str = "generator"  # z0: "generator" (the pretrained model's own sample) or "zero"
    init_steps: int = 12  # sampler steps of the generator's sample


def decoder_fingerprint(decoder: torch.nn.Module) -> str:
    """SHA-256 of the decoder's weights (names, shapes, dtypes and values)."""
    return tensors_digest(decoder.state_dict())


def _dice(logits: torch.Tensor, occupancy: torch.Tensor) -> torch.Tensor:
    pred, true = (logits > 0).flatten(1).float(), occupancy.flatten(1)
    total = pred.sum(1) + true.sum(1)
    return torch.where(total > 0, 2 * (pred * true).sum(1) / total.clamp(min=1), torch.ones_like(total))


def invert_decoder(decoder: torch.nn.Module, occupancy: torch.Tensor, settings: InversionSettings,
                   latent_shape: tuple[int, ...], start: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1, N, N, N) occupancy in {0, 1} -> (latents (B, *latent_shape) float32, round-trip Dice (B,)).

    ``start``: z0 (B, *latent_shape), the start and the centre of the l2 term (default 0). The
    decoder stays frozen (its parameters get no gradient); on CUDA it runs under bf16 autocast."""
    device = occupancy.device
    occupancy = occupancy.float()
    z0 = torch.zeros((occupancy.shape[0], *latent_shape), device=device) if start is None else start.to(device).float()
    z = z0.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=settings.learning_rate)
    best_z, best_dice = z.detach().clone(), torch.full((occupancy.shape[0],), -1.0, device=device)
    trainable = [p for p in decoder.parameters() if p.requires_grad]
    for p in trainable:  # no gradients for the decoder's weights; restored below
        p.requires_grad_(False)
    cuda = device.type == "cuda"
    for _ in range(max(1, settings.steps)):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            logits = decoder(z).float()
        with torch.no_grad():
            dice = _dice(logits, occupancy)
            better = dice > best_dice
            best_dice = torch.where(better, dice, best_dice)
            best_z[better] = z.detach()[better]
            if bool((best_dice >= settings.target_dice).all()):
                break
        probability = torch.sigmoid(logits).flatten(1)
        truth = occupancy.flatten(1)
        soft_dice = 1 - (2 * (probability * truth).sum(1) + 1) / (probability.sum(1) + truth.sum(1) + 1)
        loss = F.binary_cross_entropy_with_logits(logits, occupancy) + soft_dice.mean() \
            + settings.l2 * (z - z0).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    for p in trainable:
        p.requires_grad_(True)
    return best_z, best_dice


def targets_folder(cache_dir: str | Path, decoder: torch.nn.Module, settings: InversionSettings,
                   frame: str = "object", cube_margin: float = DEFAULT_CUBE_MARGIN,
                   generator_identity: dict | None = None) -> tuple[Path, dict]:
    """The cache folder of these targets and what identifies them: the decoder's weights, the
    settings, the frame, and with ``init="generator"`` the generator (``generator_identity``)."""
    identity = {"format": FORMAT, "decoder_sha256": decoder_fingerprint(decoder), "frame": frame,
                "settings": asdict(settings)}
    if settings.init == "generator":
        identity["generator"] = generator_identity
    if frame == "object":
        identity["cube_margin"] = cube_margin
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / TARGETS_DIR / key, identity


def case_occupancies(cache_dir: Path, case: dict, frame: str, resolution: int,
                     cube_margin: float = DEFAULT_CUBE_MARGIN) -> np.ndarray:
    """(C, n, n, n) bool, the case's classes: in the object frame each in its own cube of n^3 cells
    (a class absent from the case: all False), in the volume frame on the case's n^3 window
    (``dataset.case_volume_window``; the cache's signed distances < 0)."""
    path = cache_dir / case["sdf_path"]
    if not path.is_file():
        raise InputError(f"{path}: signed distance file missing from the cache")
    sdf = np.asarray(np.load(path, mmap_mode="r"))
    if frame == "volume":  # the case's n^3 window around its structures (the case's grid when n^3)
        return case_volume_window(sdf, resolution, case["case_id"]).take(sdf < 0, False)
    affine = np.asarray(case["affine"], dtype=np.float64)
    out = np.zeros((sdf.shape[0],) + (resolution,) * 3, dtype=bool)
    for k in range(sdf.shape[0]):
        if (sdf[k] < 0).any():
            out[k] = cube_sdf_mm(sdf[k], affine, object_cube(sdf[k] < 0, affine, cube_margin), resolution) < 0
    return out


def ensure_latent_targets(cache_dir: str | Path, cases: list[dict], decoder: torch.nn.Module,
                          settings: InversionSettings, device: torch.device, latent_shape: tuple[int, ...],
                          resolution: int, frame: str = "object", cube_margin: float = DEFAULT_CUBE_MARGIN,
                          rank: int = 0, world_size: int = 1, progress: bool = True,
                          start_latents: Callable[[list[tuple[dict, int]]], torch.Tensor] | None = None,
                          generator_identity: dict | None = None) -> Path:
    """Compute the targets of ``cases`` (manifest entries) that are not cached yet; returns the folder.

    ``resolution``: the decoder's output side n. ``start_latents``: (case, class index) pairs ->
    their z0 (with ``init="generator"``; None: zeros). With several processes (DDP) each rank takes
    every ``world_size``-th case; the caller waits for all ranks before reading. Volumes of all cases
    are batched together, ``settings.batch_size`` at a time; a case's files are written as soon as
    all its classes are done."""
    from tqdm import tqdm

    cache_dir = Path(cache_dir)
    if settings.init not in ("generator", "zero"):
        raise InputError(f"latent_targets.init must be generator or zero (got {settings.init!r})")
    if settings.init == "zero":
        start_latents = None
    folder, identity = targets_folder(cache_dir, decoder, settings, frame, cube_margin, generator_identity)
    folder.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        atomic_write_json(folder / "settings.json", identity)
    todo = [c for c in cases[rank::world_size] if not (folder / f"{c['case_id']}.json").is_file()]
    if not todo:
        return folder
    decoder.eval()
    bar = tqdm(total=len(todo), desc="latent targets (decoder inversion)", unit="case", disable=not progress or rank != 0)
    log.info("latent targets: inverting the decoder for %d cases (%d steps per batch of %d volumes) into %s",
             len(todo), settings.steps, settings.batch_size, folder)
    pending: list[tuple[dict, int]] = []  # (case, class index) waiting for a batch
    results: dict[str, dict] = {}

    def finish(case: dict) -> None:
        entry = results.pop(case["case_id"])
        atomic_save_npy(folder / f"{case['case_id']}.npy", entry["latents"])
        atomic_write_json(folder / f"{case['case_id']}.json", {"dice": entry["dice"]})
        bar.update(1)

    def run_batch() -> None:
        occupancy = torch.stack([torch.from_numpy(results[c["case_id"]]["occupancy"][k]) for c, k in pending])
        start = start_latents(list(pending)) if start_latents is not None else None
        latents, dice = invert_decoder(decoder, occupancy[:, None].float().to(device), settings, latent_shape, start)
        for (case, k), z, d in zip(pending, latents.cpu().numpy(), dice.tolist()):
            entry = results[case["case_id"]]
            entry["latents"][k], entry["dice"][k] = z, d
            entry["left"] -= 1
            if entry["left"] == 0:
                finish(case)
        pending.clear()

    for case in todo:
        occupancy = case_occupancies(cache_dir, case, frame, resolution, cube_margin)
        present = [k for k in range(occupancy.shape[0]) if occupancy[k].any()]
        results[case["case_id"]] = {"occupancy": occupancy, "left": len(present),
                                    "latents": np.zeros((occupancy.shape[0], *latent_shape), np.float32),
                                    "dice": [None] * occupancy.shape[0]}
        if not present:
            finish(case)
        for k in present:
            pending.append((case, k))
            if len(pending) == settings.batch_size:
                run_batch()
    if pending:
        run_batch()
    bar.close()
    return folder


def round_trip_summary(folder: Path, cases: list[dict], class_names: dict[int, str]) -> tuple[str, float]:
    """One line: per class, the mean and minimum round-trip Dice of decoder(target) vs the truth;
    and the lowest of the class means."""
    per_class: dict[int, list[float]] = {}
    for case in cases:
        record = folder / f"{case['case_id']}.json"
        if record.is_file():
            for index, value in enumerate(json.loads(record.read_text())["dice"], start=1):
                if value is not None:
                    per_class.setdefault(index, []).append(value)
    parts = [f"{class_names.get(c, f'class {c}')} {np.mean(v):.3f} (min {np.min(v):.3f}, n={len(v)})"
             for c, v in sorted(per_class.items())]
    line = "round trip, Dice of decoder(target latent) vs true occupancy, mean per class: " + "; ".join(parts)
    return line, min((float(np.mean(v)) for v in per_class.values()), default=float("nan"))
