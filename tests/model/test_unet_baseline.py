"""The U-Net baseline's model layer: input channels, the network's window, checkpoint round trip."""

import numpy as np
import pytest
import torch

from sam3d_med.data.dataset import load_manifest
from sam3d_med.data.geometry import take_slice
from sam3d_med.errors import InputError
from sam3d_med.model.unet_baseline import (
    CHECKPOINT_KIND,
    OUTSIDE_LOGIT,
    UNET_INPUT_CHANNELS,
    UNetBaseline,
    cache_sample_input,
    fit_centred,
    input_channel_names,
    load_unet_baseline,
    plane_in_window,
    unet_input,
)

TINY = dict(channels=(4, 8), strides=(2,), num_res_units=0)


def tiny_model(num_classes=3, side=16, seed=0) -> UNetBaseline:
    torch.manual_seed(seed)
    return UNetBaseline.create(num_classes, side, None, **TINY, train_cache="/some/cache", train_case_ids=["s1"],
                               training={"steps": 0})


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_unet_input_places_the_slice_on_its_plane(axis):
    shape, index, num_classes, cls = (6, 7, 8), 3, 4, 2
    plane_shape = tuple(n for i, n in enumerate(shape) if i != axis)
    rng = np.random.default_rng(axis)
    image = rng.uniform(0.1, 1.0, plane_shape)
    mask = rng.uniform(size=plane_shape) > 0.5
    x = unet_input(image, mask, axis, index, shape, cls, num_classes)
    assert x.shape == (3 + num_classes, *shape) and x.dtype == np.float32
    assert input_channel_names(num_classes)[:3] == UNET_INPUT_CHANNELS
    # on the plane: image, mask, indicator, in the cache's [h, w] order (take_slice)
    np.testing.assert_allclose(take_slice(x, axis, index, leading=1)[0], image.astype(np.float32))
    np.testing.assert_array_equal(take_slice(x, axis, index, leading=1)[1], mask.astype(np.float32))
    assert (take_slice(x, axis, index, leading=1)[2] == 1).all()
    # nowhere else
    others = np.delete(x[:3], index, axis=1 + axis)
    assert not others.any()
    # the class one-hot: constant everywhere
    assert (x[3 + cls - 1] == 1).all() and not np.delete(x[3:], cls - 1, axis=0).any()


def test_a_union_of_classes_switches_all_of_them_on():
    x = unet_input(np.zeros((7, 8)), np.ones((7, 8), bool), 0, 2, (6, 7, 8), 6, 5, class_ids=(1, 2, 5))
    assert [bool(x[3 + c].all()) for c in range(5)] == [True, True, False, False, True]
    assert not x[[5, 6]].any()  # classes 3 and 4


def test_unet_input_refuses_a_plane_of_the_wrong_shape():
    with pytest.raises(InputError, match="plane"):
        unet_input(np.zeros((7, 8)), np.zeros((7, 8), bool), 1, 0, (6, 7, 8), 1, 2)
    with pytest.raises(InputError, match="class 3"):
        unet_input(np.zeros((7, 8)), np.zeros((7, 8), bool), 0, 0, (6, 7, 8), 3, 2)


def test_cache_sample_input_reads_the_slice_and_the_sdf_mask(cache_dir):
    manifest = load_manifest(cache_dir)
    case = manifest["cases"][0]
    entry = next(e for e in case["slices"] if e["axis"] == 1 and e["class_pixel_counts"].get("2", 0) > 20)
    x = cache_sample_input(cache_dir, case, entry, 2, 5)
    slice_file = np.load(cache_dir / entry["file"])
    plane = take_slice(x, 1, entry["slice_idx"], leading=1)
    np.testing.assert_allclose(plane[0], slice_file["image"][0])
    np.testing.assert_array_equal(plane[1] > 0, slice_file["mask"] == 2)  # the SDF's mask is the label's
    assert x.shape == (8, *case["shape_ijk"])


def test_centre_crop_and_pad_round_trip():
    rng = np.random.default_rng(0)
    small = torch.from_numpy(rng.normal(size=(2, 5, 9, 12, 7)).astype(np.float32))
    # smaller than the window on every axis (odd and even margins): exact round trip
    fitted = fit_centred(small, (16, 16, 16), 0.0)
    assert fitted.shape == (2, 5, 16, 16, 16)
    np.testing.assert_array_equal(fit_centred(fitted, (9, 12, 7), -1.0), small)
    assert fitted[..., 3:12, 2:14, 4:11].equal(small)  # (16 - 9) // 2 = 3, (16 - 12) // 2 = 2, (16 - 7) // 2 = 4
    # larger on some axes: the centre survives, the rest comes back as the fill
    big = torch.from_numpy(rng.normal(size=(21, 16, 10)).astype(np.float32))
    cropped = fit_centred(big, (16, 16, 16), 0.0)
    back = fit_centred(cropped, (21, 16, 10), -5.0)
    assert back[2:18].equal(big[2:18]) and (back[:2] == -5).all() and (back[18:] == -5).all()
    assert plane_in_window((21, 16, 10), 0, 2, 16) and not plane_in_window((21, 16, 10), 0, 1, 16)
    assert not plane_in_window((21, 16, 10), 0, 18, 16) and plane_in_window((21, 16, 10), 2, 0, 16)


def test_predict_logits_on_another_grid():
    model = tiny_model(num_classes=2, side=16)
    image = np.full((20, 12), 0.5)
    mask = np.zeros((20, 12), bool)
    mask[8:12, 4:8] = True
    x = torch.from_numpy(unet_input(image, mask, 1, 9, (20, 18, 12), 1, 2))[None]
    logits = model.predict_logits(x)
    assert logits.shape == (1, 20, 18, 12)
    assert (logits[:, :2] == OUTSIDE_LOGIT).all() and (logits[:, 18:] == OUTSIDE_LOGIT).all()
    fitted = model.to_side(x)
    assert (fitted[0, 3] == 1).all() and (fitted[0, 4] == 0).all()  # class channels constant after padding
    outside = torch.from_numpy(unet_input(np.zeros((18, 12)), np.zeros((18, 12), bool), 0, 0, (20, 18, 12), 1,
                                          2))[None]  # plane 0 of 20 along axis 0: cropped away
    with pytest.raises(InputError, match="outside"):
        model.predict_logits(outside)


def test_save_load_round_trip_gives_identical_logits(tmp_path):
    model = tiny_model(num_classes=3, side=16, seed=1)
    model.training = {"steps": 5, "batch": 2, "lr": 1e-3, "seed": 1, "minutes": 0.1, "final_loss": 0.7}
    path = model.save(tmp_path / "unet.pt")
    loaded = load_unet_baseline(path, "cpu")
    assert (loaded.num_classes, loaded.side, loaded.channels, loaded.strides) == (3, 16, (4, 8), (2,))
    assert loaded.training == model.training and loaded.train_case_ids == ["s1"]
    assert loaded.train_cache == "/some/cache" and loaded.class_names == model.class_names
    payload = torch.load(path, weights_only=True)
    assert payload["kind"] == CHECKPOINT_KIND and payload["version"] == 1
    x = torch.from_numpy(np.stack([unet_input(np.random.default_rng(2).uniform(size=(16, 16)), np.eye(16, dtype=bool),
                                              2, 7, (16, 16, 16), c, 3) for c in (1, 3)]))
    model.network.eval()
    assert torch.equal(model.predict_logits(x), loaded.predict_logits(x))
    assert loaded.identity() == model.identity() and len(model.identity()["weights_sha256"]) == 64
    assert tiny_model(num_classes=3, side=16, seed=2).identity() != model.identity()


def one_line(exc) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_loading_other_files_is_one_line(tmp_path):
    with pytest.raises(InputError) as exc:
        load_unet_baseline(tmp_path / "missing.pt")
    assert "does not exist" in one_line(exc)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(InputError) as exc:
        load_unet_baseline(text)
    assert "not a torch file" in one_line(exc)
    lora = tmp_path / "best.pt"  # a LoRA training checkpoint's layout (plain values only)
    torch.save({"format": "sam3d-med-train-1", "trained_state": {"w": torch.zeros(2)}, "epoch": 3}, lora)
    with pytest.raises(InputError) as exc:
        load_unet_baseline(lora)
    message = one_line(exc)
    assert "sam3d-med-train-1" in message and "LoRA" in message and CHECKPOINT_KIND in message
    with_objects = tmp_path / "last.pt"  # a real one also holds numpy RNG states: not loadable weights-only
    torch.save({"format": "sam3d-med-train-1", "rng": {"numpy": np.random.get_state()}}, with_objects)
    with pytest.raises(InputError) as exc:
        load_unet_baseline(with_objects)
    assert "LoRA" in one_line(exc)
    state = tmp_path / "state.pt"
    torch.save(tiny_model().network.state_dict(), state)
    with pytest.raises(InputError) as exc:
        load_unet_baseline(state)
    assert "state dict" in one_line(exc)


def test_the_argument_check_knows_the_checkpoint_kind(tmp_path):
    from sam3d_med import preflight
    from sam3d_med.model.unet_baseline import CHECKPOINT_KIND

    assert preflight.UNET_CHECKPOINT_KIND == CHECKPOINT_KIND
    model = UNetBaseline.create(2, 16, channels=(4, 8), strides=(2,), num_res_units=0)
    assert preflight.unet_checkpoint(model.save(tmp_path / "u.pt")) == tmp_path / "u.pt"
    torch.save({"format": "sam3d-med-train-1"}, tmp_path / "best.pt")
    with pytest.raises(InputError, match="a LoRA / SAM3D training checkpoint, not a U-Net baseline"):
        preflight.unet_checkpoint(tmp_path / "best.pt")
