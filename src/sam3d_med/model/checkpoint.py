"""Loading (and, for tests and export, writing) the official SAM 3D Objects checkpoint files.

Containers, as released:
- ``ss_generator.ckpt``: torch pickle ``{"state_dict": {...}}``; the flow transformer's keys start
  with ``GENERATOR_PREFIX``, the condition embedder's with ``CONDITION_PREFIX``.
- ``ss_decoder.ckpt``: a flat state dict (possibly wrapped in ``state_dict``).
- ``ss_encoder.safetensors``: a flat state dict.
Files may be fp16; tensors are cast to the model's dtype while copied in. Files are read with
``weights_only=True`` and memory-mapped where the format allows, so the model and a second full
copy of the weights are never both in memory.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError
from .sam3d import SparseStructureModel

GENERATOR_PREFIX = "_base_models.generator.reverse_fn.backbone."
CONDITION_PREFIX = "_base_models.condition_embedder."
FILES = {"generator": "ss_generator.ckpt", "decoder": "ss_decoder.ckpt", "encoder": "ss_encoder.safetensors"}


class CheckpointError(InputError):
    """A checkpoint file is unreadable or does not match the model."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.ckpt``/``.pt`` (``state_dict`` unwrapped) or ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file is missing")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        mmap = zipfile.is_zipfile(path)  # only the zip format can be memory-mapped
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        first_line = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: unreadable or truncated checkpoint ({type(exc).__name__}: {first_line})") from None
    except Exception as exc:  # safetensors raises its own types for a corrupt header
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return obj


def _check_and_load(module: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """Strict load with a clear message: the first few missing/unexpected keys or shape mismatches."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                   for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong_shape)):
        if items:
            problems.append(f"{len(items)} {label} (first: {', '.join(items[:3])})")
    if problems:
        raise CheckpointError(f"{path}: {what} does not match the model: " + "; ".join(problems))
    # copy_ casts each tensor (fp16 -> model dtype) as it is copied: one model copy in memory
    module.load_state_dict(state, strict=True)


def load_generator_checkpoint(model: SparseStructureModel, path: str | Path,
                              state: dict[str, torch.Tensor] | None = None) -> None:
    path = Path(path)
    state = read_state_dict(path) if state is None else state
    generator = {k[len(GENERATOR_PREFIX):]: v for k, v in state.items() if k.startswith(GENERATOR_PREFIX)}
    condition = {k[len(CONDITION_PREFIX):]: v for k, v in state.items() if k.startswith(CONDITION_PREFIX)}
    if not generator or not condition:
        raise CheckpointError(f"{path}: no keys under {GENERATOR_PREFIX!r} or {CONDITION_PREFIX!r}: not an ss_generator checkpoint")
    _check_and_load(model.generator, generator, path, "flow transformer")
    _check_and_load(model.condition_embedder, condition, path, "condition embedder")


def load_official_checkpoints(model: SparseStructureModel, folder: str | Path, components=("generator", "decoder", "encoder")) -> None:
    """Load the official files from ``folder`` (the download's output) into ``model``."""
    folder = Path(folder)
    if "generator" in components:
        load_generator_checkpoint(model, folder / FILES["generator"])
    for name in ("decoder", "encoder"):
        if name in components:
            path = folder / FILES[name]
            _check_and_load(getattr(model, name), read_state_dict(path), path, name)


def build_from_folder(folder: str | Path, preset: str = "sam3d", device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32, log=print) -> SparseStructureModel:
    """The model described by the official files in ``folder``, with their weights loaded.

    Sizes and sampler settings come from the YAML files when present (else the preset); whether the
    DINOv2 backbones carry ``mask_token`` (the official ``prune_network`` option removes it) is read
    from the generator file itself.
    """
    from .config import apply_official_yaml, get_preset

    folder = Path(folder)
    config = get_preset(preset)
    changed = apply_official_yaml(config, folder)
    if changed:
        log(f"model sizes from {folder}: {', '.join(changed)}")
    generator_path = folder / FILES["generator"]
    state = read_state_dict(generator_path)
    has_mask_token = any(k.endswith("backbone.mask_token") for k in state)
    config.image_vit.with_mask_token = config.mask_vit.with_mask_token = has_mask_token
    with torch.device(device):
        model = SparseStructureModel(config).to(dtype)
    load_generator_checkpoint(model, generator_path, state)
    del state
    load_official_checkpoints(model, folder, components=("decoder", "encoder"))
    return model


def save_official_layout(model: SparseStructureModel, folder: str | Path, dtype: torch.dtype | None = None) -> None:
    """Write ``model`` in the official container layout (tests, and export of merged weights)."""
    from safetensors.torch import save_file

    from ..io.atomic import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def cast(state):
        return {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous() for k, v in state.items()}

    generator_state = {GENERATOR_PREFIX + k: v for k, v in cast(model.generator.state_dict()).items()}
    generator_state.update({CONDITION_PREFIX + k: v for k, v in cast(model.condition_embedder.state_dict()).items()})
    with atomic_path(folder / FILES["generator"]) as tmp:
        torch.save({"state_dict": generator_state}, tmp)
    with atomic_path(folder / FILES["decoder"]) as tmp:
        torch.save(cast(model.decoder.state_dict()), tmp)
    with atomic_path(folder / FILES["encoder"]) as tmp:
        save_file(cast(model.encoder.state_dict()), str(tmp))
