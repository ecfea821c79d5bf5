import json
import math
import shutil

import numpy as np
import pytest
import torch

from sam3d_med.data.dataset import Augmentation, SliceClassDataset, load_manifest, object_centric, split_cases
from sam3d_med.data.object_frame import normalisation_of_slice
from sam3d_med.errors import InputError
from sam3d_med.io.nifti import load_volume


def test_split_is_by_case_seeded_and_disjoint():
    ids = [f"s{i:04d}" for i in range(20)]
    train, val = split_cases(ids, 0.2, seed=3)
    assert len(val) == 4 and not set(train) & set(val) and sorted(train + val) == ids
    assert split_cases(ids, 0.2, seed=3) == (train, val)
    assert split_cases(ids, 0.2, seed=4) != (train, val)
    assert split_cases(["s0001"], 0.2, 0) == (["s0001"], [])


def test_samples_are_slice_class_pairs_with_enough_pixels(cache_dir):
    manifest = load_manifest(cache_dir)
    ds = SliceClassDataset(cache_dir, manifest, ["s0001"], (32, 32), min_pixels=10)
    entries = [s for s in manifest["cases"][0]["slices"]]
    expected = sum(1 for e in entries for c, n in e["class_pixel_counts"].items() if n >= 10)
    assert len(ds) == expected
    assert all(case == "s0001" for case, _, _ in ds.samples)


def test_inputs_targets_and_normalisation_in_the_volume_frame(cache_dir, phantom_dir):
    manifest = load_manifest(cache_dir)
    ds = SliceClassDataset(cache_dir, manifest, ["s0002"], (48, 48), frame="volume")
    item = ds[len(ds) // 2]
    for key in ("image", "rgb_image", "pointmap", "rgb_pointmap"):
        assert item[key].shape == (3, 48, 48)
    assert item["mask"].shape == (1, 48, 48) and set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    label = load_volume(phantom_dir / "s0002" / "s0002-label.nii.gz").data
    assert torch.equal(item["occupancy"][0].bool(), torch.from_numpy(label == item["class_id"]))
    # the crop box is 1.2 x the mask's extent: the mask fills most of the crop but never touches its border
    m = item["mask"][0]
    assert m.sum() > 0 and m[0].sum() == 0 and m[-1].sum() == 0 and m[:, 0].sum() == 0 and m[:, -1].sum() == 0
    # object-centric: masked points have median 0 and median max-abs 1
    pts = item["pointmap"][:, m > 0.5]
    assert torch.allclose(pts.median(dim=1).values, torch.zeros(3), atol=1e-4)
    assert (pts.abs().max(dim=0).values.median() - 1).abs() < 1e-4
    # full frame: grid coordinates in [-1, 1]; the slice axis coordinate is the slice's position
    full = item["rgb_pointmap"]
    coord = full[item["axis"]][torch.isfinite(full[item["axis"]])]
    assert torch.allclose(coord, torch.full_like(coord, 2 * item["slice_idx"] / 63 - 1), atol=1e-4)
    assert "cube_sdf" not in item


def test_object_frame_inputs_and_targets(cache_dir):
    """Both pointmaps share the slice's official normalisation; the cube holds the structure; the
    cube's signed distances are the scan's sampled at its cells; the slice is kept as it is."""
    manifest = load_manifest(cache_dir)
    ds = SliceClassDataset(cache_dir, manifest, ["s0002"], (48, 48), cube_resolution=32)
    item = ds[len(ds) // 2]
    entry = ds.samples[len(ds) // 2][1]
    raw = np.load(cache_dir / entry["file"])
    mask = raw["mask"] == item["class_id"]
    shift, scale = normalisation_of_slice(raw["pointmap"], mask)
    assert torch.allclose(item["pointmap_shift"], torch.tensor(shift, dtype=torch.float32))
    assert math.isclose(float(item["pointmap_scale"]), scale, rel_tol=1e-6)
    for key, view_mask in (("pointmap", item["mask"][0]), ("rgb_pointmap", item["rgb_image_mask"][0])):
        world = item[key][:, view_mask > 0.5] * item["pointmap_scale"] + item["pointmap_shift"][:, None]
        assert torch.allclose(world.median(dim=1).values, torch.tensor(shift, dtype=torch.float32), atol=3.1)
    assert item["cube_sdf"].shape == item["cube_occupancy"].shape == (1, 32, 32, 32)
    assert 0.02 < float(item["cube_occupancy"].mean()) < 0.7
    assert torch.equal(item["slice_points"], torch.from_numpy(raw["pointmap"]))
    assert torch.equal(item["slice_mask"][0].bool(), torch.from_numpy(mask))
    # the masked points of the slice lie inside the cube
    cube_x = (item["slice_points"][:, mask] - item["cube_centre_mm"][:, None]) / item["cube_side_mm"]
    assert float(cube_x.abs().max()) < 0.5


@pytest.mark.parametrize("frame", ["object", "volume"])
@pytest.mark.parametrize("augment", [None, Augmentation(max_rotation_deg=30)])
def test_every_masked_pixel_points_into_its_class(cache_dir, augment, frame):
    """Mask and pointmap stay aligned through crop, resize and augmentation: the 3-D point of each
    masked pixel lies in a voxel of that class, in the crop (denormalised) and in the full frame."""
    manifest = load_manifest(cache_dir)
    case = manifest["cases"][2]
    # the decoder's output side: the object cube's cells, or in the volume frame the grid (64^3 crops)
    ds = SliceClassDataset(cache_dir, manifest, [case["case_id"]], (40, 40), augment=augment, seed=1, frame=frame,
                           cube_resolution=16 if frame == "object" else 64)
    affine_inv = np.linalg.inv(np.array(case["affine"]))
    sdf = np.load(cache_dir / case["sdf_path"])
    for index in range(0, len(ds), max(1, len(ds) // 12)):
        item = ds[index]
        inside_class = sdf[item["class_id"] - 1]
        crop_mask = item["mask"][0] > 0.5
        world = (item["pointmap"][:, crop_mask] * item["pointmap_scale"] + item["pointmap_shift"][:, None]).numpy()
        ijk = np.rint(affine_inv[:3, :3] @ world + affine_inv[:3, 3:4]).astype(int)
        assert crop_mask.any() and np.all(inside_class[tuple(ijk)] < 0)
        full = item["rgb_pointmap"][:, item["rgb_image_mask"][0] > 0.5]
        if frame == "object":
            world = (full * item["pointmap_scale"] + item["pointmap_shift"][:, None]).numpy()
            ijk = np.rint(affine_inv[:3, :3] @ world + affine_inv[:3, 3:4]).astype(int)
        else:
            ijk = np.rint((full.numpy() + 1) / 2 * 63).astype(int)
        assert np.all(inside_class[tuple(ijk)] < 0)


def test_augmentation_is_reproducible_per_epoch(cache_dir):
    manifest = load_manifest(cache_dir)
    ds = SliceClassDataset(cache_dir, manifest, ["s0001"], (32, 32), augment=Augmentation(), seed=5)
    a, b = ds[3]["image"], ds[3]["image"]
    ds.set_epoch(1)
    c = ds[3]["image"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_object_centric_without_mask_is_identity():
    pts = torch.randn(3, 4, 4)
    out, shift, scale = object_centric(pts, torch.zeros(1, 4, 4))
    assert torch.equal(out, pts) and torch.equal(shift, torch.zeros(3)) and float(scale) == 1.0


def test_cache_errors(tmp_path, cache_dir):
    with pytest.raises(InputError, match="does not exist"):
        load_manifest(tmp_path / "absent")
    with pytest.raises(InputError, match="not a preprocessed cache"):
        load_manifest(tmp_path)
    copy = tmp_path / "old"
    shutil.copytree(cache_dir, copy, ignore=shutil.ignore_patterns("*.npz", "*.npy", "meshes"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["preprocess_version"] = 0
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="version 0.*--overwrite"):
        load_manifest(copy)
    manifest["preprocess_version"], manifest["cases"] = 1, []
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="no cases"):
        load_manifest(copy)
    with pytest.raises(InputError, match="square"):
        SliceClassDataset(cache_dir, load_manifest(cache_dir), ["s0001"], (32, 48))


def test_pair_epochs_visit_every_case_class_pair_once_with_a_fresh_seeded_slice(cache_dir):
    manifest = load_manifest(cache_dir)
    ds = SliceClassDataset(cache_dir, manifest, ["s0001", "s0002"], (32, 32), min_pixels=10, epoch_mode="pairs", seed=3)
    expected = {(c, int(k)) for c in ("s0001", "s0002") for e in ds.cases[c]["slices"]
                for k, n in e["class_pixel_counts"].items() if n >= 10}
    assert len(ds) == len(expected) and {(case, cls) for case, cls, _ in ds.pairs} == expected
    epoch_1 = [ds.sample_at(i) for i in range(len(ds))]
    assert {(case, cls) for case, _, cls in epoch_1} == expected  # every pair once
    for case, entry, cls in epoch_1:  # a slice where the class has enough pixels
        assert entry["class_pixel_counts"][str(cls)] >= 10
    assert [ds.sample_at(i) for i in range(len(ds))] == epoch_1  # seeded: the same epoch, the same slices
    ds.set_epoch(1)
    epoch_2 = [ds.sample_at(i) for i in range(len(ds))]
    assert sum(a[1]["file"] != b[1]["file"] for a, b in zip(epoch_1, epoch_2)) > len(ds) // 2  # drawn afresh
    assert len({e["axis"] for _, e, _ in epoch_1 + epoch_2}) > 1  # any cached axis
    # sharded over two ranks: disjoint and complete
    from torch.utils.data import DistributedSampler

    shards = [set(DistributedSampler(ds, num_replicas=2, rank=r, shuffle=True, seed=0)) for r in (0, 1)]
    assert not shards[0] & shards[1] and shards[0] | shards[1] == set(range(len(ds)))
    with pytest.raises(InputError, match="data.epoch must be one of"):
        SliceClassDataset(cache_dir, manifest, ["s0001"], (32, 32), epoch_mode="cases")
