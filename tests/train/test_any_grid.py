"""Scans of any grid (not the tutorial's 64^3 crops) through train, evaluate and predict."""
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from sam3d_med.data.phantom import write_phantom_dataset
from sam3d_med.data.dataset import SliceClassDataset
from sam3d_med.data.preprocess import PreprocessOptions, load_manifest, run_preprocess
from sam3d_med.eval.runner import EvalOptions, evaluate
from sam3d_med.viz.comparison import write_evaluation_case_visuals
from sam3d_med.io.nifti import save_volume
from sam3d_med.train.trainer import train
from sam3d_med.viz.finetuned import export_slice_png
from tests.train.conftest import QUICK, make_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def odd_grid_cache(tmp_path_factory):
    """Three phantom cases re-cut to 66 x 78 x 63 voxels (the world positions kept)."""
    root = tmp_path_factory.mktemp("odd")
    write_phantom_dataset(root / "orig", 3, seed=2)
    for case in ("s0001", "s0002", "s0003"):
        for kind, fill, dtype in (("image", -1000, np.int16), ("label", 0, np.uint8)):
            img = nib.load(root / "orig" / case / f"{case}-{kind}.nii.gz")
            data = np.pad(np.asarray(img.dataobj), ((0, 2), (6, 8), (0, 0)), constant_values=fill)[:, :, :63]
            affine = img.affine.copy()
            affine[:3, 3] -= affine[:3, :3] @ np.array([0, 6, 0])
            save_volume(root / "raw" / case / f"{case}-{kind}.nii.gz", data, affine, dtype=dtype)
    assert run_preprocess(root / "raw", root / "cache", PreprocessOptions(), progress=False, log=lambda m: None).ok
    return root


def test_train_evaluate_and_predict_on_a_grid_that_is_not_64_cubed(odd_grid_cache, tmp_path):
    cache = odd_grid_cache / "cache"
    cfg = make_config(QUICK + [f"data.slice_cache_dir={cache}", f"training.checkpoint_dir={tmp_path / 'ckpt'}",
                               "training.epochs=1", "training.batch_size=4"])
    assert train(cfg, tmp_path / "run")["status"] == "completed"
    document = evaluate(tmp_path / "ckpt" / "best.pt", cache, tmp_path / "eval", EvalOptions(steps=2, max_cases=1),
                        log=lambda m: None, case_visuals=write_evaluation_case_visuals)
    records = [r for r in document["records"] if r["method"] == "model"]
    assert len(records) == 15 and all(np.isfinite(r["dice"]) for r in records)
    assert (tmp_path / "eval" / "visualizations" / "s0001.png").is_file()
    scan = odd_grid_cache / "raw" / "s0001"
    done = subprocess.run([sys.executable, "-m", "sam3d_med.cli", "predict", "--checkpoint", str(tmp_path / "ckpt" /
                           "best.pt"), "--image", str(scan / "s0001-image.nii.gz"), "--label",
                           str(scan / "s0001-label.nii.gz"), "--class", "2", "--axis", "2", "--slice_idx", "30",
                           "--out", str(tmp_path / "pred.nii.gz"), "--device", "cpu"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert nib.load(tmp_path / "pred.nii.gz").shape == (66, 78, 63)


def test_the_volume_frame_sees_the_case_through_a_64_cubed_window_around_its_structures(odd_grid_cache):
    cache = odd_grid_cache / "cache"
    manifest = load_manifest(cache)
    dataset = SliceClassDataset(cache, manifest, ["s0001"], (32, 32), frame="volume")
    window = dataset.windows["s0001"]
    case = next(c for c in manifest["cases"] if c["case_id"] == "s0001")
    assert not window.is_identity and tuple(window.grid_shape) == (66, 78, 63)
    sdf = np.load(cache / case["sdf_path"])
    for index in range(0, len(dataset), max(1, len(dataset) // 12)):
        sample = dataset[index]
        _, entry, cls = dataset.sample_at(index)
        assert sample["occupancy"].shape == (1, 64, 64, 64)
        # nothing of the structure is cut, and it is where the grid has it
        np.testing.assert_array_equal(window.put_back(sample["occupancy"][0].numpy() > 0.5, False), sdf[cls - 1] < 0)
        np.testing.assert_allclose(sample["affine"].numpy(), window.affine(np.asarray(case["affine"])))
        assert sample["slice_idx"] == window.slice_index(entry["axis"], entry["slice_idx"])
        assert sample["window_start"].tolist() == list(window.start)


def test_volume_frame_train_evaluate_predict_and_visualize_on_a_grid_that_is_not_64_cubed(odd_grid_cache, tmp_path):
    cache = odd_grid_cache / "cache"
    cfg = make_config(QUICK + [f"data.slice_cache_dir={cache}", "data.target_frame=volume",
                               f"training.checkpoint_dir={tmp_path / 'ckpt'}", "training.epochs=1"])
    assert train(cfg, tmp_path / "run")["status"] == "completed"
    document = evaluate(tmp_path / "ckpt" / "best.pt", cache, tmp_path / "eval", EvalOptions(steps=2, max_cases=1),
                        log=lambda m: None, case_visuals=write_evaluation_case_visuals)
    records = [r for r in document["records"] if r["method"] == "model"]
    assert len(records) == 15 and all(np.isfinite(r["dice"]) for r in records)
    # the baselines are scored on the case's own grid, as in the object frame
    assert all(r["dice"] > 0.2 for r in document["records"] if r["method"] == "extrude")
    scan = odd_grid_cache / "raw" / "s0001"
    common = ["--checkpoint", str(tmp_path / "ckpt" / "best.pt"), "--device", "cpu", "--steps", "2"]
    for mask in (["--label", str(scan / "s0001-label.nii.gz"), "--class", "2"], ["--mask", str(tmp_path / "m.png")]):
        if mask[0] == "--mask":
            export_slice_png(scan / "s0001-image.nii.gz", scan / "s0001-label.nii.gz", 2, 30, tmp_path / "png",
                             {2: "left_ventricle"})
            (tmp_path / "png" / "masks" / "02_left_ventricle.png").rename(tmp_path / "m.png")
        done = subprocess.run([sys.executable, "-m", "sam3d_med.cli", "predict", *common, "--image",
                               str(scan / "s0001-image.nii.gz"), *mask, "--axis", "2", "--slice_idx", "30", "--out",
                               str(tmp_path / "pred.nii.gz")], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        predicted = np.asarray(nib.load(tmp_path / "pred.nii.gz").dataobj)
        assert predicted.shape == (66, 78, 63)
        # the input plane is the input mask, back on the scan's own grid
        np.testing.assert_array_equal(predicted[:, :, 30] > 0, np.asarray(nib.load(scan / "s0001-label.nii.gz").dataobj)[:, :, 30] == 2)
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "visualize_comparison.py"), *common, "--volume",
                           str(scan / "s0001-image.nii.gz"), "--label", str(scan / "s0001-label.nii.gz"), "--axis", "2",
                           "--slice_idx", "30", "--output", str(tmp_path / "comparison.png")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "comparison.png").stat().st_size > 10000
