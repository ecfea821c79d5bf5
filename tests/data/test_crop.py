import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from sam3d_med.data.geometry import voxel_to_world
from sam3d_med.data.phantom import write_phantom_dataset
from sam3d_med.data.preprocess import PreprocessOptions, run_preprocess
from sam3d_med.io.nifti import save_volume
from tests.eval.test_predict import fine_oblique_case

REPO = Path(__file__).resolve().parents[2]


def whole_scan(root):
    """An oblique LPS scan at 1.5 mm, larger than the structures' box (air around), whose labels use
    another numbering (51..55, as a TotalSegmentator task might)."""
    files = fine_oblique_case(root)
    out = {}
    for kind, pad_value, dtype in (("image", -1000, np.int16), ("label", 0, np.uint8)):
        img = nib.load(files[kind])
        data = np.pad(np.asarray(img.dataobj), ((20, 12), (8, 30), (16, 4)), constant_values=pad_value)
        if kind == "label":
            data = np.where(data > 0, data + 50, 0).astype(np.uint8)
        affine = img.affine.copy()
        affine[:3, 3] -= affine[:3, :3] @ np.array([20, 8, 16])  # the old voxel 0 keeps its world position
        save_volume(root / f"whole-{kind}.nii.gz", data, affine, dtype=dtype)
        out[kind] = root / f"whole-{kind}.nii.gz"
    return out


def label_geometry(path, value):
    img = nib.load(path)
    mask = np.asarray(img.dataobj) == value
    centroid = voxel_to_world(np.argwhere(mask).mean(0), img.affine)
    return centroid, mask.sum() * abs(np.linalg.det(img.affine[:3, :3])) / 1000.0


def test_crop_keeps_world_positions_and_feeds_the_tutorial(tmp_path):
    scan = whole_scan(tmp_path)
    cmd = [sys.executable, "-m", "sam3d_med.cli", "crop", "--image", str(scan["image"]), "--label", str(scan["label"]),
           "--out", str(tmp_path / "data"), "--case_id", "s0001", "--labels", "51:1,52:2,53:3,54:4,55:5",
           "--class_names", "left_atrium,left_ventricle,right_atrium,right_ventricle,myocardium"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    image = nib.load(tmp_path / "data" / "s0001" / "s0001-image.nii.gz")
    label_path = tmp_path / "data" / "s0001" / "s0001-label.nii.gz"
    assert image.shape == (64, 64, 64) and nib.aff2axcodes(image.affine) == ("R", "A", "S")
    assert np.allclose(image.affine[:3, :3], np.diag([3.0, 3.0, 3.0]))
    assert np.allclose(nib.load(label_path).affine, image.affine)
    assert sorted(np.unique(np.asarray(nib.load(label_path).dataobj))) == [0, 1, 2, 3, 4, 5]
    for value in range(1, 6):  # each structure stays where it is in the world, with its volume
        centroid, volume = label_geometry(label_path, value)
        centroid_0, volume_0 = label_geometry(scan["label"], value + 50)
        assert np.linalg.norm(centroid - centroid_0) < 1.0 and abs(volume / volume_0 - 1) < 0.05, value
    hu = np.asarray(image.dataobj)
    assert hu.min() >= -1024 and np.median(hu[np.asarray(nib.load(label_path).dataobj) == 2]) > 100  # contrast blood
    summary = run_preprocess(tmp_path / "data", tmp_path / "cache", PreprocessOptions(), progress=False,
                             log=lambda m: None)
    assert summary.ok and summary.processed == ["s0001"]
    bad = subprocess.run(cmd[:-4] + ["--labels", "7"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "none of the labels [7] occurs" in bad.stderr and "Traceback" not in bad.stderr


def test_preprocessing_crops_whole_scans_itself(tmp_path):
    scan = whole_scan(tmp_path)
    for kind in ("image", "label"):  # a data folder of whole scans, labels 1..5
        img = nib.load(scan[kind])
        data = np.asarray(img.dataobj)
        if kind == "label":
            data = np.where(data > 0, data - 50, 0).astype(np.uint8)
        save_volume(tmp_path / "raw" / "s0001" / f"s0001-{kind}.nii.gz", data, img.affine,
                    dtype=np.uint8 if kind == "label" else np.int16)
    summary = run_preprocess(tmp_path / "raw", tmp_path / "cache", PreprocessOptions(crop_size=64), progress=False,
                             log=lambda m: None)
    assert summary.ok
    import json

    record = json.loads((tmp_path / "cache" / "manifest.json").read_text())["cases"][0]
    assert record["shape_ijk"] == [64, 64, 64] and record["options"]["crop_size"] == 64
    assert all(record["class_voxel_counts"][str(c)] > 0 for c in range(1, 6))


def test_a_whole_1mm_oblique_scan_goes_through_the_workflow(tmp_path):
    """The issue's 'done when': a full 1 mm scan in another orientation -> crop -> preprocess ->
    train -> evaluate -> predict -> visualize, each as the user runs it, without a traceback."""
    from tests.train.conftest import QUICK

    write_phantom_dataset(tmp_path / "src", 2, seed=11, axcodes="LPI", oblique_deg=15)
    scans = []
    for case in ("s0001", "s0002"):
        for kind, fill, dtype in (("image", -1000, np.int16), ("label", 0, np.uint8)):
            img = nib.load(tmp_path / "src" / case / f"{case}-{kind}.nii.gz")
            fine = np.repeat(np.repeat(np.repeat(np.asarray(img.dataobj), 3, 0), 3, 1), 3, 2)  # 1 mm
            fine = np.pad(fine, 12, constant_values=fill)  # a larger field of view than the structures
            affine = img.affine @ np.diag([1 / 3, 1 / 3, 1 / 3, 1.0])
            affine[:3, 3] = img.affine[:3, :3] @ np.full(3, -1 / 3) + img.affine[:3, 3] - affine[:3, :3] @ np.full(3, 12)
            save_volume(tmp_path / "whole" / f"{case}-{kind}.nii.gz", fine, affine, dtype=dtype)
        scans.append(case)

    def run(*args, script=None):
        cmd = [sys.executable, *(["-m", "sam3d_med.cli"] if script is None else [str(REPO / "scripts" / script)]),
               *map(str, args)]
        done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0 and "Traceback" not in done.stderr, (args, done.stderr[-2000:])
        return done

    for case in scans:
        run("crop", "--image", f"whole/{case}-image.nii.gz", "--label", f"whole/{case}-label.nii.gz", "--out", "data",
            "--case_id", case)
    run("--original_nifti_dir", "data", "--out", "cache", "--classes", "5", "--spacing", "3.0",
        script="reprocess_ts_nifti.py")
    run(*QUICK, "data.slice_cache_dir=cache", "training.checkpoint_dir=ckpt", "training.epochs=1",
        "data.val_fraction=0", "hydra.run.dir=run", script="train_medical_hydra.py")
    run("--checkpoint", "ckpt/best.pt", "--data_root", "cache", "--output_dir", "eval", "--steps", "2", "--max_cases",
        "1", "--device", "cpu", script="eval_medical.py")
    label = np.asarray(nib.load(tmp_path / "whole" / "s0001-label.nii.gz").dataobj)
    index = int(np.argmax((label == 2).sum(axis=(0, 1))))
    run("predict", "--checkpoint", "ckpt/best.pt", "--image", "whole/s0001-image.nii.gz", "--label",
        "whole/s0001-label.nii.gz", "--class", "2", "--axis", "2", "--slice_idx", index, "--out", "pred.nii.gz",
        "--steps", "2", "--device", "cpu")
    assert nib.load(tmp_path / "pred.nii.gz").shape == label.shape
    run("--checkpoint", "ckpt/best.pt", "--volume", "whole/s0001-image.nii.gz", "--label", "whole/s0001-label.nii.gz",
        "--axis", "2", "--slice_idx", index, "--output", "comparison.png", "--steps", "2", "--device", "cpu",
        script="visualize_comparison.py")
    assert (tmp_path / "comparison.png").stat().st_size > 10000
