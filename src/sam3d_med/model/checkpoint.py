"""Loading (and, for tests, export and the rehearsal release, writing) the official SAM 3D Objects
checkpoint files.

Containers, as released:
- ``ss_generator.ckpt``: a PyTorch-Lightning checkpoint: ``state_dict`` (the flow transformer's keys
  start with ``GENERATOR_PREFIX``, the condition embedder's with ``CONDITION_PREFIX``) beside other
  entries Lightning writes (``hyper_parameters``, often an OmegaConf ``DictConfig``,
  ``pytorch-lightning_version``, loop and optimizer states...).
- ``ss_decoder.ckpt``: a flat state dict (possibly wrapped in ``state_dict``), fp16.
- ``ss_encoder.ckpt`` (and ``ss_encoder.yaml``): a flat state dict, fp16 (119 MB), as the official
  ``SparseStructureEncoderTdfyWrapper`` reads it (``torch.load(weights_only=True)``, strict); released
  on 2026-06-01. Snapshots and mirrors from before hold 0-byte placeholders ``ss_encoder.safetensors``
  and ``ss_encoder.yaml`` (``release_files.encoder_status`` says which a folder has). pipeline.yaml
  names each component's files; both ``.ckpt`` and ``.safetensors`` encoders are read.
Files are read with ``weights_only=True``; a Lightning file that this refuses because of non-tensor
metadata is read again by a restricted unpickler that rebuilds only what ``weights_only`` allows
(tensors, containers, dtypes), stands an inert placeholder in for every other object, and never runs
code from the file; one line says what was skipped. The official loader uses ``weights_only=False``,
which runs whatever the file names. Zip-format files are memory-mapped, so the model and a second
full copy of the weights are never both in memory; fp16 tensors are cast to the model's dtype as
they are copied in.
"""

from __future__ import annotations

import _compat_pickle
import hashlib
import logging
import pickle
import types
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError
from .release_files import FILES, component_files, encoder_status  # noqa: F401 (FILES: imported from here by callers)
from .sam3d import SparseStructureModel

GENERATOR_PREFIX = "_base_models.generator.reverse_fn.backbone."
CONDITION_PREFIX = "_base_models.condition_embedder."
log = logging.getLogger("sam3d_med.model")


def tensors_digest(state) -> str:
    """SHA-256 of named tensors (a state dict: names, shapes, dtypes and values, in name order):
    the identity of weights, wherever and however they are stored."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


class CheckpointError(InputError):
    """A checkpoint file is unreadable or does not match the model."""


def encoder_released(folder: str | Path) -> bool:
    """Whether ``folder`` holds usable SS encoder weights (not a 0-byte placeholder of an older snapshot)."""
    return encoder_status(folder).usable


class _Skipped:
    """Stands in for an object of a class the file names but that is not rebuilt: it accepts whatever
    construction, state and items the pickle gives it, and does nothing with them."""

    qualified_name = "?"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass

    def __repr__(self):
        return f"<skipped {self.qualified_name}>"


def _restricted_pickle_module(skipped: set[str]) -> types.ModuleType:
    """A ``pickle_module`` for ``torch.load`` whose unpickler resolves only the globals that
    ``weights_only=True`` allows and replaces every other class or function by a ``_Skipped`` type:
    nothing named in the file is imported or called."""
    from torch._weights_only_unpickler import _get_allowed_globals

    allowed = _get_allowed_globals()
    stand_ins: dict[str, type] = {}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            # the Python 2 names that protocol-2 files use (torch saves with protocol 2), as pickle maps them
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
            key = f"{module}.{name}"
            if key in allowed:
                return allowed[key]
            skipped.add(key)
            if key not in stand_ins:
                stand_ins[key] = type(f"Skipped_{name}", (_Skipped,), {"qualified_name": key})
            return stand_ins[key]

    module = types.ModuleType("sam3d_med_restricted_pickle")
    module.Unpickler = Unpickler
    module.load = lambda file, **kwargs: Unpickler(file, **kwargs).load()
    module.__dict__.update(HIGHEST_PROTOCOL=pickle.HIGHEST_PROTOCOL)
    return module


def _one_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


def _torch_load(path: Path, log_fn) -> object:
    mmap = zipfile.is_zipfile(path)  # only the zip format can be memory-mapped
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" not in str(exc).lower():
            raise
    skipped: set[str] = set()
    obj = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap,
                     pickle_module=_restricted_pickle_module(skipped))
    entries = [f"{key} ({_skipped_classes(value)})" for key, value in obj.items() if _skipped_classes(value)] \
        if isinstance(obj, dict) else []
    log_fn(f"{path.name}: checkpoint with non-tensor metadata (as PyTorch-Lightning writes): read its tensors "
           f"without running code from the file; skipped {', '.join(entries) or ', '.join(sorted(skipped))}")
    return obj


def _skipped_classes(value, depth: int = 0) -> str:
    """The classes of the placeholders in ``value`` ('' if none): the value's own, or those inside."""
    if isinstance(value, _Skipped):
        return value.qualified_name
    if depth > 20:
        return ""
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    found = sorted({name for item in items for name in [_skipped_classes(item, depth + 1)] if name})
    return ", ".join(found)


def read_state_dict(path: str | Path, log_fn=log.info) -> dict[str, torch.Tensor]:
    """Tensors of a ``.ckpt``/``.pt`` (``state_dict`` unwrapped) or ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file is missing")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: 0-byte file (a placeholder, not weights)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = _torch_load(path, log_fn)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: unreadable or truncated checkpoint ({type(exc).__name__}: {_one_line(exc)})") from None
    except Exception as exc:  # safetensors and a damaged pickle raise their own types
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {_one_line(exc)})") from None
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
    """Load the official files from ``folder`` (the download's output; names as its pipeline.yaml
    gives them) into ``model``; the encoder only where the model has one."""
    folder = Path(folder)
    files = component_files(folder)
    if "generator" in components:
        load_generator_checkpoint(model, folder / files["generator"][1])
    for name in ("decoder", "encoder"):
        if name in components and getattr(model, name) is not None:
            path = folder / files[name][1]
            _check_and_load(getattr(model, name), read_state_dict(path), path, f"the SS {name}")


def build_from_folder(folder: str | Path, preset: str = "sam3d", device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32, log=print) -> SparseStructureModel:
    """The model described by the official files in ``folder``, with their weights loaded.

    Sizes and sampler settings come from the YAML files when present (else the preset); whether the
    DINOv2 backbones carry ``mask_token`` (the official ``prune_network`` option removes it) is read
    from the generator file itself. The SS encoder is built and loaded when the folder holds its
    weights (today's release: ``ss_encoder.ckpt``); with a 0-byte placeholder (snapshots from before
    2026-06-01) or none the model has no encoder (``model.encoder is None``) and training inverts the
    decoder for its flow targets.
    """
    from .config import get_preset
    from .official_yaml import apply_official_yaml

    folder = Path(folder)
    config = get_preset(preset)
    encoder = encoder_status(folder)
    changed = apply_official_yaml(config, folder, with_encoder=encoder.usable)
    if changed:
        log(f"model sizes from {folder}: {', '.join(changed)}")
    generator_path = folder / component_files(folder)["generator"][1]
    state = read_state_dict(generator_path, log_fn=log)
    has_mask_token = any(k.endswith("backbone.mask_token") for k in state)
    config.image_vit.with_mask_token = config.mask_vit.with_mask_token = has_mask_token
    log(f"{encoder.describe()}: " + ("flow targets come from the encoder" if encoder.usable else
                                      "flow targets come from inverting the released decoder"))
    with torch.device(device):
        model = SparseStructureModel(config, with_encoder=encoder.usable).to(dtype)
    load_generator_checkpoint(model, generator_path, state)
    del state
    load_official_checkpoints(model, folder, components=("decoder", "encoder"))
    return model


def load_vae_from_folder(folder: str | Path, preset: str = "sam3d", log=print):
    """The released SS encoder and decoder of ``folder`` (sizes from its YAML, weights loaded
    strictly), without the 6.7 GB generator: ``(encoder, decoder, config)``, float32, eval mode.
    A folder without usable encoder weights (absent, or the 0-byte placeholder of a snapshot from
    before 2026-06-01) is one line saying so."""
    from .config import get_preset
    from .official_yaml import apply_official_yaml
    from .vae import SparseStructureDecoder, SparseStructureEncoder

    from .release_files import require_encoder

    folder = Path(folder)
    encoder_state = require_encoder(folder)
    config = get_preset(preset)
    apply_official_yaml(config, folder, with_encoder=True)
    files = component_files(folder)
    encoder, decoder = SparseStructureEncoder(config.vae), SparseStructureDecoder(config.vae)
    for module, name in ((encoder, "encoder"), (decoder, "decoder")):
        path = folder / files[name][1]
        _check_and_load(module, read_state_dict(path, log_fn=log), path, f"the SS {name}")
    log(encoder_state.describe())
    return encoder.eval(), decoder.eval(), config


def lightning_container(state_dict: dict[str, torch.Tensor], hyper_parameters: dict) -> dict:
    """What PyTorch-Lightning writes around a module's state dict (the release's generator file):
    the hyper-parameters as an OmegaConf DictConfig, version, loop and callback states."""
    from omegaconf import OmegaConf

    return {"epoch": 0, "global_step": 0, "pytorch-lightning_version": "2.3.3", "state_dict": state_dict,
            "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 0, "completed": 0}}}},
            "callbacks": {}, "optimizer_states": [], "lr_schedulers": [], "hparams_name": "kwargs",
            "hyper_parameters": OmegaConf.create(hyper_parameters)}


def save_official_layout(model: SparseStructureModel, folder: str | Path, dtype: torch.dtype | None = None,
                         release: bool = False, encoder_released: bool = True) -> None:
    """Write ``model`` in the official layout: checkpoints and YAML files (official schema).

    ``release=True`` packages it exactly as Meta's release is today: a Lightning-style generator
    file, fp16 decoder and encoder state dicts (``ss_encoder.ckpt`` with ``ss_encoder.yaml``); with
    ``encoder_released=False`` (or a model without an encoder) as snapshots from before 2026-06-01
    were: 0-byte placeholders ``ss_encoder.safetensors`` and ``ss_encoder.yaml``, named so by
    pipeline.yaml. ``release=False``: plain state dicts in ``dtype``, the encoder as safetensors
    (tests, export of merged weights)."""
    import yaml
    from safetensors.torch import save_file

    from ..io.atomic import atomic_path, atomic_write_bytes
    from .official_yaml import DECODER_YAML, ENCODER_YAML, GENERATOR_YAML, official_yaml_documents
    from .release_files import OLDER_ENCODER_CHECKPOINT

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with_encoder = model.encoder is not None and encoder_released
    encoder_file = OLDER_ENCODER_CHECKPOINT if not with_encoder or not release else FILES["encoder"]

    def cast(state, to=dtype):
        return {k: (v.to(to) if to is not None and v.is_floating_point() else v).contiguous() for k, v in state.items()}

    documents = official_yaml_documents(model.cfg, {
        "ss_generator": (GENERATOR_YAML, FILES["generator"]), "ss_decoder": (DECODER_YAML, FILES["decoder"]),
        "ss_encoder": (ENCODER_YAML, encoder_file)}, with_encoder=with_encoder)
    for name, document in documents.items():
        atomic_write_bytes(folder / name, yaml.safe_dump(document, sort_keys=False).encode())
    generator_state = {GENERATOR_PREFIX + k: v for k, v in cast(model.generator.state_dict()).items()}
    generator_state.update({CONDITION_PREFIX + k: v for k, v in cast(model.condition_embedder.state_dict()).items()})
    container = lightning_container(generator_state, documents[GENERATOR_YAML]) if release else {"state_dict": generator_state}
    with atomic_path(folder / FILES["generator"]) as tmp:
        torch.save(container, tmp)
    with atomic_path(folder / FILES["decoder"]) as tmp:
        torch.save(cast(model.decoder.state_dict(), torch.float16 if release else dtype), tmp)
    if not with_encoder:
        for name in (encoder_file, ENCODER_YAML):
            atomic_write_bytes(folder / name, b"")
    elif release:  # as the official wrapper reads it: a plain state dict, torch.load(weights_only=True)
        with atomic_path(folder / encoder_file) as tmp:
            torch.save(cast(model.encoder.state_dict(), torch.float16), tmp)
    else:
        with atomic_path(folder / encoder_file) as tmp:
            save_file(cast(model.encoder.state_dict()), str(tmp))
