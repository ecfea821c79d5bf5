"""A trained model as one object: a training checkpoint read, its model rebuilt from the stored
config (base weights as configured, adapters applied, trained weights loaded), with its target frame,
crop size, sampler settings (overridable) and weights identity.

Also what both training and inference need about a run's model: building it from a config
(``build_model``), which parameters train (``configure_trainable``), what a checkpoint holds beyond
the base weights (``trained_state``) and loading it back, and the checkpoint file format
(``CHECKPOINT_FORMAT``: a torch file written atomically; ``train.trainer`` says what it holds).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from omegaconf import DictConfig

from ..errors import ConfigError, InputError
from ..io.atomic import atomic_path
from ..settings import RunSettings, ValidationSettings
from .checkpoint import build_from_folder, tensors_digest
from .config import SamplerConfig
from .lora import apply_lora, trainable_parameters
from .release_files import component_files, require_weights_folder
from .sam3d import SparseStructureModel

log = logging.getLogger("sam3d_med.train")
CHECKPOINT_FORMAT = "sam3d-med-train-1"


def _file_fingerprint(path: Path) -> dict:
    """Size and SHA-256 of the first 8 MiB: identifies a multi-GB file without reading it all."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        digest.update(fh.read(8 << 20))
    return {"size": path.stat().st_size, "sha256_head": digest.hexdigest()}


def build_model(cfg: DictConfig | RunSettings) -> tuple[SparseStructureModel, dict]:
    """The model and the identity of its base weights."""
    run = RunSettings.of(cfg)
    preset = run.model["preset"]
    if run.model.get("checkpoint_dir"):
        folder = require_weights_folder(run.model["checkpoint_dir"])
        model = build_from_folder(folder, preset=preset, log=log.info)
        names = [files[1] for files in component_files(folder).values()]
        identity = {"kind": "official", "files": {name: _file_fingerprint(folder / name) if (folder / name).is_file()
                                                  else "absent" for name in names}}
    else:
        torch.manual_seed(int(run.model.get("init_seed", 0)))
        model = SparseStructureModel.from_preset(preset)
        identity = {"kind": "random-init", "preset": preset, "init_seed": int(run.model.get("init_seed", 0))}
    model.occupancy = run.data.occupancy
    return model, identity



def configure_trainable(model: SparseStructureModel, cfg: DictConfig | RunSettings, quiet: bool = False) -> None:
    """Which parameters train: every weight (``training.train_base``) or LoRA adapters (``lora``);
    ``ConfigError`` for both or neither."""
    run = RunSettings.of(cfg)
    run.check_trainable()
    if run.training.train_base:
        model.requires_grad_(True)
        for name, param in model.named_parameters():
            if name.endswith("backbone.mask_token"):  # DINOv2's masked-image token: never used here
                param.requires_grad_(False)
        return
    settings = run.lora
    adapted = apply_lora(model, settings)
    if not quiet:
        log.info("LoRA rank %d on %d layers; %d trainable parameters", settings.rank, len(adapted),
                 sum(p.numel() for p in trainable_parameters(model).values()))


def trained_state(model: SparseStructureModel, cfg: DictConfig | RunSettings) -> dict[str, torch.Tensor]:
    """What a checkpoint must hold beyond the base weights (all of it when the base is trained)."""
    if RunSettings.of(cfg).training.train_base:
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {k: v.detach().cpu().clone() for k, v in trainable_parameters(model).items()}


def load_trained_state(model: SparseStructureModel, state: dict[str, torch.Tensor], path) -> None:
    """Load a checkpoint's trained weights; a checkpoint of another kind of run is one line saying
    which and what to do (never PyTorch's key-by-key dump)."""
    adapters_in_model = any("lora_" in k for k in model.state_dict())
    adapters_in_file = any("lora_" in k for k in state)
    if adapters_in_file and not adapters_in_model:
        raise ConfigError(f"{path}: holds LoRA adapters (trained with lora.enabled=true) and this run's model has "
                          f"none: resume with lora.enabled=true training.train_base=false and the same lora.rank")
    if adapters_in_model and not adapters_in_file:
        raise ConfigError(f"{path}: holds fully trained weights (training.train_base=true, no LoRA) and this run adds "
                          f"LoRA adapters: resume with training.train_base=true lora.enabled=false, or start a new "
                          f"LoRA run from the base weights")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        mismatch = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        if not mismatch:
            raise
        what = "the LoRA rank (lora.rank)" if "lora_" in mismatch[0] else "the model sizes"
        raise ConfigError(f"{path}: {len(mismatch)} weights have other shapes than in this run's model: {what} "
                          f"differs (first: {mismatch[0][:200]})") from None
    if result.unexpected_keys:
        raise ConfigError(f"{path}: weights that this model does not have (first: {result.unexpected_keys[:3]})")


def load_model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[SparseStructureModel, dict]:
    """The trained model of a training checkpoint (base weights rebuilt as configured, adapters or
    trained weights loaded), in eval mode, and the checkpoint's payload."""
    payload = read_training_checkpoint(path)
    run = RunSettings.from_config(payload["config"], legacy=True)
    model, identity = build_model(run)
    if identity != payload["base_identity"]:
        raise ConfigError(f"{path}: its base weights ({payload['base_identity']}) are not the ones found now ({identity})")
    configure_trainable(model, run)
    load_trained_state(model, payload["trained_state"], path)
    return model.to(device).eval(), payload



def save_training_checkpoint(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_training_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint file does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file
        import zipfile

        what = ("the file is truncated or damaged (not a complete PyTorch archive; an interrupted copy?)"
                if not zipfile.is_zipfile(path) else f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}"
                if str(exc).strip() else type(exc).__name__)
        raise InputError(f"{path}: unreadable checkpoint: {what}; copy it again, or use last.pt or an epoch_N.pt "
                         f"beside it") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not a sam3d-med training checkpoint")
    return payload



def sampler_settings(model_sampler, validation_cfg, steps: int | None = None, guidance: float | None = None,
                     samples: int | None = None):
    """The model's sampler, overridden by a run's ``validation`` settings (sampler_steps, cfg_strength,
    eval_samples), then by explicit ``steps``/``guidance``/``samples``: what validation used is what
    evaluation uses by default (except ``eval_samples``: validation itself samples once)."""
    validation = (validation_cfg if isinstance(validation_cfg, ValidationSettings)
                  else ValidationSettings.from_mapping(validation_cfg))
    steps = steps or validation.sampler_steps or model_sampler.steps
    if guidance is None:
        guidance = validation.cfg_strength
    samples = samples or validation.eval_samples or model_sampler.samples
    if int(samples) < 1:
        raise ConfigError("must be at least 1 (draws averaged per input)", parameter="samples", value=samples)
    return replace(model_sampler, steps=int(steps), samples=int(samples),
                   cfg_strength=float(model_sampler.cfg_strength if guidance is None else guidance))



def target_frame(cfg: DictConfig | RunSettings) -> str:
    """The run's target frame (``data.target_frame``; a checkpoint from before it existed: volume)."""
    return RunSettings.of(cfg).data.target_frame



def occupancy_setting(cfg: DictConfig | RunSettings) -> str:
    """What the SS occupancy holds in this run (``data.occupancy``; runs from before it: solid)."""
    return RunSettings.of(cfg).data.occupancy




@dataclass
class TrainedModel:
    """A training checkpoint's model ready for inference (eval mode, on ``device``).

    ``config``: the run's resolved config (dict); ``frame``: its target frame; ``crop_size``: the
    input crop side in pixels; ``sampler``: the model's sampler overridden by the run's validation
    settings, then by the ``steps``/``guidance``/``samples`` given to ``load``; ``weights``: the base
    weights' identity and the trained tensors' SHA-256 (what an evaluation's reuse of scored cases
    checks); ``payload``: the checkpoint as read."""

    model: SparseStructureModel
    config: dict
    frame: str
    crop_size: int
    sampler: SamplerConfig
    weights: dict
    payload: dict
    device: str

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", steps: int | None = None,
             guidance: float | None = None, samples: int | None = None) -> "TrainedModel":
        """Read ``path`` (``InputError`` for a missing, damaged or foreign file; ``ConfigError`` for
        base weights other than those it was trained on) and rebuild its model on ``device``."""
        model, payload = load_model_from_checkpoint(path, device)
        config = payload["config"]
        run = RunSettings.from_config(config, legacy=True)
        return cls(model=model, config=config, frame=run.data.target_frame, crop_size=run.data.preprocess_crop_size[0],
                   sampler=sampler_settings(model.cfg.sampler, run.validation, steps, guidance, samples),
                   weights={"base": payload["base_identity"], "trained_sha256": tensors_digest(payload["trained_state"])},
                   payload=payload, device=str(device))
