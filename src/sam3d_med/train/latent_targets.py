"""Flow targets: the SS encoder's posterior mean, or the inverse of the released decoder; cached.

The flow learns to generate the SS VAE's latents x1 of the true occupancy O (in the object frame:
the structure in its own cube, ``data.object_frame``; in the volume frame: the class's voxels on the
case's grid; both from the cache's signed distances; the solid or its one-voxel surface shell, as
``data.occupancy`` says). ``latent_targets.source`` says where x1 comes from:

- ``encoder`` (``auto`` when the weights folder holds the released encoder, ``ss_encoder.ckpt``,
  released by Meta on 2026-06-01): x1 = the encoder's posterior **mean** of O (deterministic; the
  official wrapper samples the posterior by default, a training target does not), flattened as the
  generator reads it, ``mean.permute(0, 2, 3, 4, 1).reshape(B, R^3, c)``. One forward pass per volume.
  Each target's round trip, the Dice of D(x1) > 0 against O, is measured; where it is below
  ``target_dice``, that latent is refined by decoder inversion (below) started from, and held by the
  l2 term near, the encoder's mean: the decoder then reproduces the shape and the target stays where
  the encoder, and so the generator's training data, put it.
- ``inversion`` (``auto`` without a usable encoder: snapshots from before 2026-06-01, whose encoder
  files are 0-byte placeholders): the frozen decoder D is inverted,

      z* = argmin_z  BCE(D(z), O) + softDice(D(z), O) + l2 * mean((z - z0)^2)

  with Adam from z = z0, keeping for each volume the iterate whose round trip D(z) > 0 has the best
  Dice against O (an optimisation batch stops once every volume in it reaches ``target_dice``). The
  start z0 (``init``): ``generator`` (default) is the pretrained generator's own sample for that
  structure (conditioned on its largest slice, ``init_steps`` sampler steps, adapters off), so that
  the target stays in the generator's latent distribution (measured on the rehearsal release: LoRA
  from zero-started targets ended *below* the base model, from in-distribution targets above it; see
  RESULTS.md); ``zero``: z0 = 0. It costs ``steps`` decoder forward/backward passes per volume.

Either way the targets are computed once per data set, batched, cached beside the preprocessing
cache and resumable (a case's files are written when it is done), and the per-class round-trip Dice
(the ceiling of what fine-tuning can reach through this decoder) is reported.

Cache: ``<cache>/latent_targets/<key>/`` where key hashes what made them (the encoder's and the
decoder's weights, the settings, the frame and occupancy); ``<case>.npy`` float32 (C, c, R, R, R)
latents of classes 1..C (zeros for a class absent from the case), ``<case>.json`` {"dice": [...]}
(with the encoder also ``encoder_dice`` before refinement and ``refined``) written last (marks the
case finished), ``settings.json`` (what made them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..data.cache import case_grid, case_sdf
from ..data.frames import target_frame
from ..data.object_frame import DEFAULT_CUBE_MARGIN
from ..data.occupancy import occupancy_of
from ..errors import ConfigError, InputError
from ..io.atomic import atomic_save_npy, atomic_write_json
from ..model.checkpoint import tensors_digest
from ..settings import InversionSettings  # the config's latent_targets group, checked as built

log = logging.getLogger("sam3d_med.train")
TARGETS_DIR = "latent_targets"
FORMAT = "sam3d-med-latent-targets-1"


def decoder_fingerprint(decoder: torch.nn.Module) -> str:
    """SHA-256 of the decoder's (or encoder's) weights (names, shapes, dtypes and values)."""
    return tensors_digest(decoder.state_dict())


def resolve_source(source: str, has_encoder: bool, where: str = "the weights folder") -> str:
    """``latent_targets.source`` (auto, encoder, inversion) -> encoder or inversion; ``encoder``
    without one is one line saying what to do."""
    source = InversionSettings(source=source).source  # checked as the setting is
    if source == "auto":
        return "encoder" if has_encoder else "inversion"
    if source == "encoder" and not has_encoder:
        raise ConfigError(f"latent_targets.source=encoder but {where} has no usable SS encoder (absent, or a 0-byte "
                          f"placeholder as in snapshots from before 2026-06-01): download today's release "
                          f"(ss_encoder.ckpt), or use latent_targets.source=auto or inversion")
    return source


def encode_occupancy(encoder: torch.nn.Module, occupancy: torch.Tensor) -> torch.Tensor:
    """(B, 1, N, N, N) occupancy in {0, 1} -> the encoder's posterior mean (B, c, R, R, R) float32 (on
    CUDA under bf16 autocast, as the frozen weights are held there)."""
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=occupancy.is_cuda):
        return encoder(occupancy.float()).float()


def round_trip_dice(decoder: torch.nn.Module, latents: torch.Tensor, occupancy: torch.Tensor) -> torch.Tensor:
    """(B,) Dice of decoder(latents) > 0 against the occupancy (B, 1, N, N, N)."""
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=latents.is_cuda):
        return _dice(decoder(latents).float(), occupancy.float())


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
                   generator_identity: dict | None = None, encoder: torch.nn.Module | None = None,
                   occupancy: str = "solid") -> tuple[Path, dict]:
    """The cache folder of these targets and what identifies them: the decoder's weights, the
    settings, the frame and occupancy; with an ``encoder`` its weights (the inversion settings then
    being those of the refinement); with ``init="generator"`` inversion the generator
    (``generator_identity``)."""
    identity = {"format": FORMAT, "decoder_sha256": decoder_fingerprint(decoder),
                "settings": {k: v for k, v in asdict(settings).items() if k != "source"},
                **target_frame(frame).cache_identity(cube_margin)}
    if encoder is not None:
        identity.update(source="encoder", encoder_sha256=decoder_fingerprint(encoder))
        identity["settings"] = {k: v for k, v in identity["settings"].items() if k not in ("init", "init_steps")}
    elif settings.init == "generator":
        identity["generator"] = generator_identity
    if occupancy != "solid":
        identity["occupancy"] = occupancy
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / TARGETS_DIR / key, identity


def case_occupancies(cache_dir: Path, case: dict, frame: str, resolution: int,
                     cube_margin: float = DEFAULT_CUBE_MARGIN, occupancy: str = "solid") -> np.ndarray:
    """(C, n, n, n) bool, the case's classes: in the object frame each in its own cube of n^3 cells
    (a class absent from the case: all False), in the volume frame on the case's n^3 window
    (``dataset.case_volume_window``; the cache's signed distances < 0); as ``occupancy`` holds them
    (``solid``, or its ``surface`` shell: ``data.occupancy``)."""
    sdf = np.asarray(case_sdf(cache_dir, case))
    solid = target_frame(frame).target_solids(sdf, case_grid(case).affine, resolution, cube_margin, case["case_id"])
    return solid if occupancy == "solid" else occupancy_of(torch.from_numpy(solid), occupancy).numpy()


def ensure_latent_targets(cache_dir: str | Path, cases: list[dict], decoder: torch.nn.Module,
                          settings: InversionSettings, device: torch.device, latent_shape: tuple[int, ...],
                          resolution: int, frame: str = "object", cube_margin: float = DEFAULT_CUBE_MARGIN,
                          rank: int = 0, world_size: int = 1, progress: bool = True,
                          start_latents: Callable[[list[tuple[dict, int]]], torch.Tensor] | None = None,
                          generator_identity: dict | None = None, encoder: torch.nn.Module | None = None,
                          occupancy: str = "solid") -> Path:
    """Compute the targets of ``cases`` (manifest entries) that are not cached yet; returns the folder.

    ``encoder``: the targets are its posterior means, those whose round trip is below
    ``settings.target_dice`` refined by inversion from there; None: decoder inversion from
    ``start_latents`` ((case, class index) pairs -> z0, with ``init="generator"``; None: zeros).
    ``resolution``: the decoder's output side n. With several processes (DDP) each rank takes every
    ``world_size``-th case; the caller waits for all ranks before reading. Volumes of all cases are
    batched together, ``settings.batch_size`` at a time; a case's files are written as soon as all
    its classes are done."""
    from tqdm import tqdm

    cache_dir = Path(cache_dir)
    if settings.init not in ("generator", "zero"):
        raise InputError(f"latent_targets.init must be generator or zero (got {settings.init!r})")
    if settings.init == "zero" or encoder is not None:
        start_latents = None
    folder, identity = targets_folder(cache_dir, decoder, settings, frame, cube_margin, generator_identity, encoder,
                                      occupancy)
    folder.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        atomic_write_json(folder / "settings.json", identity)
    todo = [c for c in cases[rank::world_size] if not (folder / f"{c['case_id']}.json").is_file()]
    if not todo:
        return folder
    decoder.eval()
    if encoder is not None:
        encoder.eval()
    how = "SS encoder" if encoder is not None else "decoder inversion"
    bar = tqdm(total=len(todo), desc=f"latent targets ({how})", unit="case", disable=not progress or rank != 0)
    if encoder is not None:
        log.info("latent targets: the SS encoder's posterior means of %d cases (volumes of %d), refined by decoder "
                 "inversion (%d steps) where the round trip is below Dice %.2f, into %s", len(todo),
                 settings.batch_size, settings.steps, settings.target_dice, folder)
    else:
        log.info("latent targets: inverting the decoder for %d cases (%d steps per batch of %d volumes) into %s",
                 len(todo), settings.steps, settings.batch_size, folder)
    pending: list[tuple[dict, int]] = []  # (case, class index) waiting for a batch
    results: dict[str, dict] = {}
    started, volumes = time.perf_counter(), 0

    def finish(case: dict) -> None:
        entry = results.pop(case["case_id"])
        atomic_save_npy(folder / f"{case['case_id']}.npy", entry["latents"])
        record = {"dice": entry["dice"]}
        if encoder is not None:
            record.update(encoder_dice=entry["encoder_dice"], refined=entry["refined"])
        atomic_write_json(folder / f"{case['case_id']}.json", record)
        bar.update(1)

    def run_batch() -> None:
        occupancy_batch = torch.stack([torch.from_numpy(results[c["case_id"]]["occupancy"][k]) for c, k in pending])
        occupancy_batch = occupancy_batch[:, None].float().to(device)
        encoded = refined = None
        if encoder is not None:
            latents = encode_occupancy(encoder, occupancy_batch)
            dice = encoded = round_trip_dice(decoder, latents, occupancy_batch)
            refined = encoded < settings.target_dice
            if bool(refined.any()):  # those the decoder does not reproduce well enough: refine from the mean
                better, better_dice = invert_decoder(decoder, occupancy_batch[refined], settings, latent_shape,
                                                     start=latents[refined])
                latents, dice = latents.clone(), dice.clone()
                latents[refined], dice[refined] = better, better_dice
        else:
            start = start_latents(list(pending)) if start_latents is not None else None
            latents, dice = invert_decoder(decoder, occupancy_batch, settings, latent_shape, start)
        for i, ((case, k), z, d) in enumerate(zip(pending, latents.cpu().numpy(), dice.tolist())):
            entry = results[case["case_id"]]
            entry["latents"][k], entry["dice"][k] = z, d
            if encoder is not None:
                entry["encoder_dice"][k], entry["refined"][k] = float(encoded[i]), bool(refined[i])
            entry["left"] -= 1
            if entry["left"] == 0:
                finish(case)
        pending.clear()

    for case in todo:
        case_occupancy = case_occupancies(cache_dir, case, frame, resolution, cube_margin, occupancy)
        present = [k for k in range(case_occupancy.shape[0]) if case_occupancy[k].any()]
        volumes += len(present)
        results[case["case_id"]] = {"occupancy": case_occupancy, "left": len(present),
                                    "latents": np.zeros((case_occupancy.shape[0], *latent_shape), np.float32),
                                    "dice": [None] * case_occupancy.shape[0],
                                    "encoder_dice": [None] * case_occupancy.shape[0],
                                    "refined": [None] * case_occupancy.shape[0]}
        if not present:
            finish(case)
        for k in present:
            pending.append((case, k))
            if len(pending) == settings.batch_size:
                run_batch()
    if pending:
        run_batch()
    bar.close()
    elapsed = time.perf_counter() - started
    log.info("latent targets: %d volumes in %.1f s (%.0f ms per volume, %s)", volumes, elapsed,
             1000 * elapsed / max(volumes, 1), how)
    return folder


def round_trip_summary(folder: Path, cases: list[dict], class_names: dict[int, str]) -> tuple[str, float]:
    """One line: per class, the mean and minimum round-trip Dice of decoder(target) vs the truth (with
    encoder targets also the encoder's own mean before refinement and how many were refined); and
    the lowest of the class means."""
    per_class: dict[int, list[float]] = {}
    encoded: dict[int, list[float]] = {}
    refined: dict[int, int] = {}
    for case in cases:
        path = folder / f"{case['case_id']}.json"
        if not path.is_file():
            continue
        record = json.loads(path.read_text())
        for index, value in enumerate(record["dice"], start=1):
            if value is None:
                continue
            per_class.setdefault(index, []).append(value)
            if record.get("encoder_dice") is not None:
                encoded.setdefault(index, []).append(record["encoder_dice"][index - 1])
                refined[index] = refined.get(index, 0) + bool(record["refined"][index - 1])
    parts = []
    for c, values in sorted(per_class.items()):
        part = f"{class_names.get(c, f'class {c}')} {np.mean(values):.3f} (min {np.min(values):.3f}, n={len(values)}"
        if c in encoded:
            part += f"; encoder alone {np.mean(encoded[c]):.3f}, refined {refined[c]}"
        parts.append(part + ")")
    line = "round trip, Dice of decoder(target latent) vs true occupancy, mean per class: " + "; ".join(parts)
    return line, min((float(np.mean(v)) for v in per_class.values()), default=float("nan"))
