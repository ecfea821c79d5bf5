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
    (tmp_path / "pred.obj").write_text("v 0 0 0\n")  # a mesh left by an earlier prediction at that path
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
    # the library names its parameter; the command line shows its own option (tests/test_errors.py)
    with pytest.raises(InputError, match=r"class_id=9: does not occur in .*label.nii.gz \(its label values: 1, 2, 3, 4, 5\)"):
        predict_volume(model, files["image"], 2, 40, tmp_path / "p.nii.gz", label_path=files["label"], class_id=9)
    with pytest.raises(InputError, match=r"class_id=2: is not on slice 0 along axis 2: it occurs on slices \d+\.\.\d+ "
                                         r"along that axis \(largest: \d+\)") as raised:
        predict_volume(model, files["image"], 2, 0, tmp_path / "p.nii.gz", label_path=files["label"], class_id=2)
    assert raised.value.rendered({"class_id": "--class"}).startswith("--class 2: is not on slice 0")


def test_draws_give_a_sub_voxel_surface_of_the_grids_map(monkeypatch):
    """reconstruct_logits: with one or several object-frame draws the surface comes from the finer grid
    around the structure (not the scan's 3 mm grid, not the cube beyond it); the NIfTI logits stay the
    grid's (mean), and every grid voxel centre of the surface map has the grid's value."""
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
    assert single.surface_logits.shape == predict.finer_surface_grid(single.logits, affine)[0]  # not the cube
    box = predict.surface_box(single.logits)
    from scipy.special import expit

    np.testing.assert_allclose(expit(single.surface_logits[1::3, 1::3, 1::3]), expit(single.logits[box]), atol=1e-5)


def anisotropic_oblique_case(root):
    """A phantom case stored LPS, oblique, at 0.75 x 0.75 x 3 mm (in-plane voxels repeated 4 x)."""
    write_phantom_dataset(root, 1, seed=8, axcodes="LPS", oblique_deg=20)
    out = {}
    for kind, dtype in (("image", np.int16), ("label", np.uint8)):
        img = nib.load(root / "s0001" / f"s0001-{kind}.nii.gz")
        data = np.repeat(np.repeat(np.asarray(img.dataobj), 4, 0), 4, 1)
        fine = img.affine @ np.diag([0.25, 0.25, 1.0, 1.0])
        fine[:3, 3] = img.affine[:3, :3] @ np.array([-0.375, -0.375, 0.0]) + img.affine[:3, 3]
        save_volume(root / f"{kind}.nii.gz", data, fine, dtype=dtype)
        out[kind] = root / f"{kind}.nii.gz"
    return out


@pytest.mark.parametrize("offset_mm", [0.0, 90.0])
def test_the_mesh_is_the_surface_of_the_map_the_nifti_holds(tmp_path, monkeypatch, offset_mm):
    """predict --mesh on an oblique LPS 0.75 x 0.75 x 3 mm scan, the model's shape an ellipsoid in its
    cube, placed on the structure (0 mm) or partly beyond the scan's field of view (90 mm): the mesh is
    the p = 0.5 surface of the same map as the NIfTI: watertight, inside the field of view, its
    bounds and volume the NIfTI's within a voxel."""
    import torch

    import sam3d_med.eval.predict as predict
    from sam3d_med.data.object_frame import place_cubes_on_grid
    from sam3d_med.data.surfaces import voxel_volume_mm3
    from sam3d_med.model.placement import GridReconstruction
    from sam3d_med.model.pose import Pose

    files = anisotropic_oblique_case(tmp_path)
    label_img = nib.load(files["label"])
    label = np.asarray(label_img.dataobj)
    index = int(np.argmax((label == 2).sum(axis=(0, 1))))
    centre = torch.tensor(world_centroid_mm(label == 2, label_img.affine) + np.array([offset_mm, 0, 0]),
                          dtype=torch.float32)
    n = 32
    cells = (torch.stack(torch.meshgrid(*[torch.arange(n)] * 3, indexing="ij")).float() + 0.5) / n - 0.5
    radii = torch.tensor([0.4, 0.3, 0.35]).view(3, 1, 1, 1)
    cube = torch.where(((cells / radii) ** 2).sum(0) <= 1, 6.0, -6.0)[None, None]
    pose = Pose(torch.eye(3)[None], centre[None], torch.full((1, 3), 70.0))

    def placed(model, inputs, frame, points, **kwargs):
        logits = place_cubes_on_grid(cube, pose.rotation, pose.translation, pose.scale, points)
        return GridReconstruction(logits, cube, pose)

    monkeypatch.setattr(predict, "reconstruct_on_grid", placed)
    written = predict.predict_volume(None, files["image"], 2, index, tmp_path / "pred.nii.gz", label_path=files["label"],
                                     class_id=2, mesh_path=tmp_path / "pred.obj", pose_fit=False)
    nifti = nib.load(tmp_path / "pred.nii.gz")
    mask = np.asarray(nifti.dataobj) > 0
    assert written["mesh"] == str(tmp_path / "pred.obj") and mask.any()
    mesh = trimesh.load(tmp_path / "pred.obj")
    assert mesh.is_watertight
    # inside the scan's field of view: every vertex within the grid's outer voxel faces
    index_of = (np.linalg.inv(nifti.affine) @ np.c_[mesh.vertices, np.ones(len(mesh.vertices))].T)[:3].T
    assert (index_of > -0.5 - 1e-3).all() and (index_of < np.array(mask.shape) - 0.5 + 1e-3).all()
    # bounds: the NIfTI's voxels (their corners in world mm) within one model voxel (3 mm)
    corners = np.array([[a, b, c] for a in (-0.5, 0.5) for b in (-0.5, 0.5) for c in (-0.5, 0.5)])
    where = (np.argwhere(mask)[:, None, :] + corners[None]).reshape(-1, 3)
    world = voxel_to_world(where, nifti.affine)
    assert np.abs(mesh.bounds - np.array([world.min(0), world.max(0)])).max() <= 3.0
    # volume: within half a model voxel (1.5 mm) times the surface's area
    volume = voxel_volume_mm3(mask, nifti.affine)
    assert abs(mesh.volume - volume) <= 1.5 * mesh.area, (mesh.volume, volume)


@pytest.mark.e2e
def test_predict_keeps_both_header_forms_and_takes_labels_in_any_voxel_order(trained, tmp_path):
    """A scan and label whose sform (code 2) and qform (code 1) are 15 mm apart in x: a warning naming both,
    and the prediction where the label is in every reader (nibabel: sform, ITK: qform). The label stored
    in the other voxel order (LPS for an LAS scan) with a header keeping every voxel in place: the same
    prediction; a header that moves it: refused with what differs."""
    from tests.io.test_nifti import itk_like_affine

    write_phantom_dataset(tmp_path / "raw", 1, seed=3)
    image_img = nib.load(tmp_path / "raw" / "s0001" / "s0001-image.nii.gz")
    label = np.asarray(nib.load(tmp_path / "raw" / "s0001" / "s0001-label.nii.gz").dataobj)
    for name, data in (("image", np.asarray(image_img.dataobj)), ("label", label)):
        img = nib.Nifti1Image(data, image_img.affine)
        qform = image_img.affine.copy()
        qform[0, 3] += 15.0
        img.set_sform(image_img.affine, code=2)
        img.set_qform(qform, code=1)
        nib.save(img, tmp_path / f"{name}.nii.gz")
    index = int(np.argmax((label == 2).sum(axis=(0, 1))))
    base = [sys.executable, "-m", "sam3d_med.cli", "predict", "--checkpoint", str(trained / "ckpt" / "best.pt"),
            "--image", str(tmp_path / "image.nii.gz"), "--axis", "2", "--slice_idx", str(index), "--class", "2",
            "--steps", "2", "--device", "cpu"]
    done = subprocess.run(base + ["--label", str(tmp_path / "label.nii.gz"), "--out", str(tmp_path / "pred.nii.gz")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("sform (code 2) and qform (code 1) disagree, by up to 15.0 mm") == 2  # image, label
    pred = nib.load(tmp_path / "pred.nii.gz")
    assert (int(pred.header["sform_code"]), int(pred.header["qform_code"])) == (2, 1)
    for reader in (lambda path: nib.load(path).affine, itk_like_affine):  # label and prediction 0 mm apart
        np.testing.assert_allclose(reader(tmp_path / "pred.nii.gz"), reader(tmp_path / "label.nii.gz"), atol=1e-4)
    # the label stored front to back (the other order along j), every voxel kept in place by its header
    affine = image_img.affine
    reordered = affine.copy()
    reordered[:3, 3] += affine[:3, 1] * (label.shape[1] - 1)
    reordered[:3, 1] *= -1
    nib.save(nib.Nifti1Image(label[:, ::-1, :].copy(), reordered), tmp_path / "label_lps.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(image_img.dataobj), affine), tmp_path / "plain.nii.gz")
    plain = [*base[:7], str(tmp_path / "plain.nii.gz"), *base[8:]]
    runs = {}
    for name in ("label", "label_lps"):
        source = tmp_path / ("raw/s0001/s0001-label.nii.gz" if name == "label" else "label_lps.nii.gz")
        runs[name] = subprocess.run(plain + ["--label", str(source), "--out", str(tmp_path / f"{name}_pred.nii.gz")],
                                    capture_output=True, text=True, timeout=300)
        assert runs[name].returncode == 0, runs[name].stderr
    assert "reordered onto the image's grid" in runs["label_lps"].stderr
    assert np.array_equal(np.asarray(nib.load(tmp_path / "label_pred.nii.gz").dataobj),
                          np.asarray(nib.load(tmp_path / "label_lps_pred.nii.gz").dataobj))
    mirrored = affine.copy()
    mirrored[:3, 1] *= -1  # LPS with the image's origin: the label mirrored front to back in the world
    nib.save(nib.Nifti1Image(label, mirrored), tmp_path / "label_mirrored.nii.gz")
    refused = subprocess.run(plain + ["--label", str(tmp_path / "label_mirrored.nii.gz"), "--out",
                                      str(tmp_path / "x.nii.gz")], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "axes LPS vs LAS" in refused.stderr and "centre shifted by [0.0, -189.0, 0.0] mm along R, A, S" in refused.stderr


def test_predict_from_several_slices_keeps_every_input_plane(trained, tmp_path):
    """--slice AXIS:INDEX repeated: each slice's mask read from the labels, every input plane of the
    prediction equal to its mask, the slices used written in the summary; one-line errors otherwise."""
    from sam3d_med.cli import main

    raw = tmp_path / "raw"
    write_phantom_dataset(raw, 1, seed=11, first_index=301)
    image_path, label_path = raw / "s0301" / "s0301-image.nii.gz", raw / "s0301" / "s0301-label.nii.gz"
    label = np.asarray(nib.load(label_path).dataobj)
    present = label == 2
    planes = [(2, int(np.argmax(present.sum(axis=(0, 1))))), (0, int(np.argmax(present.sum(axis=(1, 2)))))]
    base = ["predict", "--checkpoint", str(trained / "ckpt" / "best.pt"), "--image", str(image_path), "--device", "cpu",
            "--label", str(label_path), "--class", "2", "--steps", "2"]
    assert main(base + [arg for a, i in planes for arg in ("--slice", f"{a}:{i}")] + ["--out", str(tmp_path / "two.nii.gz")]) == 0
    predicted = np.asarray(nib.load(tmp_path / "two.nii.gz").dataobj) > 0
    for axis, index in planes:  # the phantom's grid is the model's (3 mm, axis-aligned): planes map one to one
        assert np.array_equal(np.take(predicted, index, axis=axis), np.take(present, index, axis=axis))
    assert main(base + ["--slice", "2:5:1", "--out", str(tmp_path / "x.nii.gz")]) == 1
    # a further slice without the class, or beyond the scan: one line naming it, before the model loads
    empty = next(i for i in range(present.shape[0]) if not present[i].any())
    done = subprocess.run([sys.executable, "-m", "sam3d_med.cli", *base, "--slice", f"2:{planes[0][1]}",
                           "--slice", f"0:{empty}", "--out", str(tmp_path / "x.nii.gz")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and done.stderr.startswith(f"error: --slice 0:{empty}: --class 2 is not on slice"), done.stderr
    assert "it occurs on slices" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    done = subprocess.run([sys.executable, "-m", "sam3d_med.cli", *base, "--slice", "2:99", "--out",
                           str(tmp_path / "x.nii.gz")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and done.stderr.startswith("error: --slice 2:99: slice 99 is outside"), done.stderr
    assert main(base + ["--slice", "2:3", "--slice", "2:3", "--out", str(tmp_path / "x.nii.gz")]) == 1
    done = subprocess.run([sys.executable, "-m", "sam3d_med.cli", *base[:5], "--device", "cpu", "--slice", "2:30",
                           "--slice", "0:30", "--mask", str(tmp_path / "m.png"), "--out", str(tmp_path / "x.nii.gz")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and done.stderr.strip() == (
        "error: several input slices need --label with --class (each slice's mask is read from the labels)")
