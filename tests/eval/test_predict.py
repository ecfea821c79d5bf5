import subprocess
import sys

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest
import trimesh

from sam3d_med.data.phantom import write_phantom_dataset
from sam3d_med.eval.metrics import segmentation_metrics
from sam3d_med.data.geometry import voxel_to_world
from sam3d_med.eval.predict import back_to_input_grid, canonical_resampled
from sam3d_med.io.nifti import Volume, load_volume, save_volume
from sam3d_med.viz.finetuned import export_slice_png


def world_centroid_mm(mask, affine):
    return voxel_to_world(np.argwhere(mask).mean(0), affine)


def fine_oblique_case(root):
    """A phantom case stored LPS, oblique, at 1.5 mm (128^3): nothing like the model's grid."""
    write_phantom_dataset(root, 1, seed=8, axcodes="LPS", oblique_deg=20)
    out = {}
    for kind, dtype in (("image", np.int16), ("label", np.uint8)):
        img = nib.load(root / "s0001" / f"s0001-{kind}.nii.gz")
        data = np.asarray(img.dataobj)
        fine = img.affine @ np.diag([0.5, 0.5, 0.5, 1.0])
        fine[:3, 3] = img.affine[:3, :3] @ np.full(3, -0.25) + img.affine[:3, 3]
        up = np.repeat(np.repeat(np.repeat(data, 2, 0), 2, 1), 2, 2)
        save_volume(root / f"{kind}.nii.gz", up, fine, dtype=dtype)
        out[kind] = root / f"{kind}.nii.gz"
    return out


def test_back_to_the_input_grid_lands_on_the_same_world_coordinates(tmp_path):
    files = fine_oblique_case(tmp_path)
    label = load_volume(files["label"], canonical=False)
    truth = label.data == 2
    canonical = canonical_resampled(Volume(truth.astype(np.float32), label.affine), 3.0, order=1)
    assert canonical.data.shape == (64, 64, 64)
    back = back_to_input_grid(canonical.data, canonical.affine, truth.shape, label.affine) >= 0.5
    assert segmentation_metrics(back, truth, (1.5, 1.5, 1.5))["dice"] > 0.95
    assert np.linalg.norm(world_centroid_mm(back, label.affine) - world_centroid_mm(truth, label.affine)) < 1.0


@pytest.mark.e2e
def test_predict_command_writes_nifti_on_the_scan_grid(trained, tmp_path):
    files = fine_oblique_case(tmp_path)
    image = nib.load(files["image"])
    label = np.asarray(nib.load(files["label"]).dataobj)
    axis, index = 2, int(np.argmax((label == 2).sum(axis=(0, 1))))
    base = [sys.executable, "-m", "sam3d_med.cli", "predict", "--checkpoint", str(trained / "ckpt" / "best.pt"),
            "--image", str(files["image"]), "--axis", str(axis), "--slice_idx", str(index), "--device", "cpu"]
    done = subprocess.run(base + ["--label", str(files["label"]), "--class", "2", "--out", str(tmp_path / "pred.nii.gz"),
                                  "--probabilities", str(tmp_path / "prob.nii.gz"), "--mesh", str(tmp_path / "pred.ply")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    pred = nib.load(tmp_path / "pred.nii.gz")
    assert pred.shape == image.shape and np.allclose(pred.affine, image.affine)
    assert nib.aff2axcodes(pred.affine) == nib.aff2axcodes(image.affine) == ("L", "P", "S")
    prob = nib.load(tmp_path / "prob.nii.gz")
    assert prob.get_data_dtype() == np.float32 and np.allclose(prob.affine, image.affine)
    if "prediction is empty" not in done.stderr:
        assert trimesh.load(tmp_path / "pred.ply").is_watertight
    # the same slice given as the PNG mask export-slice writes (display orientation, the model's grid)
    written = export_slice_png(files["image"], files["label"], axis, index, tmp_path / "png", {2: "left_ventricle"})
    png = subprocess.run(base + ["--mask", str(written["masks"][0]), "--out", str(tmp_path / "pred_png.nii.gz")],
                         capture_output=True, text=True, timeout=300)
    assert png.returncode == 0, png.stderr
    assert np.array_equal(np.asarray(nib.load(tmp_path / "pred_png.nii.gz").dataobj), np.asarray(pred.dataobj))
    # the stored slice's array order (transposed against the display) is refused with the size it needs
    mpimg.imsave(tmp_path / "stored.png", (label[:, :, index] == 2).astype(np.float32), cmap="gray")
    wrong = subprocess.run(base + ["--mask", str(tmp_path / "stored.png"), "--out", str(tmp_path / "x.nii.gz")],
                           capture_output=True, text=True, timeout=300)
    assert wrong.returncode == 1 and "in display orientation (`sam3d-med export-slice`" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    bad = subprocess.run(base[:-4] + ["--slice_idx", "999", "--axis", "2", "--device", "cpu", "--label", str(files["label"]),
                                      "--class", "2", "--out", str(tmp_path / "x.nii.gz")], capture_output=True, text=True)
    assert bad.returncode == 1 and "outside" in bad.stderr and "Traceback" not in bad.stderr


def test_an_empty_prediction_writes_the_niftis_warns_and_succeeds(tmp_path, monkeypatch):
    """One behaviour with and without --mesh: outputs written, a warning, exit status 0."""
    import sam3d_med.eval.predict as predict
    from sam3d_med.model.config import get_preset
    from sam3d_med.model.sam3d import SparseStructureModel

    files = fine_oblique_case(tmp_path)
    label = np.asarray(nib.load(files["label"]).dataobj)
    index = int(np.argmax((label == 2).sum(axis=(0, 1))))

    def nothing(model, inputs, shape_ijk, affine, **kwargs):
        empty = np.full(tuple(shape_ijk), -10.0, np.float32)
        return [predict.Reconstruction(empty, empty, affine)]

    monkeypatch.setattr(predict, "reconstruct_logits", nothing)
    model = SparseStructureModel(get_preset("tiny"))
    for mesh in (None, tmp_path / "pred.obj"):
        written = predict.predict_volume(model, files["image"], 2, index, tmp_path / "pred.nii.gz",
                                         label_path=files["label"], class_id=2, mesh_path=mesh,
                                         probability_path=tmp_path / "prob.nii.gz", frame="volume")
        assert written["voxels"] == 0 and "prediction is empty" in written["warning"]
        assert (tmp_path / "pred.nii.gz").is_file() and (tmp_path / "prob.nii.gz").is_file()
        assert ("no mesh written" in written["warning"]) == (mesh is not None) and "mesh" not in written
    assert not (tmp_path / "pred.obj").exists()


def test_a_class_absent_from_the_labels_or_the_slice_is_named(tmp_path):
    from sam3d_med.errors import InputError
    from sam3d_med.eval.predict import predict_volume
    from sam3d_med.model.config import get_preset
    from sam3d_med.model.sam3d import SparseStructureModel

    files = fine_oblique_case(tmp_path)
    model = SparseStructureModel(get_preset("tiny"))
    with pytest.raises(InputError, match=r"--class 9 does not occur in .*label.nii.gz \(its label values: 1, 2, 3, 4, 5\)"):
        predict_volume(model, files["image"], 2, 40, tmp_path / "p.nii.gz", label_path=files["label"], class_id=9)
    with pytest.raises(InputError, match=r"--class 2 is not on slice 0 along axis 2: it occurs on slices \d+\.\.\d+ "
                                         r"along that axis \(largest: \d+\)"):
        predict_volume(model, files["image"], 2, 0, tmp_path / "p.nii.gz", label_path=files["label"], class_id=2)


def test_several_draws_give_a_sub_voxel_surface_and_one_draw_its_cube(monkeypatch):
    """reconstruct_logits: with several object-frame draws the surface comes from the finer grid
    around the structure (not the scan's 3 mm grid); the NIfTI logits stay the grid's mean."""
    import torch

    from sam3d_med.eval import predict
    from sam3d_med.model.placement import GridReconstruction, grid_points_mm
    from tests.model.test_placement import oblique_affine, two_draws_on

    affine = oblique_affine()
    draws, mean = two_draws_on(grid_points_mm((24, 24, 24), affine), affine)
    monkeypatch.setattr(predict, "reconstruct_on_grid", lambda *a, **k: GridReconstruction(mean, draws=draws))
    several, = predict.reconstruct_logits(None, [{"x": torch.zeros(1)}], (24, 24, 24), affine, frame="object")
    np.testing.assert_array_equal(several.logits, mean[0].numpy())
    assert np.allclose(np.linalg.norm(several.surface_affine[:3, :3], axis=0), 1.0)
    assert several.surface_logits.shape == predict.finer_surface_grid(several.logits, affine)[0]
    one = draws[0]
    monkeypatch.setattr(predict, "reconstruct_on_grid", lambda *a, **k: one)
    single, = predict.reconstruct_logits(None, [{"x": torch.zeros(1)}], (24, 24, 24), affine, frame="object")
    assert single.surface_logits.shape == (32, 32, 32)  # the cube itself
