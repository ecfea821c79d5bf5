"""Every command of the tutorial (README, steps 1-5) in its written form, placeholders replaced by the
phantom's paths and the stand-in Hub (serving the rehearsal release) for step 1; training capped by
overrides appended for time. Each command's exit status and the files it promises are checked."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from sam3d_med.data.phantom import write_phantom_dataset
from sam3d_med.model.hub_standin import HubStub, repository_files
from sam3d_med.preflight import nvidia_gpus

REPO = Path(__file__).resolve().parents[1]
# appended to each training command: small and quick on a CPU
CAP = ["device=cpu", "data.num_workers=0", "training.max_steps_per_epoch=1", "data.val_fraction=0",
       "validation.sampler_steps=1", "latent_targets.steps=2"]


@pytest.mark.e2e
def test_the_tutorial_as_written(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHON": sys.executable}
    env.pop("HF_TOKEN", None)

    def run(command: str, *extra: str, expect: int = 0, timeout: int = 900) -> subprocess.CompletedProcess:
        args = command.split() + list(extra)
        if args[0] == "python":
            args[0] = sys.executable
        done = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == expect, (command, done.returncode, done.stderr[-3000:])
        assert "Traceback" not in done.stderr, (command, done.stderr[-3000:])
        return done

    for folder in ("scripts", "configs"):  # the tutorial runs from the repository's root: seen from here
        (work / folder).symlink_to(REPO / folder)

    # 1. weights, from the stand-in Hub
    with HubStub("facebook/sam-3d-objects", repository_files(REPO / "release" / "rehearsal")) as hub:
        env["HF_ENDPOINT"] = hub.endpoint
        run("python scripts/download_hf_checkpoints.py --repo facebook/sam-3d-objects --out checkpoints/hf")
    for name in ("pipeline.yaml", "ss_generator.ckpt", "ss_decoder.ckpt", "ss_encoder.ckpt", "ss_encoder.yaml"):
        assert (work / "checkpoints" / "hf" / name).stat().st_size > 0, name

    # 2. preprocessing (the training set, and the test set)
    write_phantom_dataset(work / "DIR", 1, seed=5)
    write_phantom_dataset(work / "TEST", 1, seed=6, first_index=101)
    run("python scripts/reprocess_ts_nifti.py --original_nifti_dir DIR --out ./dataset/ts_processed --classes 5 "
        "--extract_mesh --spacing 3.0")
    run("python scripts/reprocess_ts_nifti.py --original_nifti_dir TEST --out ./dataset/ts_processed_test --classes 5 "
        "--extract_mesh --spacing 3.0")
    for cache, case in (("ts_processed", "s0001"), ("ts_processed_test", "s0101")):
        assert (work / "dataset" / cache / "manifest.json").is_file()
        assert (work / "dataset" / cache / "meshes" / f"{case}_class2.obj").is_file()

    # 3. fine-tuning: asking for a GPU means a GPU (this machine's are named); without --gpu it trains
    gpus = nvidia_gpus() or []
    line = "./scripts/run_medical_pipeline.sh --gpu 1 --batch_size 4 --epochs 50 --preprocess_crop_size 256,256"
    if len(gpus) < 2:
        refused = run(line, expect=1)
        last = refused.stderr.strip().splitlines()[-1]
        assert last.startswith("error: device=cuda:1: ") and "GPUs" in last
    run(line.replace("--gpu 1 ", ""), *CAP, "training.epochs=1")
    medical = work / "checkpoints" / "medical"
    assert {"best.pt", "last.pt"} <= {p.name for p in medical.iterdir()}
    assert list((work / "outputs").glob("*/*/train.log"))
    run("python scripts/train_medical_hydra.py data.preprocess_crop_size=[256,256] training.epochs=50 "
        "training.batch_size=4 lora.rank=8 lora.alpha=16", *CAP, "training.epochs=10")
    assert (medical / "epoch_10.pt").is_file()
    resume = "./scripts/run_medical_pipeline.sh --gpu 1 --resume checkpoints/medical/epoch_10.pt --epochs 100"
    if len(gpus) < 2:
        assert run(resume, expect=1).stderr.strip().splitlines()[-1].startswith("error: device=cuda:1: ")
    resumed = run(resume.replace("--gpu 1 ", ""), *CAP, "training.epochs=11")
    assert "training finished" in resumed.stdout and (medical / "last.pt").is_file()
    run("python scripts/train_medical_hydra.py data.slice_cache_dir=dataset/ts_processed "
        "data.preprocess_crop_size=[192,192] training.learning_rate=1e-4 training.weight_decay=0.01 lora.rank=16 "
        "lora.alpha=32 loss.w_mask_loss=1.0 loss.w_sdf_loss=0.5", *CAP, "training.epochs=1",
        "training.checkpoint_dir=checkpoints/advanced")
    assert (work / "checkpoints" / "advanced" / "best.pt").is_file()

    # 4. evaluation, as the tutorial writes it on the training cache (said loudly), then with figures
    evaluated = run("python scripts/eval_medical.py --checkpoint checkpoints/medical/best.pt --data_root "
                    "dataset/ts_processed --output_dir results/evaluation --batch_size 8")
    assert "test cases are cases of the training cache" in evaluated.stderr
    assert (work / "results" / "evaluation" / "metrics.json").is_file()
    assert (work / "results" / "evaluation" / "metrics.csv").is_file()
    run("python scripts/eval_medical.py --checkpoint checkpoints/medical/best.pt --data_root dataset/ts_processed "
        "--output_dir results/evaluation --batch_size 8 --save_viz")
    assert list((work / "results" / "evaluation" / "visualizations").glob("*.png"))

    # 5. figures: a PNG slice and masks (as export-slice writes them), then the comparison grid
    label = np.asarray(nib.load(work / "TEST" / "s0101" / "s0101-label.nii.gz").dataobj)
    index = int(np.argmax((label == 2).sum(axis=(0, 1))))
    run(f"sam3d-med export-slice --image TEST/s0101/s0101-image.nii.gz --label TEST/s0101/s0101-label.nii.gz "
        f"--axis 2 --slice_idx {index} --out .")
    shutil.copy(work / "image.png", work / "test_image.png")
    run("python scripts/visualize_finetuned.py --lora_checkpoint checkpoints/medical/best.pt --image test_image.png "
        "--mask_dir masks --mask_index 0 --output_dir results/visualizations")
    for name in ("reconstruction.nii.gz", "input_overlay.png", "mesh_views.png", "prediction_slices.png"):
        assert (work / "results" / "visualizations" / name).is_file(), name
    compared = run(f"python scripts/visualize_comparison.py --checkpoint checkpoints/medical/best.pt --volume "
                   f"TEST/s0101/s0101-image.nii.gz --slice_idx {index} --axis 2 --output results/comparison.png")
    assert "labels: TEST/s0101/s0101-label.nii.gz (beside the scan" in compared.stderr
    assert (work / "results" / "comparison.png").stat().st_size > 10_000
    out_of_range = run("python scripts/visualize_comparison.py --checkpoint checkpoints/medical/best.pt --volume "
                       "TEST/s0101/s0101-image.nii.gz --slice_idx 64 --axis 2 --output results/comparison.png", expect=1)
    assert out_of_range.stderr.strip().splitlines()[-1] == \
        "error: --slice_idx 64 is outside the image's 64 slices along axis 2 (0..63)"
