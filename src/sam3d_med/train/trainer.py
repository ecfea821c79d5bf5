"""The trainer: LoRA (or full) fine-tuning of the sparse-structure stage on the slice cache.

Checkpoints (``training.checkpoint_dir``): ``epoch_{N}.pt`` every ``save_every`` epochs, ``best.pt``
(best validation Dice) and ``last.pt`` (after every epoch, and on Ctrl-C/SIGTERM). Each holds the
trained weights (adapters and any other trainable module; the whole model when the base itself is
trained), optimizer, scheduler, grad-scaler, epoch, step, position inside the epoch, RNG states,
the resolved config, the model sizes and the identity of the base weights. Resuming continues
exactly where the run stopped (same data order, schedule and random numbers) and refuses a
checkpoint made from other base weights or other model sizes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from ..data.cache import case_ids_of, cases_of, class_names_of, class_pixels
from ..data.dataset import (POLICIES, Augmentation, SliceClassDataset, choose_slices, collate_samples,
                            load_manifest, split_cases)
from ..errors import ConfigError, InputError
from ..io.atomic import atomic_path
from ..data.input_slices import InputSlices
from ..model.placement import impose_input_slices, reconstruct_on_grid
from ..model.sam3d import SparseStructureModel
from ..devices import resolve_device  # noqa: F401 (callers import it from here)
from ..model.trained import (CHECKPOINT_FORMAT, build_model, configure_trainable, load_model_from_checkpoint,  # noqa: F401
                             load_trained_state, occupancy_setting, read_training_checkpoint, sampler_settings,
                             save_training_checkpoint, target_frame, trained_state)
from ..runtime import keep_freed_memory_for_reuse
from ..settings import RunSettings
from .latent_targets import ensure_latent_targets, resolve_source, round_trip_summary
from .losses import TrainingObjective, dice
from .memory import SAFETY, GiB, estimate_training_memory, synthetic_batch

log = logging.getLogger("sam3d_med.train")
LOW_ROUND_TRIP_DICE = 0.8  # below this mean round trip for a class, the log warns


# ----------------------------------------------------------------------------- ranks
class Ranks:
    """Distributed context from torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK)."""

    def __init__(self, device_name: str):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = resolve_device(device_name, self.local_rank)
        if self.world_size > 1 and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend=backend)
            log.info("distributed: rank %d of %d (%s)", self.rank, self.world_size, backend)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world_size > 1:
            dist.barrier()

    def close(self):
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


# ----------------------------------------------------------------------------- model and weights
def place_on_device(model: SparseStructureModel, cfg: DictConfig, device: torch.device, frame: str) -> bool:
    """Move the configured model (adapters applied) to ``device`` as it will train; returns whether
    gradient checkpointing is on.

    On CUDA the frozen weights are held in bf16 (the trained ones stay float32: adapters, their
    gradients and AdamW state), and ``training.gradient_checkpointing: auto`` switches checkpointing
    on when ``train.memory``'s estimate (x its safety factor) says the batch would not fit the GPU;
    when it would not fit even so, one line names the batch size that fits. On a CPU everything
    stays float32 and ``auto`` means off."""
    run = RunSettings.of(cfg)
    setting = run.training.gradient_checkpointing
    use = setting is True
    if device.type == "cuda":
        if not run.training.train_base:
            for param in model.parameters():
                if not param.requires_grad:
                    param.data = param.data.to(torch.bfloat16)
        total = torch.cuda.get_device_properties(device).total_memory
        use = checkpointing_decision(_memory_estimate(model, run, frame), run.training.batch_size, total, setting)
    for block in model.generator.blocks:
        block.use_checkpoint = use
    model.to(device)
    return use


def checkpointing_decision(estimate, batch: int, total_bytes: float, setting) -> bool:
    """Whether to checkpoint (``setting`` true/false/"auto": when the batch would not fit without);
    logs the figures; one line naming the batch size that fits when it does not fit even so."""
    need = {ckpt: estimate.peak(batch, ckpt) * SAFETY for ckpt in (False, True)}
    use = need[False] > total_bytes if setting == "auto" else bool(setting)
    log.info("GPU memory: %.1f GiB; a step at batch %d needs about %.1f GiB without gradient checkpointing, "
             "%.1f GiB with it (estimate x %.2f): checkpointing %s", total_bytes / GiB, batch, need[False] / GiB,
             need[True] / GiB, SAFETY, "on" if use else "off")
    if need[use] > total_bytes:
        fits = max(1, estimate.largest_batch(total_bytes, checkpointing=True))
        raise ConfigError(f"training.batch_size={batch} needs about {need[use] / GiB:.1f} GiB, the GPU has "
                          f"{total_bytes / GiB:.1f} GiB: use training.batch_size={fits} with "
                          f"training.gradient_checkpointing=true (training.grad_accum_steps={-(-batch // fits)} keeps "
                          f"the effective batch)")
    return use


def _memory_estimate(model: SparseStructureModel, cfg: DictConfig, frame: str):
    """``train.memory``'s estimate for this run, on a meta-device copy of the model as it trains."""
    with torch.device("meta"):
        meta = SparseStructureModel(model.cfg, with_encoder=model.encoder is not None)
    configure_trainable(meta, cfg, quiet=True)
    run = RunSettings.of(cfg)
    weights, crop = run.loss, run.data.preprocess_crop_size[0]
    return estimate_training_memory(meta, lambda m: TrainingObjective(m, weights, frame),
                                    lambda b: synthetic_batch(meta, b, crop, "meta", run.data.num_slices[-1],
                                                              run.data.extra_slice_streams))


# ----------------------------------------------------------------------------- checkpoint files
def rng_states() -> dict:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def warmup_cosine(optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class StopRequest:
    """Ctrl-C / SIGTERM (or the step limit) set a flag; the loop finishes its step, writes last.pt
    and exits. ``signal`` is the signal number, or 0 for the step limit."""

    def __init__(self):
        self.signal: int | None = None
        self._previous = {}

    @property
    def reason(self) -> str:
        return "training.stop_after_steps" if self.signal == 0 else signal.Signals(self.signal).name

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = signum
        log.warning("received %s: finishing this step, then writing last.pt", signal.Signals(signum).name)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------- the loop
def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def validate(objective: TrainingObjective, loader: DataLoader, device: torch.device, cfg: DictConfig) -> dict:
    """Validation loss (fixed noise and times) and what the task is: the 3-D Dice, on the scan's grid,
    of reconstructions sampled from pure noise (``val_dice``) and of the one-step estimate from pure
    noise (``val_dice_one_step``), each as the evaluation scores it (pose fitted to the input slice,
    input plane set to the mask; the validation samples are the evaluation's slices). (The loss, at
    random flow times where x_t already carries much of the answer, can fall while these do not move.)"""
    model = objective.model
    model.eval()
    generator = torch.Generator(device=device).manual_seed(1234)
    losses, dices, one_step = [], [], []
    run = RunSettings.of(cfg)
    budget = run.validation.reconstructions
    sampler = replace(sampler_settings(model.cfg.sampler, run.validation), samples=1)  # one draw: cheap
    for index, batch in enumerate(loader):
        if run.validation.max_batches and index >= run.validation.max_batches:
            break
        batch = _to_device(batch, device)
        with _autocast(device):
            losses.append(float(objective(batch, generator=generator)["total"]))
            if len(dices) < budget:
                take = budget - len(dices)
                inputs = {k: v[:take] for k, v in batch.items() if torch.is_tensor(v)}
                truth = inputs["occupancy"][:, 0] > 0.5
                points = objective.frame.grid_points_of_affines(inputs["affine"], truth.shape[1:])
                # as the evaluation scores them: the pose fitted to the input slice, its plane set to the mask
                given = InputSlices.from_batch(inputs, lambda b, a, i: truth[b].select(a, i).float())
                for out, steps in ((dices, False), (one_step, True)):
                    grid = reconstruct_on_grid(model, inputs, objective.frame, points, seed=run.seed,
                                               sampler=sampler, one_step=steps, input_slices=given)
                    out += dice(impose_input_slices(grid.logits, given) > 0, truth).tolist()
    model.train()
    return {"val_loss": float(np.mean(losses)) if losses else float("nan"),
            "val_dice": float(np.mean(dices)) if dices else float("nan"),
            "val_dice_one_step": float(np.mean(one_step)) if one_step else float("nan")}


class GeneratorStart:
    """z0 of decoder inversion (``latent_targets``): the pretrained generator's own sample of each
    structure, conditioned on the structure's largest slice in the cache (ties: lowest axis, then
    index), with its adapters bypassed, seeded. Called with (case entry, class index) pairs."""

    def __init__(self, model: SparseStructureModel, dataset: SliceClassDataset, sampler, device, seed: int):
        self.model, self.dataset, self.sampler, self.device, self.seed = model, dataset, sampler, device, seed

    def __call__(self, pending: list[tuple[dict, int]]) -> torch.Tensor:
        from ..model.flow_transformer import SHAPE
        from ..model.lora import adapters_disabled
        from ..model.vae import tokens_to_latent_cube

        samples = []
        for case, index in pending:
            entry = max(case["slices"], key=lambda e: (class_pixels(e, index + 1), -e["axis"], -e["slice_idx"]))
            samples.append((case["case_id"], entry, index + 1))
        chosen = self.dataset.with_samples(samples)
        batch = collate_samples([chosen[i] for i in range(len(samples))])
        batch = {k: v.to(self.device) for k, v in batch.items() if torch.is_tensor(v)}
        was_training = self.model.training
        self.model.eval()
        with adapters_disabled(self.model), _autocast(self.device):
            latents = self.model.sample(batch, seed=self.seed, sampler=self.sampler)
        self.model.train(was_training)
        return tokens_to_latent_cube(latents[SHAPE].float())


def prepare_latent_targets(model: SparseStructureModel, cfg: DictConfig, manifest: dict, case_ids: list[str],
                           ranks: Ranks, identity: dict | None = None) -> Path | None:
    """Where the flow's shape targets come from (``latent_targets.source``, ``train.latent_targets``):
    the SS encoder's posterior means (refined where their round trip is poor) or decoder inversion,
    cached per case; the folder is returned (computed now for the cases not cached yet, shared out
    over the ranks). None when the VAE itself trains with the model (``training.train_base`` with
    ``loss.w_vae_loss`` > 0): the encoder then gives the targets batch by batch."""
    run = RunSettings.of(cfg)
    occupancy = run.data.occupancy
    if model.encoder is not None and run.training.train_base and run.loss.w_vae_loss > 0:
        log.info("flow targets: the SS encoder's latents of the true occupancy (%s), batch by batch: the VAE trains "
                 "with the model", occupancy)
        return None
    where = run.model.get("checkpoint_dir") or f"the {run.model['preset']} preset"
    settings = run.latent_targets
    source = resolve_source(settings.source, model.encoder is not None, where)
    cases = cases_of(manifest, case_ids)
    latent_shape = (model.cfg.flow.latent_channels,) + (model.cfg.flow.resolution,) * 3
    frame, data = run.data.target_frame, run.data
    start = None
    if source == "encoder":
        log.info("flow targets: the SS encoder's posterior mean of every (case, class) %s occupancy, refined by decoder "
                 "inversion where its round trip is below Dice %.2f, cached in the preprocessing cache", occupancy,
                 settings.target_dice)
    else:
        log.info("flow targets: %s: inverting the frozen decoder for every (case, class) %s occupancy, starting from %s, "
                 "cached in the preprocessing cache", "no usable SS encoder in " + str(where) if model.encoder is None
                 else "latent_targets.source=inversion", occupancy,
                 "the pretrained generator's own sample" if settings.init == "generator" else "zero")
        if settings.init == "generator":
            dataset = SliceClassDataset(data.slice_cache_dir, manifest, case_ids, data.preprocess_crop_size, 1, None,
                                        run.seed, frame=frame, cube_resolution=model.cfg.occupancy_resolution,
                                        cube_margin=data.cube_margin)
            start = GeneratorStart(model, dataset, replace(model.cfg.sampler, steps=settings.init_steps), ranks.device,
                                   run.seed)
    folder = ensure_latent_targets(data.slice_cache_dir, cases, model.decoder, settings, ranks.device, latent_shape,
                                   model.cfg.occupancy_resolution, frame, data.cube_margin,
                                   ranks.rank, ranks.world_size, start_latents=start, generator_identity=identity,
                                   encoder=model.encoder if source == "encoder" else None, occupancy=occupancy)
    ranks.barrier()
    if ranks.is_main:
        names = class_names_of(manifest)
        summary, worst = round_trip_summary(folder, cases, names)
        log.info("%s; targets in %s", summary, folder)
        if worst < LOW_ROUND_TRIP_DICE:
            log.warning("the decoder reproduces some classes poorly from their target latents (mean round-trip Dice "
                        "%.3f): fine-tuning cannot do better than that through this decoder; more inversion steps "
                        "(latent_targets.steps) may help", worst)
    return folder


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("train_loss", "val_loss"):
        points = [(h["epoch"], h[key]) for h in history if h.get(key) is not None and np.isfinite(h[key])]
        if points:
            ax_loss.plot(*zip(*points), marker="o", label=key)
    ax_loss.set_xlabel("epoch"), ax_loss.set_ylabel("loss"), ax_loss.legend(), ax_loss.grid(alpha=0.3)
    ax_dice.plot(epochs, [h.get("val_dice", np.nan) for h in history], marker="o", color="tab:green", label="sampled")
    ax_dice.plot(epochs, [h.get("val_dice_one_step", np.nan) for h in history], marker="s", color="tab:olive",
                 label="one step from noise")
    ax_dice.legend()
    ax_dice.set_xlabel("epoch (0 = before training)"), ax_dice.set_ylabel("validation Dice"), ax_dice.grid(alpha=0.3)
    ax_dice.set_ylim(0, 1)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


@dataclass
class TrainingData:
    """The run's data: training and validation sets, their loaders, the training sampler (reseeded per
    epoch), and what chooses best.pt (``val_dice``, or ``train_loss`` without validation cases)."""

    train_set: SliceClassDataset
    val_set: SliceClassDataset
    sampler: object
    train_loader: DataLoader
    val_loader: DataLoader
    best_by: str


def input_slice_settings(data) -> dict:
    """The dataset's input-slice arguments from the ``data`` settings (``data.num_slices`` etc.)."""
    return dict(num_slices=data.num_slices, slice_policy=data.slice_policy, slice_spacing_mm=data.slice_spacing_mm,
                extra_slice_streams=data.extra_slice_streams)


def training_data(cfg: DictConfig, model: SparseStructureModel, ranks: Ranks, identity: dict, frame: str,
                  seed: int) -> TrainingData:
    """The cache's cases split (``data.val_fraction``, ``seed``), their flow targets prepared
    (``prepare_latent_targets``), the datasets and loaders built (``InputError``: no training sample)."""
    device, run = ranks.device, RunSettings.of(cfg)
    data = run.data
    manifest = load_manifest(data.slice_cache_dir)
    train_ids, val_ids = split_cases(case_ids_of(manifest), data.val_fraction, seed)
    latent_dir = prepare_latent_targets(model, run, manifest, train_ids + val_ids, ranks, identity)
    crop = data.preprocess_crop_size
    augment = Augmentation() if data.augment else None
    geometry = dict(latent_dir=latent_dir, frame=frame, cube_resolution=model.cfg.occupancy_resolution,
                    cube_margin=data.cube_margin, epoch_mode=data.epoch, **input_slice_settings(data))
    train_set = SliceClassDataset(data.slice_cache_dir, manifest, train_ids, crop, data.min_pixels, augment,
                                  seed, **geometry)
    # validated as evaluated: each (case, class, axis) from its largest slice (the evaluation's default
    # policy), so that best.pt is chosen by what the evaluation then measures; in a fixed shuffled order,
    # so that the first validation.reconstructions samples spread over cases, classes and axes
    evaluated = [(case["case_id"], entry, cls) for case in cases_of(manifest, val_ids)
                 for entry, cls in choose_slices(case, manifest["options"]["axes"], POLICIES[0])]
    val_set = SliceClassDataset(data.slice_cache_dir, manifest, val_ids, crop, data.min_pixels, None, seed,
                                **{**geometry, "epoch_mode": "slices"},
                                samples=[evaluated[i] for i in np.random.default_rng(seed).permutation(len(evaluated))])
    if len(train_set) == 0:
        raise InputError(f"{data.slice_cache_dir}: no training samples (cases {train_ids})")
    # best.pt is chosen by what exists: validation Dice, or without validation cases the training loss
    best_by = "val_dice" if len(val_set) else "train_loss"
    if best_by == "train_loss":
        log.warning("no validation: %d case(s) in the cache with data.val_fraction=%s leave none to hold out; "
                    "best.pt will be the epoch with the lowest training loss (nothing measures generalisation)",
                    len(train_ids), data.val_fraction)
    log.info("data: %d train cases (%d (case, class) pairs, %d (slice, class) samples), %d validation cases (%d "
             "pairs, validated on their %d largest slices per axis); crop %s; an epoch is %s", len(train_ids),
             len(train_set.pairs), len(train_set.samples), len(val_ids), len(val_set.pairs), len(val_set), list(crop),
             "every (case, class) pair once, with a slice drawn afresh" if train_set.epoch_mode == "pairs"
             else "every (slice, class) sample")
    if data.num_slices[-1] > 1:
        log.info("input slices per sample: %s (drawn per sample), the further ones %s, their %s condition streams",
                 "-".join(map(str, data.num_slices)), data.slice_policy, data.extra_slice_streams)

    batch_size = run.training.batch_size
    if ranks.world_size > 1:
        sampler = DistributedSampler(train_set, num_replicas=ranks.world_size, rank=ranks.rank, shuffle=True, seed=seed)
    else:
        sampler = RandomSampler(train_set, generator=torch.Generator().manual_seed(seed))
    loader_kwargs = dict(batch_size=batch_size, num_workers=data.num_workers, drop_last=False,
                         persistent_workers=False, pin_memory=device.type == "cuda", collate_fn=collate_samples)
    # Own generators: a loader without one draws its workers' base seed from the global RNG at every
    # epoch, which would make a resumed run differ from an uninterrupted one.
    train_loader = DataLoader(train_set, sampler=sampler, generator=torch.Generator().manual_seed(seed), **loader_kwargs)
    val_loader = DataLoader(val_set, shuffle=False, generator=torch.Generator().manual_seed(seed), **loader_kwargs)

    return TrainingData(train_set, val_set, sampler, train_loader, val_loader, best_by)


def train(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Run (or resume) training as configured; returns a summary. Files go to the checkpoint folder
    (checkpoints) and ``run_dir`` (TensorBoard events, curves.png)."""

    run_dir = Path(run_dir)
    run = RunSettings.from_config(cfg)  # every value checked once, here (config_check ran the same)
    training = run.training
    ranks = Ranks(run.device)
    device = ranks.device
    if device.type == "cpu":
        keep_freed_memory_for_reuse()
    seed = run.seed
    torch.manual_seed(seed), np.random.seed(seed), random.seed(seed)

    model, identity = build_model(cfg)
    configure_trainable(model, run)
    frame = run.data.target_frame
    place_on_device(model, run, device, frame)

    data = training_data(run, model, ranks, identity, frame, seed)
    train_set, val_set, sampler = data.train_set, data.val_set, data.sampler
    train_loader, val_loader, best_by = data.train_loader, data.val_loader, data.best_by

    weights = run.loss
    objective = TrainingObjective(model, weights, frame).to(device)
    log.info("target frame: %s (%s)", objective.frame, objective.frame.description)
    stepper = objective
    if ranks.world_size > 1:
        stepper = torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=training.learning_rate, weight_decay=training.weight_decay)
    accum = training.grad_accum_steps
    max_batches = training.max_steps_per_epoch
    batches_per_epoch = len(train_loader) if not max_batches else min(len(train_loader), int(max_batches))
    epochs = training.epochs
    total_steps = max(1, epochs * math.ceil(batches_per_epoch / accum))
    scheduler = warmup_cosine(optimizer, training.warmup_steps, total_steps)
    scaler = torch.amp.GradScaler(enabled=False)  # bf16 needs no loss scaling; kept for the format

    resolved = OmegaConf.to_container(cfg, resolve=True)
    state = TrainState()
    if training.resume:
        payload = read_training_checkpoint(training.resume)
        if payload["model_config"] != model.cfg.to_dict():
            raise ConfigError(f"{training.resume}: trained with other model sizes "
                              f"({payload['model_config']['name']}) than this run ({model.cfg.name}); use the same model=")
        if payload["base_identity"] != identity:
            raise ConfigError(f"{training.resume}: trained on other base weights ({payload['base_identity']}) "
                              f"than this run ({identity})")
        load_trained_state(model, payload["trained_state"], training.resume)
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        scaler.load_state_dict(payload["scaler"])
        restore_rng(payload["rng"])
        state = TrainState.from_payload(payload)
        log.info("resumed from %s: epoch %d, batch %d, step %d", training.resume, state.start_epoch,
                 state.skip_batches, state.step)
    checkpoints = CheckpointPolicy(Path(training.checkpoint_dir), training.save_every, epochs)

    writer = None
    if ranks.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        checkpoints.folder.mkdir(parents=True, exist_ok=True)

    def payload_for(epoch: int, batches_done: int, epoch_losses: list[float] | None = None,
                    pending_epoch_end: dict | None = None) -> dict:
        """The checkpoint: the trained weights, optimiser, schedule, random states, config and the
        run's progress (``TrainState.progress``)."""
        return {"format": CHECKPOINT_FORMAT, "trained_state": trained_state(model, run),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "rng": rng_states(), "config": resolved,
                "model_config": model.cfg.to_dict(), "base_identity": identity,
                **state.progress(epoch, batches_done, best_by, epoch_losses, pending_epoch_end)}

    def finish_epoch(epoch: int, train_loss: float, rate: float | None) -> None:
        """The end of an epoch: validation, the history, last.pt, epoch_N.pt and best.pt."""
        record = {"epoch": epoch, "train_loss": train_loss}
        if not ranks.is_main:
            return
        if len(val_set):
            record.update(validate(objective, val_loader, device, run))
        state.history.append(record)
        log.info("epoch %d: train_loss %.4f val_loss %.4f val_dice %.4f (sampled) %.4f (one step from noise)%s", epoch,
                 record["train_loss"], record.get("val_loss", float("nan")), record.get("val_dice", float("nan")),
                 record.get("val_dice_one_step", float("nan")), "" if rate is None else f" ({rate:.1f} samples/s)")
        for key, value in record.items():
            if key != "epoch":
                writer.add_scalar(f"epoch/{key}", value, epoch)
        improved = state.record_best(record, best_by)
        if improved:
            log.info("best.pt: epoch %d (%s %.4f)", epoch, best_by,
                     state.best_dice if best_by == "val_dice" else state.best_loss)
        checkpoints.end_of_epoch(epoch, payload_for(epoch, 0), improved)

    loop = EpochLoop(train_loader, batches_per_epoch, accum, stepper, params, optimizer, scheduler,
                     training.grad_clip, device, ranks.world_size, ranks.is_main, writer)
    status = "completed"
    stop_after = training.stop_after_steps
    with StopRequest() as stop:
        if not state.history and ranks.is_main and len(val_set):
            baseline = validate(objective, val_loader, device, run)
            state.history.append({"epoch": 0, "train_loss": None, **baseline})
            log.info("epoch 0 (untrained): val_loss %.4f val_dice %.4f (sampled) %.4f (one step from noise)",
                     baseline["val_loss"], baseline["val_dice"], baseline["val_dice_one_step"])
        if state.pending_end is not None:  # stopped on an epoch's last batch: that epoch's end first
            finish_epoch(state.pending_end["epoch"], state.pending_end["train_loss"], None)
        ranks.barrier()
        model.train()
        for epoch in range(state.start_epoch, epochs + 1):
            if isinstance(sampler, DistributedSampler):
                sampler.set_epoch(epoch)
            else:
                sampler.generator.manual_seed(seed * 100003 + epoch)  # same order on resume
            train_set.set_epoch(epoch)
            resuming = epoch == state.start_epoch and state.skip_batches
            epoch_losses = state.resumed_losses if resuming else []
            batches_done, rate = run_epoch(loop, epoch, epochs, state, epoch_losses, state.skip_batches if resuming else 0,
                                           stop, stop_after)
            train_loss = float(np.mean(epoch_losses)) if epoch_losses else float("nan")
            if stop.signal is not None:
                if ranks.is_main:
                    checkpoints.stopped(epoch, batches_done, batches_per_epoch, train_loss, epoch_losses, payload_for,
                                        stop.reason)
                status = "interrupted"
                break
            finish_epoch(epoch, train_loss, rate)
            ranks.barrier()
    if ranks.is_main:
        plot_curves(state.history, run_dir / "curves.png")
        writer.close()
    ranks.close()
    history = state.history
    untrained = history[0].get("val_dice") if history and history[0]["epoch"] == 0 else None
    return {"status": status, "signal": stop.signal, "history": history, "best_dice": state.best_dice,
            "best_by": best_by, "best_train_loss": state.best_loss,
            "untrained_dice": untrained, "checkpoint_dir": str(checkpoints.folder), "run_dir": str(run_dir)}


@dataclass
class TrainState:
    """The run's progress, to and from a checkpoint's payload: the epoch to start with and the batches
    of it already done, the optimiser step, the best validation Dice (or training loss without
    validation), the history of epoch records, the losses of a partial epoch (so that a resumed run's
    train_loss is the whole epoch's) and an epoch's end still to do (stopped on its last batch)."""

    start_epoch: int = 1
    skip_batches: int = 0
    step: int = 0
    best_dice: float = -1.0
    best_loss: float = float("inf")
    history: list = field(default_factory=list)
    resumed_losses: list = field(default_factory=list)
    pending_end: dict | None = None

    @classmethod
    def from_payload(cls, payload: dict) -> "TrainState":
        partial = bool(payload["batches_done"])
        return cls(start_epoch=payload["epoch"] if partial else payload["epoch"] + 1,
                   skip_batches=payload["batches_done"] if partial else 0, step=payload["step"],
                   best_dice=payload["best_dice"], best_loss=payload.get("best_train_loss", float("inf")),
                   history=payload["history"], resumed_losses=list(payload.get("epoch_losses", [])),
                   pending_end=payload.get("pending_epoch_end"))

    def progress(self, epoch: int, batches_done: int, best_by: str, epoch_losses: list[float] | None = None,
                 pending_epoch_end: dict | None = None) -> dict:
        """The payload's progress fields; stopped inside an epoch they also hold that epoch's losses so
        far, stopped on its last batch the epoch's end still to do, which the resumed run does first."""
        return {"epoch": epoch, "batches_done": batches_done, "step": self.step, "best_dice": self.best_dice,
                "best_train_loss": self.best_loss, "best_by": best_by, "history": self.history,
                "epoch_losses": list(epoch_losses or []), "pending_epoch_end": pending_epoch_end}

    def record_best(self, record: dict, best_by: str) -> bool:
        """Whether this epoch's ``record`` is the best so far by ``best_by`` (and remember it)."""
        if best_by == "val_dice":
            value = record.get("val_dice", float("nan"))
            improved = bool(np.isfinite(value) and value > self.best_dice)
            self.best_dice = value if improved else self.best_dice
        else:
            value = record["train_loss"]
            improved = bool(np.isfinite(value) and value < self.best_loss)
            self.best_loss = value if improved else self.best_loss
        return improved


@dataclass
class CheckpointPolicy:
    """Which checkpoint files are written when: ``last.pt`` after every epoch and when stopped,
    ``epoch_N.pt`` every ``save_every`` epochs and after the last, ``best.pt`` when an epoch is the
    best so far (or when there is none yet)."""

    folder: Path
    save_every: int
    epochs: int

    def end_of_epoch(self, epoch: int, payload: dict, improved: bool) -> None:
        save_training_checkpoint(self.folder / "last.pt", payload)
        if epoch % self.save_every == 0 or epoch == self.epochs:
            save_training_checkpoint(self.folder / f"epoch_{epoch}.pt", payload)
        if improved or not (self.folder / "best.pt").exists():
            save_training_checkpoint(self.folder / "best.pt", payload)

    def stopped(self, epoch: int, batches_done: int, batches_per_epoch: int, train_loss: float,
                epoch_losses: list[float], payload_for, reason: str) -> None:
        """``last.pt`` of a run stopped in ``epoch``: an epoch stopped on its last batch is finished
        (its end is done on resume), one stopped inside keeps its losses so far."""
        done = batches_done >= batches_per_epoch
        last = self.folder / "last.pt"
        save_training_checkpoint(last, payload_for(epoch, 0 if done else batches_done, None if done else epoch_losses,
                                                   {"epoch": epoch, "train_loss": train_loss} if done else None))
        log.info("stopped by %s in epoch %d after %d batches: wrote %s; resume with training.resume=%s",
                 reason, epoch, batches_done, last, last)


@dataclass
class EpochLoop:
    """What every epoch's optimisation uses (``run_epoch``)."""

    loader: DataLoader
    batches_per_epoch: int
    accum: int
    stepper: torch.nn.Module
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    grad_clip: float
    device: torch.device
    world_size: int
    is_main: bool
    writer: object


def run_epoch(loop: EpochLoop, epoch: int, epochs: int, state: TrainState, epoch_losses: list[float],
              skip_batches: int, stop: StopRequest, stop_after) -> tuple[int, float]:
    """One epoch's optimisation from batch ``skip_batches`` on (the batches before it were done before a
    resume): micro-batches accumulated to ``accum``, gradient clipping, the schedule, losses appended to
    ``epoch_losses``, ``state.step`` counted, TensorBoard scalars; stops after the batch during which
    ``stop`` was asked for (or ``stop_after`` steps were reached). Returns (batches done, samples/s)."""
    from tqdm import tqdm

    bar = tqdm(total=loop.batches_per_epoch, desc=f"epoch {epoch}/{epochs}", unit="batch", disable=not loop.is_main,
               initial=skip_batches)
    seen, started = 0, time.perf_counter()
    batches_done = skip_batches
    for i, batch in enumerate(loop.loader):
        if i >= loop.batches_per_epoch:
            break
        if i < skip_batches:
            continue
        batch = _to_device(batch, loop.device)
        last_micro = (i + 1) % loop.accum == 0 or i + 1 == loop.batches_per_epoch
        sync = loop.stepper.no_sync() if (loop.world_size > 1 and not last_micro) else contextlib.nullcontext()
        with sync, _autocast(loop.device):
            terms = loop.stepper(batch)
            (terms["total"] / loop.accum).backward()
        if last_micro:
            if loop.grad_clip:
                torch.nn.utils.clip_grad_norm_(loop.params, loop.grad_clip)
            loop.optimizer.step()
            loop.optimizer.zero_grad(set_to_none=True)
            loop.scheduler.step()
            state.step += 1
            if stop_after and state.step >= int(stop_after) and stop.signal is None:
                stop.signal = 0
        batches_done = i + 1
        seen += batch["occupancy"].shape[0] * loop.world_size
        values = {key: float(value.detach()) for key, value in terms.items()}
        epoch_losses.append(values["total"])
        rate = seen / max(1e-9, time.perf_counter() - started)
        bar.set_postfix(loss=f"{epoch_losses[-1]:.4f}", samples_s=f"{rate:.1f}")
        bar.update(1)
        if loop.writer is not None:
            for key, value in values.items():
                loop.writer.add_scalar(f"train/{key}", value, state.step)
            loop.writer.add_scalar("train/lr", loop.scheduler.get_last_lr()[0], state.step)
        if stop.signal is not None:
            break
    bar.close()
    return batches_done, seen / max(1e-9, time.perf_counter() - started)
