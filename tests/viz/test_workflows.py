"""The tutorial's step-5 commands and the report, on a quickly trained tiny model and phantom cases."""

import json
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest
import trimesh

from sam3d_med.data.phantom import write_phantom_dataset
from sam3d_med.errors import InputError
from sam3d_med.eval.metrics import segmentation_metrics
from sam3d_med.eval.predict import predict_volume
from sam3d_med.eval.runner import EvalOptions, evaluate
from sam3d_med.viz.comparison import write_evaluation_case_visuals
from sam3d_med.train.trainer import load_model_from_checkpoint
from sam3d_med.viz.finetuned import export_slice_png, reconstruct_from_png
from sam3d_med.viz.report import write_report
from sam3d_med.viz.slices import to_display
from tests.conftest import assert_png_not_blank

REPO = Path(__file__).resolve().parents[2]
HEART = {1: "left_atrium", 2: "left_ventricle", 3: "right_atrium", 4: "right_ventricle", 5: "myocardium"}


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """One new phantom case stored RAS at 3 mm (its stored grid is the model's grid)."""
    root = tmp_path_factory.mktemp("scan")
    write_phantom_dataset(root, 1, seed=5, axcodes="RAS", first_index=301)
    return root / "s0301" / "s0301-image.nii.gz", root / "s0301" / "s0301-label.nii.gz"


def run(*args, timeout=300):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(done, text):
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(done.stderr.strip().splitlines()) == 1 and text in done.stderr, done.stderr


@pytest.mark.e2e
def test_visualize_comparison_tutorial_command(trained, scan, tmp_path):
    image, label = scan
    out = tmp_path / "results" / "comparison.png"
    done = run(REPO / "scripts" / "visualize_comparison.py", "--checkpoint", trained / "ckpt" / "best.pt", "--volume", image,
               "--slice_idx", 32, "--axis", 2, "--output", out, "--label", label, "--steps", 2, "--device", "cpu")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_png_not_blank(out, min_size=(1200, 700))
    on_slice = {int(c) for c in np.unique(np.asarray(nib.load(label).dataobj)[:, :, 32])} - {0}
    true_meshes = sorted(out.parent.glob("comparison_class*_true.obj"))
    assert {int(re.search(r"class(\d)", p.name).group(1)) for p in true_meshes} == on_slice
    labels = np.asarray(nib.load(label).dataobj)
    affine = nib.load(label).affine
    for path in true_meshes:  # true surfaces are closed, in world mm, around the labelled voxels
        c = int(re.search(r"class(\d)", path.name).group(1))
        mesh = trimesh.load(path, force="mesh")
        assert mesh.is_watertight
        centre = affine[:3, :3] @ np.argwhere(labels == c).mean(0) + affine[:3, 3]
        assert np.linalg.norm(mesh.center_mass - centre) < 3.0
    assert "Dice" in done.stdout

    # without ground truth: one structure from a mask PNG (display orientation; RAS 3 mm: the model's grid)
    mask = tmp_path / "mask.png"
    mpimg.imsave(mask, to_display(labels[:, :, 32] == 2).astype(np.float32), cmap="gray")
    done = run(REPO / "scripts" / "visualize_comparison.py", "--checkpoint", trained / "ckpt" / "best.pt", "--volume", image,
               "--slice_idx", 32, "--axis", 2, "--output", tmp_path / "nolabel.png", "--mask", mask, "--class", 2,
               "--steps", 2, "--device", "cpu")
    assert done.returncode in (0, 1), done.stderr[-2000:]
    assert_png_not_blank(tmp_path / "nolabel.png", min_size=(1200, 300))
    # neither --label nor --mask: the case's own label beside the scan (the tutorial's layout), said so;
    # a scan without one is one line saying what to give
    done = run(REPO / "scripts" / "visualize_comparison.py", "--checkpoint", trained / "ckpt" / "best.pt", "--volume", image,
               "--slice_idx", 32, "--output", tmp_path / "beside.png", "--steps", 2, "--device", "cpu")
    assert done.returncode == 0 and f"labels: {label} (beside the scan" in done.stderr, done.stderr[-2000:]
    alone = tmp_path / "alone.nii.gz"
    alone.write_bytes(Path(image).read_bytes())
    done = run(REPO / "scripts" / "visualize_comparison.py", "--checkpoint", trained / "ckpt" / "best.pt", "--volume", alone,
               "--slice_idx", 32, "--output", tmp_path / "x.png", "--device", "cpu")
    assert_one_line_error(done, "give the structures' masks")
    done = run(REPO / "scripts" / "visualize_comparison.py", "--checkpoint", trained / "ckpt" / "best.pt", "--volume", image,
               "--slice_idx", 99, "--label", label, "--output", tmp_path / "x.png", "--device", "cpu")
    assert_one_line_error(done, "outside the image's 64 slices")


@pytest.mark.e2e
def test_visualize_comparison_from_several_slices_frames_each(trained, scan, tmp_path):
    """--slice repeated: every structure from each given slice it is on; the figure names and frames
    them all; the primary alone as before."""
    image, label = scan
    labels = np.asarray(nib.load(label).dataobj)
    across = int(np.argmax((labels == 2).sum(axis=(1, 2))))
    out = tmp_path / "two.png"
    done = run(REPO / "scripts" / "visualize_comparison.py", "--checkpoint", trained / "ckpt" / "best.pt", "--volume", image,
               "--slice", "2:32", "--slice", f"0:{across}", "--output", out, "--label", label, "--steps", 2,
               "--device", "cpu")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_png_not_blank(out, min_size=(1200, 700))
    assert "Dice" in done.stdout
    # a structure that only a further slice shows is reconstructed from it too (every given slice counts)
    classes_on = [[set(np.unique(np.take(labels, i, axis=a)).tolist()) - {0} for i in range(64)] for a in range(3)]
    k, i = next((k, i) for k in range(64) for i in range(64)
                if classes_on[2][k] and classes_on[0][i] - classes_on[2][k])
    done = run(REPO / "scripts" / "visualize_comparison.py", "--checkpoint", trained / "ckpt" / "best.pt", "--volume", image,
               "--slice", f"2:{k}", "--slice", f"0:{i}", "--output", tmp_path / "union.png", "--label", label,
               "--steps", 1, "--device", "cpu")
    assert done.returncode == 0, done.stderr[-2000:]
    drawn = {int(c) for c in re.findall(r"class (\d)", done.stdout)}
    assert drawn == classes_on[2][k] | classes_on[0][i], (drawn, k, i)
    done = run(REPO / "scripts" / "visualize_comparison.py", "--checkpoint", trained / "ckpt" / "best.pt", "--volume", image,
               "--slice", "2:32", "--slice", "0:99", "--label", label, "--output", tmp_path / "x.png", "--device", "cpu")
    assert_one_line_error(done, "--slice 0:99: slice 99 is outside the image's 64 slices along axis 0")
    done = run(REPO / "scripts" / "visualize_comparison.py", "--checkpoint", trained / "ckpt" / "best.pt", "--volume", image,
               "--slice", "2:32", "--slice", "0:30", "--mask", tmp_path / "m.png", "--class", 2,
               "--output", tmp_path / "x.png", "--device", "cpu")
    assert_one_line_error(done, "several input slices need --label")
    done = run(REPO / "scripts" / "visualize_comparison.py", "--checkpoint", trained / "ckpt" / "best.pt", "--volume", image,
               "--slice", "2", "--label", label, "--output", tmp_path / "x.png", "--device", "cpu")
    assert_one_line_error(done, "--slice 2: give AXIS:INDEX")


def test_the_figure_frames_every_input_slice():
    from sam3d_med.viz.slices import comparison_figure, display_slices

    labels = np.zeros((30, 30, 30), np.uint8)
    labels[8:22, 10:20, 5:25] = 2
    assert {(2, 11), (0, 9)} <= set(display_slices(labels, 3, include=[(2, 11), (0, 9)]))
    fig = comparison_figure(np.zeros(labels.shape), np.eye(4), labels, {2: "left_ventricle"},
                            input_slice=[(2, 11), (0, 9)], per_axis=3)
    titles = [ax.get_title() for ax in fig.axes]
    assert sum("(input slice)" in t for t in titles) == 2


def test_png_route_reconstructs_what_the_nifti_route_does(trained, scan, tmp_path):
    """export-slice writes a slice in the frame the PNG route assumes (the grid's central slice): both
    routes give the same shape."""
    image, label = scan
    model, payload = load_model_from_checkpoint(trained / "ckpt" / "best.pt")
    crop = int(payload["config"]["data"]["preprocess_crop_size"][0])
    written = export_slice_png(image, label, 2, 32, tmp_path / "png", HEART)
    lv = next(p for p in written["masks"] if "left_ventricle" in p.name)
    summary = reconstruct_from_png(model, written["image"], lv, tmp_path / "out", crop_size=crop, seed=3)
    assert "3 mm pixels" in summary["assumption"] and "three CT windows" in summary["assumption"]
    predict_volume(model, image, 2, 32, tmp_path / "direct.nii.gz", label_path=label, class_id=2, crop_size=crop, seed=3)
    from_png = np.asarray(nib.load(tmp_path / "out" / "reconstruction.nii.gz").dataobj) > 0
    direct = np.asarray(nib.load(tmp_path / "direct.nii.gz").dataobj) > 0
    if direct.any() or from_png.any():  # the PNG's 8-bit intensities may flip a handful of voxels
        assert segmentation_metrics(from_png, direct, (3.0, 3.0, 3.0))["dice"] > 0.9
    # the renders show a surface when there is one (a quickly trained model may predict nothing)
    surface_drawn = 0.01 if (tmp_path / "out" / "reconstruction.obj").is_file() else 0.0
    for name, size, drawn in (("input_overlay.png", (600, 400), 0.1), ("mesh_views.png", (300, 900), surface_drawn),
                              ("prediction_slices.png", (1200, 300), 0.1)):
        assert_png_not_blank(tmp_path / "out" / name, min_size=size, min_drawn=drawn)
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["pixel_spacing_mm"] == 3.0 and saved["grid"]["slice_idx"] == 32

    # a grey PNG is read through the stated CT window; a mask too big for the grid is refused
    grey = tmp_path / "grey.png"
    mpimg.imsave(grey, mpimg.imread(written["image"])[..., 0], cmap="gray", vmin=0, vmax=1)
    summary = reconstruct_from_png(model, grey, lv, tmp_path / "grey_out", crop_size=crop)
    assert "grey read as CT window level 40 / width 400 HU" in summary["assumption"]
    with pytest.raises(InputError, match="field of view"):
        reconstruct_from_png(model, grey, lv, tmp_path / "big", pixel_spacing_mm=30.0, crop_size=crop)


@pytest.mark.e2e
def test_visualize_finetuned_tutorial_command(trained, scan, tmp_path):
    image, label = scan
    done = run("-m", "sam3d_med.cli", "export-slice", "--image", image, "--label", label, "--slice_idx", 30,
               "--out", tmp_path / "in")
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "results" / "visualizations"
    args = [REPO / "scripts" / "visualize_finetuned.py", "--lora_checkpoint", trained / "ckpt" / "best.pt",
            "--image", tmp_path / "in" / "image.png", "--mask_dir", tmp_path / "in" / "masks", "--mask_index", 0,
            "--output_dir", out, "--steps", 2, "--device", "cpu"]
    done = run(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "assumed geometry (a PNG has none): 3 mm pixels" in done.stdout
    for name in ("input_overlay.png", "mesh_views.png", "prediction_slices.png", "summary.json", "reconstruction.nii.gz"):
        assert (out / name).is_file(), name
    if (out / "reconstruction.obj").is_file():
        assert len(trimesh.load(out / "reconstruction.obj", force="mesh").faces) > 0
    args[args.index("--mask_index") + 1] = 7
    assert_one_line_error(run(*args), "--mask_index 7: the folder holds")


@pytest.fixture(scope="module")
def evaluation(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluation")
    evaluate(trained / "ckpt" / "best.pt", trained / "test_cache", out,
             EvalOptions(batch_size=8, steps=2), log=lambda m: None, case_visuals=write_evaluation_case_visuals)
    return out


def test_report_is_one_offline_file_with_every_section(evaluation, tmp_path):
    figures = sorted((evaluation / "visualizations").glob("*.png"))
    assert [p.name for p in figures] == ["s0201.png", "s0202.png"]
    path = write_report(evaluation, tmp_path / "report.html", max_3d_cases=2)
    text = path.read_text()
    assert not re.search(r"<script[^>]+src=", text) and not re.search(r"<link[^>]+href=\"?https?:", text)
    assert len(re.findall(r'<img alt="s\d+" src="data:image/png;base64,', text)) == len(figures)
    for section in ("Metrics of the fine-tuned model", "Baseline comparison", "Per-class distributions",
                    "Per-case figures", "Predicted vs true surfaces"):
        assert section in text
    for name in list(HEART.values()) + ["baseline: mean shape", "baseline: extrude", "fine-tuned model"]:
        assert name in text
    assert '"type":"mesh3d"' in text and '"type":"box"' in text and '"type":"bar"' in text
    assert "s0201" in text and "s0202" in text


def test_report_says_what_is_missing_and_refuses_other_folders(trained, tmp_path):
    bare = tmp_path / "bare"
    evaluate(trained / "ckpt" / "best.pt", trained / "test_cache", bare, EvalOptions(steps=2, max_cases=1),
             log=lambda m: None)
    text = write_report(bare).read_text()
    assert text.count("--save_viz") >= 2 and "<img" not in text
    done = run("-m", "sam3d_med.cli", "report", tmp_path / "nothing")
    assert_one_line_error(done, "no metrics.json")


def test_export_slice_indexes_the_file_as_stored_and_writes_display_orientation(tmp_path):
    """A scan stored LPS (i to the patient's left, j to posterior), 3 mm: a marker at the patient's
    right-anterior corner of stored slice k = 20 shows top right in the PNGs (anterior up, the right
    on the right, as the figures); slice 21 as stored has no marker."""
    from sam3d_med.io.nifti import save_volume

    affine = np.diag([-3.0, -3.0, 3.0, 1.0])  # LPS storage
    image = np.full((40, 40, 40), -800, np.int16)
    label = np.zeros((40, 40, 40), np.uint8)
    label[2:8, 3:9, 20] = 1  # small i: patient's right; small j: anterior
    label[15:30, 15:30, 18:23] = 2  # a central structure on every slice, so both slices export
    save_volume(tmp_path / "img.nii.gz", image, affine, dtype=np.int16)
    save_volume(tmp_path / "lab.nii.gz", label, affine, dtype=np.uint8)
    names = {1: "marker", 2: "centre"}
    written = export_slice_png(tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz", 2, 20, tmp_path / "a", names)
    marker = mpimg.imread(next(p for p in written["masks"] if "marker" in p.name))[..., 0] > 0.5
    rows, cols = np.nonzero(marker)
    assert rows.mean() < marker.shape[0] / 4 and cols.mean() > 3 * marker.shape[1] / 4  # top right
    other = export_slice_png(tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz", 2, 21, tmp_path / "b", names)
    assert [p.name for p in other["masks"]] == ["02_centre.png"]
