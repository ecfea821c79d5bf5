"""A supervised 3-D U-Net baseline (MONAI ``UNet``): the same input as the single-slice model, one
2-D slice (image + mask of a structure) and the class, and its 3-D mask on the case's grid as output.

The network's input: ``UNET_INPUT_CHANNELS`` then one channel per class (``input_channel_names``),
channel-first on the case's canonical grid (I, J, K) as in the cache (RAS+; the pixel [h, w] of an
axis-a slice s is voxel axis0:[s,h,w] axis1:[h,s,w] axis2:[h,w,s], ``data.geometry.take_slice``):
- 0 ``image``: the slice's CT window 0 image in [0, 1] on its plane, 0 elsewhere;
- 1 ``mask``: the slice's mask of the class on its plane (1 inside), 0 elsewhere;
- 2 ``plane``: 1 on the input plane, 0 elsewhere (says where the slice is, also when its mask is small);
- 3 .. 3 + num_classes - 1 ``class_<c>``: one-hot of the class, constant over the whole volume.
Output: one logit per voxel of that class's mask (p = sigmoid; mask = logit > 0).

The network works on a fixed cube of ``side`` voxels (64 for the tutorial's 64^3 crops at 3 mm; a
multiple of the product of the strides). A case of another shape is centre-cropped / zero-padded
per axis to side^3 (``fit_centred``: the centres coincide, offset ``(have - want) // 2`` as
``data.geometry.centred_on``), and the logits are put back on the case's grid the same way, with
``OUTSIDE_LOGIT`` (certainly background) where the network saw nothing. The class channels are
constant again after padding. An input plane that falls outside the centre side^3 window cannot be
seen by the network: ``predict_logits`` refuses it (``plane_in_window`` tells beforehand).

Checkpoint (``UNetBaseline.save``, ``load_unet_baseline``): a torch file holding plain values and
tensors only (loaded with ``weights_only=True``), ``kind`` ``CHECKPOINT_KIND``, ``version``
``CHECKPOINT_VERSION``.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..data.cache import case_sdf
from ..data.geometry import centre_offset, centred_on
from ..errors import ConfigError, InputError
from ..io.atomic import atomic_path
from ..io.npz import read_npz

CHECKPOINT_KIND = "sam3d_med.unet_baseline"
CHECKPOINT_VERSION = 1
# The input's first channels (module doc), then one constant channel per class: ``input_channel_names``
UNET_INPUT_CHANNELS = ("image", "mask", "plane")
OUTSIDE_LOGIT = -30.0  # where the network saw nothing (outside its side^3 window): background
DEFAULT_SIDE = 64
DEFAULT_CHANNELS = (16, 32, 64, 128)
DEFAULT_STRIDES = (2, 2, 2)


def input_channel_names(num_classes: int) -> tuple[str, ...]:
    """Names of the input channels, in order: image, mask, plane, class_1 .. class_<num_classes>."""
    return UNET_INPUT_CHANNELS + tuple(f"class_{c}" for c in range(1, int(num_classes) + 1))


def input_channel_count(num_classes: int) -> int:
    return len(UNET_INPUT_CHANNELS) + int(num_classes)


def build_unet(num_classes: int, channels=DEFAULT_CHANNELS, strides=DEFAULT_STRIDES, num_res_units: int = 1):
    """MONAI's 3-D ``UNet``: ``3 + num_classes`` input channels, one output channel (logits)."""
    from monai.networks.nets import UNet

    channels, strides = tuple(int(c) for c in channels), tuple(int(s) for s in strides)
    if int(num_classes) < 1:
        raise ConfigError(f"num_classes must be at least 1 (got {num_classes})")
    if len(channels) != len(strides) + 1:
        raise ConfigError(f"a U-Net needs one more channel count than strides (got channels {list(channels)}, "
                          f"strides {list(strides)})")
    return UNet(spatial_dims=3, in_channels=input_channel_count(num_classes), out_channels=1, channels=channels,
                strides=strides, num_res_units=int(num_res_units))


def check_side(side: int, strides) -> int:
    """``side`` must be divisible by the network's total down-sampling (the product of the strides)."""
    factor = math.prod(int(s) for s in strides)
    if int(side) < 1 or int(side) % factor:
        raise ConfigError(f"the U-Net side {side} must be a positive multiple of {factor} (the product of its strides)")
    return int(side)


def plane_shape(shape_ijk, axis: int) -> tuple[int, int]:
    return tuple(int(n) for i, n in enumerate(shape_ijk) if i != axis)


def unet_input(image_plane: np.ndarray, mask_plane: np.ndarray, axis: int, slice_idx: int, shape_ijk,
               class_id: int, num_classes: int, class_ids=None) -> np.ndarray:
    """The network's input (``UNET_INPUT_CHANNELS``), float32 (3 + num_classes, I, J, K) on the case's
    grid ``shape_ijk``: ``image_plane`` (H, W) in [0, 1] and ``mask_plane`` (H, W) bool placed at
    ``slice_idx`` along array ``axis``, the plane indicator, and the one-hot of ``class_id`` (1-based).
    ``class_ids``: the model's classes whose channels are on instead (a structure that is the union
    of training classes: all of them on; the default is ``(class_id,)``)."""
    shape = tuple(int(n) for n in shape_ijk)
    axis, slice_idx = int(axis), int(slice_idx)
    on = (int(class_id),) if class_ids is None else tuple(int(c) for c in class_ids)
    if len(shape) != 3 or axis not in (0, 1, 2):
        raise InputError(f"a 3-D grid and an axis 0, 1 or 2 are needed (got shape {shape}, axis {axis})")
    if not 0 <= slice_idx < shape[axis]:
        raise InputError(f"slice {slice_idx} is outside the grid's {shape[axis]} slices along axis {axis}")
    if not on or not all(1 <= c <= int(num_classes) for c in on):
        raise InputError(f"class {on[0] if len(on) == 1 else list(on)} is not one of the model's classes "
                         f"1..{num_classes}")
    expected = plane_shape(shape, axis)
    for name, plane in (("image", image_plane), ("mask", mask_plane)):
        if tuple(np.shape(plane)) != expected:
            raise InputError(f"the {name} plane is {tuple(np.shape(plane))}, a slice along axis {axis} of a "
                             f"{shape} grid is {expected}")
    out = np.zeros((input_channel_count(num_classes), *shape), dtype=np.float32)
    index = [slice(None)] * 4
    index[1 + axis] = slice_idx
    planes = out[tuple(index)]  # a view (C, H, W)
    planes[0] = np.asarray(image_plane, dtype=np.float32)
    planes[1] = np.asarray(mask_plane, dtype=bool)
    planes[2] = 1.0
    for c in on:
        out[len(UNET_INPUT_CHANNELS) + c - 1] = 1.0
    return out


def cache_sample_input(cache_dir, case: dict, entry: dict, class_id: int, num_classes: int,
                       class_ids=None, sdf: np.ndarray | None = None) -> np.ndarray:
    """``unet_input`` of one (case, slice entry, class) of a preprocessed cache: the slice file's CT
    window 0 image, and the class's mask on that plane from the signed distances (negative inside:
    the same truth the evaluation scores against; ``sdf``: the case's, when the caller holds them
    already, else read). ``class_ids``: as ``unet_input`` (the case's ``class_id`` gives the mask; the
    model's ``class_ids`` are switched on)."""
    cache_dir = Path(cache_dir)
    axis, slice_idx = int(entry["axis"]), int(entry["slice_idx"])
    image = read_npz(cache_dir / entry["file"], ("image",), "slice file")["image"][0]
    sdf = case_sdf(cache_dir, case) if sdf is None else sdf
    if not 1 <= int(class_id) <= sdf.shape[0]:
        raise InputError(f"case {case['case_id']}: class {class_id} is not in its signed distances (1..{sdf.shape[0]})")
    mask = np.asarray(np.take(sdf[int(class_id) - 1], slice_idx, axis=axis)) < 0
    return unet_input(image, mask, axis, slice_idx, case["shape_ijk"], class_id, num_classes, class_ids)


# ----------------------------------------------------------------------------- the network's window
def fit_centred(tensor: torch.Tensor, shape, fill: float = 0.0) -> torch.Tensor:
    """``tensor`` (..., I, J, K) centre-cropped / padded with ``fill`` to (..., *shape)
    (``data.geometry.centred_on``, as the evaluation's mean shape is centred)."""
    return centred_on(tensor, tuple(int(n) for n in shape)[-3:], fill)


def plane_in_window(shape_ijk, axis: int, slice_idx: int, side: int) -> bool:
    """Whether the plane ``slice_idx`` along ``axis`` of a ``shape_ijk`` grid lies in the centre side^3
    window the network sees."""
    index = int(slice_idx) - centre_offset(int(shape_ijk[int(axis)]), int(side))
    return 0 <= index < int(side)


class UNetBaseline:
    """The U-Net baseline: ``network`` (MONAI UNet), its classes, its window ``side``, the cache and
    cases it was trained on, and the training's summary."""

    def __init__(self, network, num_classes: int, side: int, class_names: dict, channels=DEFAULT_CHANNELS,
                 strides=DEFAULT_STRIDES, num_res_units: int = 1, train_cache: str | None = None,
                 train_case_ids: list[str] | None = None, training: dict | None = None):
        self.network = network
        self.num_classes = int(num_classes)
        self.channels, self.strides = tuple(int(c) for c in channels), tuple(int(s) for s in strides)
        self.num_res_units = int(num_res_units)
        self.side = check_side(side, self.strides)
        self.class_names = {str(k): str(v) for k, v in class_names.items()}
        self.train_cache = None if train_cache is None else str(train_cache)
        self.train_case_ids = list(train_case_ids or [])
        self.training = dict(training or {})
        self.optimizer_state: dict | None = None  # kept in a checkpoint saved mid-training, for its resume

    @classmethod
    def create(cls, num_classes: int, side: int = DEFAULT_SIDE, class_names: dict | None = None,
               channels=DEFAULT_CHANNELS, strides=DEFAULT_STRIDES, num_res_units: int = 1, **kwargs) -> UNetBaseline:
        """A new, untrained baseline (weights from torch's global generator: seed it first)."""
        names = class_names or {str(c): f"class_{c}" for c in range(1, int(num_classes) + 1)}
        return cls(build_unet(num_classes, channels, strides, num_res_units), num_classes, side, names, channels,
                   strides, num_res_units, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def to_side(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, C, I, J, K) -> (B, C, side, side, side), the class channels constant again after padding."""
        if inputs.ndim != 5 or inputs.shape[1] != input_channel_count(self.num_classes):
            raise InputError(f"the U-Net takes (batch, {input_channel_count(self.num_classes)}, I, J, K) inputs "
                             f"({self.num_classes} classes), got {tuple(inputs.shape)}")
        fitted = fit_centred(inputs, (self.side,) * 3, 0.0)
        if fitted is not inputs and self.num_classes:
            k = len(UNET_INPUT_CHANNELS)
            fitted = fitted.clone()
            fitted[:, k:] = inputs[:, k:].amax(dim=(2, 3, 4))[:, :, None, None, None].expand_as(fitted[:, k:])
        return fitted

    def fit_target(self, mask: torch.Tensor) -> torch.Tensor:
        """A mask (..., I, J, K) on the network's window (..., side, side, side), 0 where padded."""
        return fit_centred(mask, (self.side,) * 3, 0.0)

    def forward_side(self, fitted: torch.Tensor) -> torch.Tensor:
        """Logits (B, side, side, side) of inputs already on the network's window (training)."""
        return self.network(fitted)[:, 0]

    def predict_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits (B, I, J, K) on the inputs' grid of ``inputs`` (B, C, I, J, K) (``unet_input``, stacked),
        without gradients, on the network's device; ``OUTSIDE_LOGIT`` outside its side^3 window."""
        inputs = torch.as_tensor(inputs, dtype=torch.float32).to(self.device)
        fitted = self.to_side(inputs)
        seen = fitted[:, 2].flatten(1).amax(dim=1) > 0
        if not bool(seen.all()):
            bad = [int(b) for b in torch.nonzero(~seen).flatten()]
            raise InputError(f"input plane of sample(s) {bad} lies outside the U-Net's centre {self.side}^3 window of "
                             f"the {tuple(inputs.shape[2:])} grid (or the inputs have no plane)")
        with torch.no_grad():
            logits = self.forward_side(fitted)
        return fit_centred(logits, tuple(inputs.shape[2:]), OUTSIDE_LOGIT)

    def identity(self) -> dict:
        """What identifies this baseline in an evaluation's protocol (JSON values): its weights' SHA-256
        (``model.checkpoint.tensors_digest``), window, classes and training."""
        from .checkpoint import tensors_digest

        return {"kind": CHECKPOINT_KIND, "version": CHECKPOINT_VERSION,
                "weights_sha256": tensors_digest(self.network.state_dict()), "side": self.side,
                "num_classes": self.num_classes, "class_names": dict(self.class_names),
                "train_cache": self.train_cache, "training_steps": self.training.get("steps")}

    def payload(self) -> dict:
        return {"kind": CHECKPOINT_KIND, "version": CHECKPOINT_VERSION,
                "state_dict": {k: v.detach().cpu().clone() for k, v in self.network.state_dict().items()},
                "num_classes": self.num_classes, "class_names": dict(self.class_names),
                "channels": list(self.channels), "strides": list(self.strides), "num_res_units": self.num_res_units,
                "side": self.side, "train_cache": self.train_cache, "train_case_ids": list(self.train_case_ids),
                "training": dict(self.training),
                **({"optimizer_state": self.optimizer_state} if self.optimizer_state is not None else {})}

    def save(self, path) -> Path:
        """Write the checkpoint atomically (a reader sees the old file or the complete new one)."""
        path = Path(path)
        with atomic_path(path) as tmp:
            torch.save(self.payload(), tmp)
        return path


def _describe(payload) -> str:
    """What a torch file that is not a U-Net baseline checkpoint holds, in a few words."""
    if isinstance(payload, dict):
        if payload.get("format"):
            return f"a checkpoint of format {payload['format']!r}" + (
                " (a LoRA / SAM3D training checkpoint: best.pt, last.pt, epoch_N.pt)"
                if str(payload["format"]).startswith("sam3d-med-train") else "")
        if payload.get("kind"):
            return f"a file of kind {payload['kind']!r}"
        if payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
            return f"a bare state dict of {len(payload)} tensors"
        return "a dict with keys " + ", ".join(sorted(map(str, payload))[:6]) + ("..." if len(payload) > 6 else "")
    return f"a {type(payload).__name__}"


def load_unet_baseline(path, device="cpu") -> UNetBaseline:
    """The baseline saved at ``path``, on ``device``, in eval mode. A file that is missing, not a torch
    file, or not a U-Net baseline checkpoint (e.g. a LoRA best.pt) is one ``InputError`` line."""
    path = Path(path)
    expected = f"expected a U-Net baseline checkpoint (kind {CHECKPOINT_KIND!r}, written by sam3d-med train-unet)"
    if not path.is_file():
        raise InputError(f"{path}: " + ("is a folder" if path.is_dir() else "file does not exist") + f"; {expected}")
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not a torch file (truncated, or another kind of file); {expected}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (torch raises many types)
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise InputError(f"{path}: a torch file holding Python objects other than tensors and plain values "
                             f"(e.g. a LoRA training checkpoint); {expected}") from None
        raise InputError(f"{path}: unreadable torch file ({type(exc).__name__}); {expected}") from None
    if not isinstance(payload, dict) or payload.get("kind") != CHECKPOINT_KIND:
        raise InputError(f"{path}: {_describe(payload)}, not a U-Net baseline; {expected}")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise InputError(f"{path}: U-Net baseline checkpoint version {payload.get('version')}, this sam3d-med reads "
                         f"version {CHECKPOINT_VERSION}")
    try:
        model = UNetBaseline.create(payload["num_classes"], payload["side"], payload["class_names"],
                                    payload["channels"], payload["strides"], payload.get("num_res_units", 1),
                                    train_cache=payload.get("train_cache"),
                                    train_case_ids=payload.get("train_case_ids"), training=payload.get("training"))
        model.network.load_state_dict(payload["state_dict"])
        model.optimizer_state = payload.get("optimizer_state")
    except (KeyError, RuntimeError, ConfigError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: damaged U-Net baseline checkpoint ({first})") from None
    model.network.to(device).eval()
    return model
