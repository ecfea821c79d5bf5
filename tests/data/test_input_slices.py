"""Several input slices per sample: one value for them, one normalisation for all of them."""

import numpy as np
import pytest
import torch

from sam3d_med.data.dataset import SliceClassDataset, collate_samples, load_manifest
from sam3d_med.data.input_slices import InputSlice, InputSlices
from sam3d_med.data.object_frame import normalisation_of_slice
from sam3d_med.errors import ConfigError, InputError
from sam3d_med.io.npz import read_npz
from sam3d_med.settings import RunSettings


def test_input_slices_are_checked():
    mask = np.ones((4, 4), bool)
    with pytest.raises(ValueError, match="given twice"):
        InputSlices((InputSlice(2, 5, mask), InputSlice(2, 5, mask)))
    with pytest.raises(ValueError, match="1 to 3"):
        InputSlices(tuple(InputSlice(a, 1, mask) for a in (0, 1, 2, 0)))
    with pytest.raises(ValueError, match="axis"):
        InputSlice(3, 1, mask)
    batch = {"axis": torch.tensor([2, 0]), "slice_idx": torch.tensor([7, 9])}
    assert [s.planes() for s in InputSlices.from_batch(batch, lambda b, a, i: mask)] == [[[2, 7]], [[0, 9]]]


def test_three_orthogonal_slices_share_one_frame(cache_dir):
    manifest = load_manifest(cache_dir)
    ids = [c["case_id"] for c in manifest["cases"]]
    three = SliceClassDataset(cache_dir, manifest, ids, (32, 32), 10, None, 0, num_slices=(3,))
    sample = three[5]
    axes = sample["input_axes"].tolist()
    assert int(sample["input_count"]) == 3 and sorted(axes) == [0, 1, 2] and axes[0] == sample["axis"]
    assert sample["extra_present"].tolist() == [1.0, 1.0] and sample["extra_image"].shape == (2, 3, 32, 32)
    # the shift and scale are the moments of all three slices' masked points (the official normalisation)
    case = three.cases[three.samples[5][0]]
    entries = {(e["axis"], e["slice_idx"]): e for e in case["slices"]}
    cls = int(sample["class_id"])
    points, masks = [], []
    for a, i in zip(axes, sample["input_indices"].tolist()):
        arrays = read_npz(cache_dir / entries[(a, i)]["file"], ("pointmap", "mask"), "slice")
        points.append(arrays["pointmap"].reshape(3, -1))
        masks.append((arrays["mask"] == cls).reshape(-1))
    shift, scale = normalisation_of_slice(np.concatenate(points, 1), np.concatenate(masks))
    assert np.allclose(sample["pointmap_shift"].numpy(), shift, atol=1e-3)
    assert np.isclose(float(sample["pointmap_scale"]), scale, rtol=1e-5)
    # each further slice's points, brought back with that shift and scale, are its own world points
    for k, (a, i) in enumerate(zip(axes[1:], sample["input_indices"].tolist()[1:])):
        crop = sample["extra_pointmap"][k] * sample["pointmap_scale"] + sample["pointmap_shift"][:, None, None]
        world = read_npz(cache_dir / entries[(a, i)]["file"], ("pointmap",), "slice")["pointmap"]
        inside = torch.isfinite(crop).all(0)
        coordinate = np.delete(np.arange(3), a)  # not the one along the slice's axis: that is constant
        assert inside.any() and np.isclose(float(crop[a][inside].mean()), float(world[a].mean()), atol=1e-2)
        assert all(np.nanmin(world[c]) - 1e-3 <= float(crop[c][inside].min()) for c in coordinate)
    # one slice: no further streams; a batch of mixed K pads with absent slices
    one = SliceClassDataset(cache_dir, manifest, ids, (32, 32), 10, None, 0)
    assert not any(k.startswith("extra_") for k in one[5]) and int(one[5]["input_count"]) == 1
    mixed = SliceClassDataset(cache_dir, manifest, ids, (32, 32), 10, None, 0, num_slices=(1, 3))
    counts = {int(mixed[i]["input_count"]) for i in range(0, len(mixed), 7)}
    assert counts == {1, 2, 3}
    batch = collate_samples([mixed[i] for i in range(0, 40, 7)])
    assert (batch["extra_present"].sum(1) + 1 == batch["input_count"]).all()


def test_parallel_slices_lie_along_the_first_slices_axis(cache_dir):
    manifest = load_manifest(cache_dir)
    ids = [c["case_id"] for c in manifest["cases"]]
    parallel = SliceClassDataset(cache_dir, manifest, ids, (32, 32), 10, None, 0, num_slices=(2,),
                                 slice_policy="parallel", slice_spacing_mm=9.0)
    sample = parallel[3]
    axes, indices = sample["input_axes"].tolist()[:2], sample["input_indices"].tolist()[:2]
    spacing = parallel.cases[parallel.samples[3][0]]["spacing_mm"][axes[0]]
    assert axes[0] == axes[1] and abs(abs(indices[1] - indices[0]) * spacing - 9.0) <= spacing


def test_the_volume_frame_takes_one_slice():
    with pytest.raises(ConfigError, match="data.target_frame='volume': conditions on one slice only"):
        RunSettings.from_config({"data": {"target_frame": "volume", "num_slices": [1, 3]}})
    with pytest.raises(ConfigError, match=r"data.num_slices=\[0, 4\]"):
        RunSettings.from_config({"data": {"num_slices": [0, 4]}})


def test_the_dataset_refuses_several_slices_in_the_volume_frame(cache_dir):
    manifest = load_manifest(cache_dir)
    with pytest.raises(InputError, match="one slice only"):
        SliceClassDataset(cache_dir, manifest, ["s0001"], (32, 32), frame="volume", num_slices=(2,))
