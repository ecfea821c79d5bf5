"""Training samples from the preprocessed cache: one sample per (slice, class present in it).

Inputs are built the way SAM3D's sparse-structure stage expects them, at ``crop_size`` (S x S):
- crop: a square box around the class's mask, ``BOX_FACTOR`` x its larger side, centred on it
  (parts outside the slice are padding): ``image`` (3,S,S) bilinear, ``mask`` (1,S,S) and
  ``pointmap`` (3,S,S) nearest. Padding has NaN points (= "no point").
- full frame: the whole slice padded to a square: ``rgb_image``, ``rgb_image_mask``, ``rgb_pointmap``.
The pointmaps depend on the target frame (``frames``: ``object``, SAM3D as built, both pointmaps
normalised as the official preprocessor does, minus the median of the slice's masked points, divided
by the median over the slice's pixels of max_axis |p - shift|, the targets being the structure in its
own cube and that cube's pose; ``volume``, the earlier formulation, where a case whose grid is not
64^3 is seen through the 64^3 window around its labelled structures (``volume_window``): inputs,
targets, affine and slice index are the window's, and ``window_start`` (3,) says where it lies in the
case's grid).
The normalisation is returned with the sample (``pointmap_shift`` in mm, ``pointmap_scale`` in mm:
world mm = pointmap * scale + shift). Targets on the cache's canonical grid: ``occupancy``
(1, I, J, K) = label == class and ``sdf`` (1, I, J, K) in mm; ``axis``/``slice_idx`` locate the
input slice in it; ``affine`` (4, 4). In the object frame also: ``cube_centre_mm`` (3,),
``cube_side_mm``, ``cube_sdf`` (1, n, n, n) mm and ``cube_occupancy`` at the cube's cells, and the
input slice as it is in the cache, ``slice_points`` (3, H, W) world mm with ``slice_mask`` (1, H, W).

Augmentation (training only): intensity jitter of the images, and one small in-plane rotation and
scale applied through the same sampling grid to image, mask and pointmap of both views, so every
pixel's mask value and 3-D point still come from the same source pixel.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import InputError
from ..io.npz import read_npz
from ..settings import EPOCH_MODES
from .geometry import take_slice, world_grid
from .object_frame import DEFAULT_CUBE_MARGIN, ObjectCube, object_cube
from .frames import TargetFrame, target_frame
from .input_slices import EXTRA_PREFIX, MAX_SLICES, STREAMS_OF_EXTRA_SLICES
from .slice_policies import draw_num_slices, input_slice_entries
from .cache import case_classes, case_grid, case_sdf, cases_of, class_pixels, slice_classes
from .crop import AIR_HU
from .preprocess import load_manifest  # noqa: F401 (imported from here by callers)
from .preprocess import window_ct
from .volume_window import VolumeWindow, window_around

BOX_FACTOR = 1.2
AIR_WINDOWS = window_ct(np.full((1, 1, 1), AIR_HU))[:, 0, 0, 0]  # air in each CT window: the image's padding
# What one pass over the dataset is (``epoch_mode``, ``settings.EPOCH_MODES``): "pairs", every (case,
# class) pair once, each time with a slice drawn afresh among those where the class has at least
# min_pixels (any cached axis), seeded by (seed, epoch, index); "slices", every (slice, class) sample
# of the cache (exhaustive).
# Which slice of each (case, class, axis) the evaluation conditions on (``choose_slices``); validation
# uses the evaluation's default, so that best.pt is chosen by what the evaluation then measures.
POLICIES = ("max_area", "center")


def choose_slices(case: dict, axes, policy: str) -> list[tuple[dict, int]]:
    """(slice entry, class) per class present in the case and per axis, chosen by ``policy``."""
    chosen = []
    for cls in case_classes(case):
        for axis in axes:
            entries = [e for e in case["slices"] if e["axis"] == axis and class_pixels(e, cls) > 0]
            if not entries:
                continue
            if policy == "max_area":
                best = max(entries, key=lambda e: (class_pixels(e, cls), -e["slice_idx"]))
            elif policy == "center":
                weights = np.array([class_pixels(e, cls) for e in entries], dtype=np.float64)
                centroid = float(np.average([e["slice_idx"] for e in entries], weights=weights))
                best = min(entries, key=lambda e: (abs(e["slice_idx"] - centroid), e["slice_idx"]))
            else:
                raise InputError(f"must be one of {', '.join(POLICIES)}", parameter="policy", value=policy)
            chosen.append((best, cls))
    return chosen


def split_cases(case_ids: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split by case (never by slice): (train ids, validation ids), each sorted."""
    ids = sorted(case_ids)
    if len(ids) < 2 or val_fraction <= 0:
        return ids, []
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = min(len(ids) - 1, max(1, round(val_fraction * len(ids))))
    val = sorted(ids[i] for i in order[:n_val])
    return [c for c in ids if c not in set(val)], val


@dataclass
class Augmentation:
    max_rotation_deg: float = 10.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    contrast_range: tuple[float, float] = (0.9, 1.1)
    brightness: float = 0.05


def _sample(img: torch.Tensor, grid: torch.Tensor, mode: str) -> torch.Tensor:
    return F.grid_sample(img[None], grid[None], mode=mode, padding_mode="zeros", align_corners=False)[0]


def _square_grid(centre_hw, side, size, hw, angle=0.0, scale=1.0) -> torch.Tensor:
    """Sampling grid (S, S, 2) in grid_sample's (x=w, y=h) normalised coordinates for a square box
    of ``side`` pixels centred at ``centre_hw``, rotated by ``angle`` (radians) and zoomed by ``scale``."""
    H, W = hw
    u = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5  # box coordinates in [-0.5, 0.5]
    dv, du = torch.meshgrid(u, u, indexing="ij")  # rows (h), columns (w)
    c, s = math.cos(angle), math.sin(angle)
    h = centre_hw[0] + side / scale * (c * dv - s * du)
    w = centre_hw[1] + side / scale * (s * dv + c * du)
    # pixel index -> normalised coordinate (align_corners=False): (idx + 0.5) / N * 2 - 1
    return torch.stack([(w + 0.5) / W * 2 - 1, (h + 0.5) / H * 2 - 1], dim=-1)


def _views(image, mask, pointmap, grid):
    """Resample image (bilinear), mask and pointmap (nearest) on ``grid``; outside -> mask 0, NaN."""
    inside = _sample(torch.ones_like(mask), grid, "nearest") > 0.5
    points = _sample(torch.nan_to_num(pointmap), grid, "nearest")
    valid = inside & _sample(torch.isfinite(pointmap).all(0, keepdim=True).float(), grid, "nearest").bool()
    points = torch.where(valid, points, torch.full_like(points, float("nan")))
    return _sample(image, grid, "bilinear"), _sample(mask, grid, "nearest"), points


def object_centric(pointmap: torch.Tensor, mask: torch.Tensor):
    """(3,S,S) points -> ((points - shift) / scale, shift (3,), scale ()) with shift the median of the
    masked points and scale the median over masked pixels of max_axis |p - shift| (no masked point:
    shift 0, scale 1)."""
    selected = pointmap[:, (mask[0] > 0.5) & torch.isfinite(pointmap).all(0)]
    if selected.shape[1] == 0:
        return pointmap, torch.zeros(3), torch.tensor(1.0)
    shift = selected.median(dim=1).values
    scale = (selected - shift[:, None]).abs().max(dim=0).values.median()
    scale = scale if scale > 0 else torch.tensor(1.0)
    return (pointmap - shift[:, None, None]) / scale, shift, scale


def condition_inputs(image: torch.Tensor, mask: torch.Tensor, pointmap: torch.Tensor, affine: np.ndarray,
                     shape_ijk: tuple[int, int, int], size: int, angle: float = 0.0, scale: float = 1.0,
                     jitter: tuple[float, float] | None = None, frame: str | TargetFrame = "object",
                     normalised_by: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """The model's inputs from one slice: ``image`` (3,H,W) in [0,1], ``mask`` (1,H,W) of the class,
    ``pointmap`` (3,H,W) world mm, on a grid of ``shape_ijk`` with ``affine``; ``angle`` (radians),
    ``scale`` and ``jitter`` (contrast, brightness) are the augmentation (none by default); ``frame``
    chooses the pointmaps' normalisation (module doc), from the moments of this slice's masked points
    or of ``normalised_by`` ((3, N) world mm, (N,) mask: every input slice's, so that one shift and
    scale place all of them in one frame)."""
    if jitter is not None:
        image = (image * jitter[0] + jitter[1]).clamp(0, 1)
    H, W = mask.shape[1:]
    rows, cols = torch.nonzero(mask[0], as_tuple=True)
    if rows.numel() == 0:
        raise InputError("the conditioning mask is empty on this slice")
    centre = ((rows.min() + rows.max()).item() / 2, (cols.min() + cols.max()).item() / 2)
    side = BOX_FACTOR * (max(rows.max() - rows.min(), cols.max() - cols.min()).item() + 1)
    crop = _views(image, mask, pointmap, _square_grid(centre, side, size, (H, W), angle, scale))
    full = _views(image, mask, pointmap, _square_grid(((H - 1) / 2, (W - 1) / 2), max(H, W), size, (H, W), angle, scale))
    by_points, by_mask = normalised_by if normalised_by is not None else (pointmap.numpy(), mask[0].numpy())
    points, full_points, shift, point_scale = target_frame(frame).condition_pointmaps(
        crop[2], crop[1], full[2], by_points, by_mask, affine, shape_ijk)
    return {"image": crop[0], "mask": crop[1], "pointmap": points,
            "pointmap_shift": shift, "pointmap_scale": point_scale,  # world mm = pointmap * scale + shift
            "rgb_image": full[0], "rgb_image_mask": full[1], "rgb_pointmap": full_points}


def condition_inputs_of_slices(slices: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], affine: np.ndarray,
                               shape_ijk: tuple[int, int, int], size: int, angle: float = 0.0, scale: float = 1.0,
                               jitter: tuple[float, float] | None = None, frame: str | TargetFrame = "object",
                               extra_streams: tuple[str, ...] | None = None) -> dict:
    """The model's inputs from one or more slices of one grid, each (image (3,H,W), mask (1,H,W),
    pointmap (3,H,W) world mm), the first being the primary: ``condition_inputs`` of each, all
    normalised by the moments of all their masked points (one frame for every slice); the further
    slices' ``extra_streams`` stacked in ``extra_<stream>`` (MAX_SLICES - 1, C, S, S), zero-padded, with
    ``extra_present`` (MAX_SLICES - 1,). ``extra_streams`` None: one slice, no ``extra_*`` fields."""
    normalised_by = None
    if len(slices) > 1:  # one shift and scale for every input slice, from all their masked points
        normalised_by = (np.concatenate([p.numpy().reshape(3, -1) for _, _, p in slices], 1),
                         np.concatenate([m.numpy().reshape(-1) for _, m, _ in slices]))
    views = [condition_inputs(image, mask, points, affine, shape_ijk, size, angle, scale, jitter, frame, normalised_by)
             for image, mask, points in slices]
    sample = views[0]
    if extra_streams is None:
        if len(slices) > 1:
            raise InputError("several input slices, but no condition streams named for the further ones")
        return sample
    if len(slices) > MAX_SLICES:
        raise InputError(f"at most {MAX_SLICES} input slices (got {len(slices)})")
    for name in extra_streams:
        stacked = torch.zeros((MAX_SLICES - 1,) + sample[name].shape)
        for k, view in enumerate(views[1:]):
            stacked[k] = view[name]
        sample[EXTRA_PREFIX + name] = stacked
    sample[EXTRA_PREFIX + "present"] = (torch.arange(MAX_SLICES - 1) < len(views) - 1).float()
    return sample


# Per-sample fields whose size follows the case's grid (scans of any size): padded at the far end of
# each axis to the batch's largest, with values that mean "outside" (index 0 and so the affine stay).
GRID_SIZED_FIELDS = {"slice_points": float("nan"), "slice_mask": 0.0, "sdf": 1.0e4, "occupancy": 0.0}


def collate_samples(samples: list[dict]) -> dict:
    """``default_collate``, except that the grid-sized fields of cases of different sizes are padded."""
    from torch.utils.data import default_collate

    padded = []
    for key, fill in GRID_SIZED_FIELDS.items():
        if key not in samples[0]:
            continue
        shapes = [tuple(sample[key].shape) for sample in samples]
        if len(set(shapes)) > 1:
            largest = tuple(max(sizes) for sizes in zip(*shapes))
            padded.append((key, fill, largest))
    if padded:
        samples = [dict(sample) for sample in samples]
        for key, fill, largest in padded:
            for sample in samples:
                tensor = sample[key]
                pad = [p for size, big in zip(reversed(tensor.shape), reversed(largest)) for p in (0, big - size)]
                sample[key] = F.pad(tensor, pad, value=fill)
    return default_collate(samples)


class SliceClassDataset(Dataset):
    def __init__(self, cache_dir: str | Path, manifest: dict, case_ids: list[str], crop_size: tuple[int, int],
                 min_pixels: int = 10, augment: Augmentation | None = None, seed: int = 0,
                 latent_dir: str | Path | None = None, frame: str | TargetFrame = "object", cube_resolution: int = 64,
                 cube_margin: float = DEFAULT_CUBE_MARGIN, epoch_mode: str = "slices",
                 samples: list[tuple[str, dict, int]] | None = None, num_slices: tuple[int, ...] = (1,),
                 slice_policy: str = "orthogonal", slice_spacing_mm: float = 15.0, extra_slice_streams: str = "all"):
        """``latent_dir``: folder of precomputed flow targets (``<case>.npy``, float32 (C, c, R, R, R),
        one latent per class 1..C, in ``frame``); each sample then also holds ``shape_latent``
        (c, R, R, R). ``cube_resolution``: cells per side of the object cube (the decoder's output).
        ``epoch_mode``: ``EPOCH_MODES`` (``samples`` lists every (case, slice, class); in "pairs" mode
        an index is a (case, class) pair of ``pairs`` whose slice is drawn per epoch). ``samples``: the
        (case id, slice entry, class) samples to hold instead of every one with ``min_pixels``, in
        this order (validation and evaluation: the chosen slices). ``num_slices`` ([K] or [K_min, K_max],
        drawn per item, seeded) input slices per sample: the sample's slice first, the others chosen by
        ``slice_policy`` (``slice_policies``; fewer where the case has fewer), all normalised with one
        shift and scale; the further slices' ``extra_slice_streams`` go in ``extra_<stream>`` with
        ``extra_present``; every sample has ``input_axes``/``input_indices``/``input_count``
        (``input_slices``)."""
        if epoch_mode not in EPOCH_MODES:
            raise InputError(f"data.epoch must be one of {EPOCH_MODES} (got {epoch_mode!r})")
        self.epoch_mode = epoch_mode
        self.num_slices, self.slice_policy, self.slice_spacing_mm = tuple(num_slices), slice_policy, slice_spacing_mm
        self.extra_streams = STREAMS_OF_EXTRA_SLICES[extra_slice_streams]
        self.cache_dir = Path(cache_dir)
        self.latent_dir = Path(latent_dir) if latent_dir is not None else None
        self.frame = target_frame(frame)
        if self.num_slices[-1] > 1 and not self.frame.several_slices:
            raise InputError(f"the {self.frame} frame conditions on one slice only (num_slices {list(num_slices)})")
        self.cube_resolution, self.cube_margin = int(cube_resolution), float(cube_margin)
        if crop_size[0] != crop_size[1]:
            raise InputError(f"data.preprocess_crop_size must be square (SAM3D crops are square), got {list(crop_size)}")
        self.size = int(crop_size[0])
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.cases = {c["case_id"]: c for c in cases_of(manifest, case_ids)}
        self.case_index = {case_id: i for i, case_id in enumerate(sorted(self.cases))}
        self.samples: list[tuple[str, dict, int]] = []
        by_pair: dict[tuple[str, int], list[dict]] = {}
        for case_id in sorted(self.cases):
            for entry in self.cases[case_id]["slices"]:
                for cls in slice_classes(entry, min_pixels):
                    self.samples.append((case_id, entry, cls))
                    by_pair.setdefault((case_id, cls), []).append(entry)
        if samples is not None:
            self.samples = list(samples)
        # (case, class, eligible slices), sorted by case then class
        self.pairs = [(case_id, cls, entries) for (case_id, cls), entries in sorted(by_pair.items())]
        self._sdf_cache: dict[str, np.ndarray] = {}
        self._cubes: dict[tuple[str, int], ObjectCube] = {}
        # volume frame: each case seen through the decoder's n^3 window around its structures (the
        # identity for an n^3 crop); found here, so a case that cannot fit stops the run at its start
        self.windows: dict[str, VolumeWindow] = {}
        if self.frame.windowed:
            self.windows = {case_id: self.frame.window(self._sdf(case_id), self.cube_resolution, case_id)
                            for case_id in sorted(self.cases)}

    def with_samples(self, samples: list[tuple[str, dict, int]]) -> "SliceClassDataset":
        """This dataset (its settings and caches shared) holding ``samples`` instead."""
        subset = copy.copy(self)
        subset.samples = list(samples)
        return subset

    def __len__(self) -> int:
        return len(self.pairs) if self.epoch_mode == "pairs" else len(self.samples)

    def sample_at(self, index: int) -> tuple[str, dict, int]:
        """(case id, slice entry, class) of item ``index`` in this epoch."""
        if self.epoch_mode == "slices":
            return self.samples[index]
        case_id, cls, entries = self.pairs[index]
        draw = np.random.default_rng([self.seed, self.epoch, index, 1]).integers(len(entries))
        return case_id, entries[int(draw)], cls

    def set_epoch(self, epoch: int) -> None:
        """Augmentations depend on (seed, epoch, index): reproducible, and different every epoch."""
        self.epoch = epoch

    def _sdf(self, case_id: str) -> np.ndarray:
        if case_id not in self._sdf_cache:
            self._sdf_cache[case_id] = case_sdf(self.cache_dir, self.cases[case_id])
        return self._sdf_cache[case_id]

    def cube(self, case_id: str, cls: int) -> ObjectCube:
        """The object cube of a class of a case (``object_frame.object_cube``), computed once."""
        key = (case_id, cls)
        if key not in self._cubes:
            affine = np.asarray(self.cases[case_id]["affine"], dtype=np.float64)
            self._cubes[key] = object_cube(np.asarray(self._sdf(case_id)[cls - 1]) < 0, affine, self.cube_margin)
        return self._cubes[key]

    @staticmethod
    def _into_window(window: VolumeWindow, axis: int, slice_idx: int, affine: np.ndarray):
        index = window.slice_index(axis, slice_idx)
        if index is None:  # window_around holds every labelled voxel, and cached slices have some
            raise InputError(f"slice {slice_idx} along axis {axis} is outside the volume frame's window")
        return index, window.affine(affine), window.shape

    def input_entries(self, case_id: str, entry: dict, cls: int, index: int) -> list[dict]:
        """The sample's input slices (cache entries), ``entry`` first: K drawn from ``num_slices`` and the
        others chosen by the slice policy, seeded by (seed, epoch, index); as many as the case has."""
        if self.num_slices == (1,):
            return [entry]
        rng = np.random.default_rng([self.seed, self.epoch, index, 2])
        for k in range(draw_num_slices(self.num_slices, rng), 0, -1):
            try:
                return input_slice_entries(self.cases[case_id], cls, entry, k, self.slice_policy,
                                           spacing_mm=self.slice_spacing_mm, rng=rng)
            except ValueError:  # the case has fewer such slices of the class: take fewer
                continue
        return [entry]

    def _read_slice(self, entry: dict, cls: int):
        arrays = read_npz(self.cache_dir / entry["file"], ("image", "mask", "pointmap", "affine"), "slice file")
        return (torch.from_numpy(arrays["image"].astype(np.float32)),
                torch.from_numpy((arrays["mask"] == cls).astype(np.float32))[None],
                torch.from_numpy(arrays["pointmap"].astype(np.float32)), arrays["affine"])

    def __getitem__(self, index: int) -> dict:
        case_id, entry, cls = self.sample_at(index)
        image, mask, pointmap, affine = self._read_slice(entry, cls)
        entries = self.input_entries(case_id, entry, cls, index)
        further = [self._read_slice(e, cls) for e in entries[1:]]
        angle, scale, jitter = 0.0, 1.0, None
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            angle = math.radians(rng.uniform(-1, 1) * self.augment.max_rotation_deg)
            scale = rng.uniform(*self.augment.scale_range)
            jitter = (rng.uniform(*self.augment.contrast_range), rng.uniform(-1, 1) * self.augment.brightness)
        shape = tuple(self.cases[case_id]["shape_ijk"])
        slice_idx = int(entry["slice_idx"])
        sdf_volume = np.array(self._sdf(case_id)[cls - 1], dtype=np.float32)
        window = self.windows.get(case_id)
        if window is not None and not window.is_identity:  # volume frame, a case that is not n^3
            slice_idx, affine, shape = self._into_window(window, int(entry["axis"]), slice_idx, affine)
            image = torch.from_numpy(np.stack([window.take_plane(channel, int(entry["axis"]), air)
                                               for channel, air in zip(image.numpy(), AIR_WINDOWS)]))
            mask = torch.from_numpy(window.take_plane(mask.numpy(), int(entry["axis"]), 0.0))
            pointmap = torch.from_numpy(take_slice(world_grid(shape, affine, np.float32), int(entry["axis"]), slice_idx,
                                                   leading=1).copy())
            sdf_volume = window.take(sdf_volume, None, edge=True)
        sample = condition_inputs_of_slices([(image, mask, pointmap)] + [f[:3] for f in further], affine, shape,
                                            self.size, angle, scale, jitter, self.frame,
                                            self.extra_streams if self.num_slices[-1] > 1 else None)
        sample["input_axes"] = torch.tensor([int(e["axis"]) for e in entries] + [-1] * (MAX_SLICES - len(entries)))
        indices = [slice_idx] + [int(e["slice_idx"]) for e in entries[1:]]  # the first on the window's grid, if any
        sample["input_indices"] = torch.tensor(indices + [-1] * (MAX_SLICES - len(entries)))
        sample["input_count"] = len(entries)
        if window is not None:
            sample["window_start"] = torch.tensor(window.start, dtype=torch.long)
        sdf = torch.from_numpy(sdf_volume)[None]
        cube = self.cube(case_id, cls) if self.frame.placed_by_pose else None
        sample.update(self.frame.sample_targets(cube, sdf_volume, affine, self.cube_resolution, pointmap, mask))
        if self.latent_dir is not None:
            latents = np.load(self.latent_dir / f"{case_id}.npy", mmap_mode="r")
            sample["shape_latent"] = torch.from_numpy(np.array(latents[cls - 1], dtype=np.float32))
        return {
            **sample,
            "occupancy": (sdf < 0).float(), "sdf": sdf, "affine": torch.from_numpy(np.asarray(affine, dtype=np.float64)),
            "axis": int(entry["axis"]), "slice_idx": slice_idx, "class_id": cls,
            "case_index": self.case_index[case_id],
        }


def case_volume_window(sdf: np.ndarray, side: int, case_id: str) -> VolumeWindow:
    """The volume frame's ``side``^3 window of a case (``volume_window``) around all its labelled
    structures (``sdf`` (C, I, J, K) signed distances, negative inside)."""
    inside = (np.asarray(sdf) < 0).any(axis=0)
    if not inside.any():  # nothing labelled: the case gives no sample, any window will do
        return VolumeWindow(tuple((n - side) // 2 for n in inside.shape), side, inside.shape)
    return window_around(inside, side, f"case {case_id}: its structures")


def cached_case_volumes(cache_dir: str | Path, case: dict, channel: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image [i, j, k], labels [i, j, k], affine) of one cached case on its canonical grid.

    The cache keeps the image only as slices (those with foreground, along the cached axes), so the
    volume is put together from them: CT window ``channel`` in [0, 1], NaN where no cached slice
    passes through a voxel (far from every structure). Labels come from the signed distances
    (negative inside), which hold every class on the whole grid."""
    cache_dir = Path(cache_dir)
    grid = case_grid(case)
    shape = grid.shape
    image = np.full(shape, np.nan, dtype=np.float32)
    for entry in case["slices"]:
        plane = read_npz(cache_dir / entry["file"], ("image",), "slice file")["image"][channel]
        take_slice(image, entry["axis"], entry["slice_idx"])[...] = plane  # a view: writes into ``image``
    sdf = case_sdf(cache_dir, case)
    labels = np.zeros(shape, dtype=np.uint8)
    for c in range(sdf.shape[0], 0, -1):
        labels[np.asarray(sdf[c - 1]) < 0] = c
    return image, labels, grid.affine
