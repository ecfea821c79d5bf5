"""Scans of any grid (not the tutorial's 64^3 crops) through train, evaluate and predict."""
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from sam3d_med.data.phantom import write_phantom_dataset
from sam3d_med.data.preprocess import PreprocessOptions, run_preprocess
from sam3d_med.errors import InputError
from sam3d_med.eval.runner import EvalOptions, evaluate
from sam3d_med.io.nifti import save_volume
from sam3d_med.train.trainer import train
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
    document = evaluate(tmp_path / "ckpt" / "best.pt", cache, tmp_path / "eval", EvalOptions(steps=2, max_cases=1,
                        save_viz=True), log=lambda m: None)
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


def test_the_volume_frame_names_the_grid_it_needs(odd_grid_cache, tmp_path):
    cfg = make_config(QUICK + [f"data.slice_cache_dir={odd_grid_cache / 'cache'}", "data.target_frame=volume",
                               f"training.checkpoint_dir={tmp_path / 'ckpt'}", "training.epochs=1"])
    with pytest.raises(InputError, match=r"the volume frame needs every case on the model's 64\^3 grid, s0001 is "
                                         r"66x78x63: use data.target_frame=object .* --crop 64"):
        train(cfg, tmp_path / "run")
