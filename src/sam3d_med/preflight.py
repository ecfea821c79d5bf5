"""Checks of a command's arguments, paths and input headers that need no heavy import.

Every command runs these before it imports torch or builds a model, so a wrong argument, a missing
file, a slice outside the scan or a GPU that is not there is one line within a second, not after
seconds of imports and loading. Only the standard library, numpy and nibabel (headers are read, not
the data, except a label's values when a class must be found in it) are used here.

Each function raises ``InputError``/``ConfigError`` with one line naming the flag and what to do.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

from .errors import ConfigError, InputError

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
UNET_CHECKPOINT_KIND = "sam3d_med.unet_baseline"  # model.unet_baseline.CHECKPOINT_KIND (a test keeps them equal)


def existing_file(path: str | os.PathLike, flag: str, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{flag} {path}: {what} does not exist")
    if not path.is_file():
        raise InputError(f"{flag} {path}: not a file ({what} expected)")
    return path


def training_checkpoint(path: str | os.PathLike, flag: str = "--checkpoint") -> Path:
    """A training checkpoint file (a PyTorch zip archive: best.pt, last.pt, epoch_N.pt)."""
    path = existing_file(path, flag, "checkpoint file")
    if not zipfile.is_zipfile(path):
        raise InputError(f"{flag} {path}: not a complete PyTorch checkpoint (truncated, or another kind of file); "
                         f"use best.pt, last.pt or an epoch_N.pt of training")
    return path


def unet_checkpoint(path: str | os.PathLike, flag: str = "--baseline unet") -> Path:
    """A U-Net baseline checkpoint (``sam3d-med train-unet``): a PyTorch zip archive whose pickle names
    its kind; a training checkpoint or another file is one line before torch loads (the pickle is only
    searched for the kind's name, not unpickled: the full check is ``load_unet_baseline``'s)."""
    path = existing_file(path, flag, "U-Net checkpoint")
    expected = "expected a U-Net baseline checkpoint (written by sam3d-med train-unet)"
    if not zipfile.is_zipfile(path):
        raise InputError(f"{flag} {path}: not a torch file (truncated, or another kind of file); {expected}")
    with zipfile.ZipFile(path) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("/data.pkl") or name == "data.pkl"]
        data = archive.read(pickles[0]) if pickles else b""
    if UNET_CHECKPOINT_KIND.encode() not in data:
        what = "a LoRA / SAM3D training checkpoint" if b"sam3d-med-train" in data else "another torch file"
        raise InputError(f"{flag} {path}: {what}, not a U-Net baseline; {expected}")
    return path


def output_path(path: str | os.PathLike, flag: str) -> Path:
    """A file to write: its folder may not exist yet, but nothing on the way may be a file."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{flag} {path}: is a folder; give a file name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{flag} {path}: {parent} is a file, not a folder")
            break
    return path


def output_folder(path: str | os.PathLike, flag: str) -> Path:
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path}: is a file, not a folder")
    return output_path(path / "x", flag).parent


def at_least(value, minimum, flag: str, optional: bool = True) -> None:
    if value is None and optional:
        return
    if value is None or value < minimum:
        raise ConfigError(f"{flag} must be at least {minimum} (got {value})")


def positive(value, flag: str, optional: bool = True) -> None:
    if value is None and optional:
        return
    if value is None or not value > 0:
        raise ConfigError(f"{flag} must be positive (got {value})")


def nvidia_gpus() -> list[str] | None:
    """The NVIDIA GPUs the driver lists (``/proc/driver/nvidia/gpus/*/information``; no CUDA needed):
    their models; None when this cannot be told without CUDA (no such folder, e.g. not Linux)."""
    root = Path("/proc/driver/nvidia/gpus")
    if not root.is_dir():
        return [] if Path("/proc").is_dir() else None
    models = []
    for entry in sorted(root.iterdir()):
        text = (entry / "information").read_text(errors="replace") if (entry / "information").is_file() else ""
        match = re.search(r"^Model:\s*(.+)$", text, re.MULTILINE)
        models.append(match.group(1).strip() if match else entry.name)
    return models


def describe_gpus(models: list[str]) -> str:
    return ", ".join(f"{i} ({m})" for i, m in enumerate(models)) if models else "none"


def device_option(text: str, flag: str = "--device") -> str:
    """auto, cpu, cuda or cuda:N; a CUDA device that this machine cannot have is one line naming the
    GPUs it has (read from the driver, before CUDA is loaded; torch checks again when it loads)."""
    given = f"{flag}{text}" if flag.endswith("=") else f"{flag} {text}"
    if not DEVICE_PATTERN.fullmatch(str(text)):
        shown = f"{flag}{text!r}" if flag.endswith("=") else f"{flag} {text!r}"
        raise ConfigError(f"{shown}: must be one of auto, cpu, cuda, cuda:N")
    if text.startswith("cuda"):
        models = nvidia_gpus()
        if models is None:
            return text
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        index = int(text.split(":")[1]) if ":" in text else 0
        if not models:
            raise ConfigError(f"{given}: this machine has no NVIDIA GPU (no driver lists one; GPUs: none): run "
                              f"on the CPU with device=cpu, or on a machine with a GPU")
        if visible is None and index >= len(models):
            raise ConfigError(f"{given}: there is no GPU {index}; this machine has GPUs {describe_gpus(models)}")
    return text


def nifti_shape(path: str | os.PathLike, flag: str, what: str) -> tuple[int, int, int]:
    """The 3-D shape in a NIfTI header (a trailing singleton 4th axis accepted); the data is not read."""
    import nibabel as nib

    path = existing_file(path, flag, f"{what} file")
    try:
        shape = tuple(int(n) for n in nib.load(str(path)).shape)
    except Exception as exc:  # nibabel raises several types for a damaged header
        raise InputError(f"{flag} {path}: cannot read the {what}'s NIfTI header ({type(exc).__name__})") from None
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(f"{flag} {path}: {what} must be 3-D, got shape {shape}")
    return shape


def slice_option(shape: tuple[int, int, int], axis: int, index: int, what: str = "image",
                 given: str | None = None) -> None:
    """The slice exists; ``given``: how the user wrote it (``--slice 2:30``), else --axis/--slice_idx."""
    if axis not in (0, 1, 2):
        raise ConfigError(f"{given}: the axis must be 0, 1 or 2 (the stored array axis)" if given
                          else f"--axis {axis}: must be 0, 1 or 2 (the stored array axis)")
    where = f"outside the {what}'s {shape[axis]} slices along axis {axis} (0..{shape[axis] - 1})"
    if not 0 <= index < shape[axis]:
        raise InputError(f"{given}: slice {index} is {where}" if given else f"--slice_idx {index} is {where}")


def label_beside(image_path: str | os.PathLike) -> Path | None:
    """The label of a case in the tutorial's layout: ``sNNNN-label.nii.gz`` beside ``sNNNN-image.nii.gz``."""
    image_path = Path(image_path)
    for suffix in (".nii.gz", ".nii"):
        if image_path.name.endswith(f"-image{suffix}"):
            candidate = image_path.with_name(image_path.name[:-len(f"-image{suffix}")] + f"-label{suffix}")
            return candidate if candidate.is_file() else None
    return None


def absent_class_error(class_id: int, label_path, data) -> InputError | None:
    """The error for a class that does not occur in label ``data`` (an array), else None."""
    import numpy as np

    if (np.asarray(data) == class_id).any():
        return None
    values = [int(v) for v in np.unique(data) if v != 0]
    return InputError(f"does not occur in {label_path} (its label values: "
                      f"{', '.join(map(str, values)) or 'none, only background'})", parameter="class_id", value=class_id)


def label_class(label_path: str | os.PathLike, class_id: int, image_path: str | os.PathLike | None = None,
                slices=(), flags=()) -> None:
    """The class occurs in the label volume (the values are read once), and on every slice of
    ``slices`` ((axis, index) of ``image_path`` as stored; ``flags``: how each was written, for the one
    line naming it and where the class is along that axis). The slices are checked here only for a
    label stored in the image's order; otherwise (and for no ``slices``) once the label is on the
    image's grid, which may take reordering."""
    import nibabel as nib
    import numpy as np

    label = nib.load(str(label_path))
    values = np.asarray(label.dataobj)
    error = absent_class_error(class_id, label_path, values)
    if error is not None:
        raise error
    if not slices:
        return
    image = nib.load(str(image_path))
    if image.shape[:3] != label.shape[:3] or not np.allclose(image.affine, label.affine, atol=1e-4):
        return
    present = values.reshape(label.shape[:3]) == class_id
    for (axis, index), flag in zip(slices, flags):
        if not np.take(present, index, axis=axis).any():
            where = np.flatnonzero(present.any(axis=tuple(a for a in range(3) if a != axis)))
            raise InputError(f"{flag or f'--slice_idx {index}'}: --class {class_id} is not on slice {index} along "
                             f"axis {axis}: it occurs on slices {where.min()}..{where.max()} along that axis")


def label_on_image_grid(image_path: str | os.PathLike, label_path: str | os.PathLike, flag: str = "--label") -> None:
    """The one grid rule of every command (``io.nifti.label_on_image_grid``) on the two headers alone:
    the label's voxels must coincide with the image's in the world, in any stored order."""
    import nibabel as nib
    import numpy as np

    from .io.nifti import Volume, grid_mismatch

    def header_only(path) -> Volume:
        img = nib.load(str(path))
        shape = tuple(int(n) for n in img.shape[:3])
        return Volume(np.broadcast_to(np.zeros((), bool), shape), np.asarray(img.affine, dtype=np.float64))

    mismatch = grid_mismatch(header_only(label_path), header_only(image_path))
    if mismatch:
        raise InputError(f"{label_path}: {mismatch}")
