"""The training script's paths mean what the user typed, relative to the launch folder."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train.conftest import QUICK

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "train_medical_hydra.py"


@pytest.mark.e2e
def test_relative_paths_resolve_against_the_launch_folder_with_hydra_chdir(cache_dir, tmp_path):
    """hydra.job.chdir=true moves the working directory into the run folder: data.slice_cache_dir=cache,
    which exists where the command was launched, is still found, checkpoints land there too, and a path
    that does not exist is named absolutely."""
    shutil.copytree(cache_dir, tmp_path / "cache", ignore=shutil.ignore_patterns("latent_targets"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, str(SCRIPT), *QUICK, "training.epochs=1", "hydra.job.chdir=true", "hydra.run.dir=run",
            "training.checkpoint_dir=ckpt"]
    done = subprocess.run([*args, "data.slice_cache_dir=cache"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "ckpt" / "best.pt").is_file() and not (tmp_path / "run" / "ckpt").exists()
    missing = subprocess.run([*args, "data.slice_cache_dir=no_such_cache"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=120)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert f"{tmp_path.resolve() / 'no_such_cache'}: cache folder does not exist" in missing.stderr
