import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sam3d_med.errors import ConfigError
from sam3d_med.train.resume_config import config_for_resume, explicit_keys
from tests.train.conftest import CONFIG_DIR, QUICK, make_config

REPO = Path(__file__).resolve().parents[2]


def test_explicit_keys_of_overrides_groups_and_experiment_files():
    keys = explicit_keys(["training.epochs=100", "+extra.key=1", "model=tiny", "hydra.run.dir=x"], CONFIG_DIR)
    assert keys == {"training.epochs", "extra.key", "model"}
    demo = explicit_keys(["experiment=demo_tiny"], CONFIG_DIR)
    assert "model" in demo and "training.train_base" in demo and "data.num_workers" in demo


def test_resume_takes_the_checkpoints_settings_and_only_what_is_given():
    stored = OmegaConf.to_container(make_config(["model=tiny", "lora.rank=4", "lora.alpha=8", "training.batch_size=2",
                                                 "data.slice_cache_dir=cache_a", "training.epochs=10"]), resolve=True)
    command = make_config(["training.resume=ckpt/epoch_10.pt", "training.epochs=100"])  # the tutorial's resume
    merged, given = config_for_resume(command, stored, {"training.resume", "training.epochs"})
    assert merged.lora.rank == 4 and merged.lora.alpha == 8 and merged.model.preset == "tiny"
    assert merged.training.batch_size == 2 and merged.data.slice_cache_dir == "cache_a"
    assert merged.training.epochs == 100 and merged.training.resume == "ckpt/epoch_10.pt" and given == ["training.epochs"]
    assert merged.device == command.device  # this machine's setting
    # the weights' folder may move; an explicit learning rate is taken
    merged, _ = config_for_resume(make_config(["model=tiny", "model.checkpoint_dir=/moved", "training.learning_rate=1e-5"]),
                                  stored, {"model.checkpoint_dir", "training.learning_rate"})
    assert merged.model.checkpoint_dir == "/moved" and merged.training.learning_rate == 1e-5


def test_one_shot_settings_are_never_inherited():
    """A run stopped by training.stop_after_steps=2 and resumed as its message says (training.resume=...
    only) trains to training.epochs: the stored stop limit and resume path belong to that invocation."""
    stored = OmegaConf.to_container(make_config(["model=tiny", "training.stop_after_steps=2", "training.epochs=3",
                                                 "training.resume=ckpt/older.pt"]), resolve=True)
    command = make_config(["training.resume=ckpt/last.pt"])
    merged, given = config_for_resume(command, stored, {"training.resume"})
    assert merged.training.stop_after_steps is None and merged.training.resume == "ckpt/last.pt"
    assert merged.training.epochs == 3 and given == []
    # given again explicitly, a stop limit applies to this invocation
    merged, _ = config_for_resume(make_config(["training.resume=ckpt/last.pt", "training.stop_after_steps=5"]), stored,
                                  {"training.resume", "training.stop_after_steps"})
    assert merged.training.stop_after_steps == 5


@pytest.mark.parametrize("overrides, explicit, message", [
    (["lora.rank=8"], {"lora.rank"}, "lora.rank=8 conflicts with the checkpoint, trained with lora.rank=4"),
    (["model=sam3d"], {"model"}, "model.preset=sam3d conflicts with the checkpoint, trained with model.preset=tiny"),
    (["training.train_base=true"], {"training.train_base"}, "training.train_base=True conflicts"),
])
def test_a_real_conflict_is_one_line_naming_the_key(overrides, explicit, message):
    stored = OmegaConf.to_container(make_config(["model=tiny", "lora.rank=4"]), resolve=True)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        config_for_resume(make_config(overrides), stored, explicit)


def test_the_tutorial_resume_of_a_rank_4_run_repeats_no_option(cache_dir, tmp_path):
    script = str(REPO / "scripts" / "train_medical_hydra.py")
    first = [*QUICK, f"data.slice_cache_dir={cache_dir}", f"training.checkpoint_dir={tmp_path / 'ckpt'}",
             "training.train_base=false", "lora.enabled=true", "lora.rank=4", "lora.alpha=8", "training.epochs=1"]
    done = subprocess.run([sys.executable, script, *first, f"hydra.run.dir={tmp_path / 'r1'}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    resume = [f"training.resume={tmp_path / 'ckpt' / 'epoch_1.pt'}", "training.epochs=2"]
    done = subprocess.run([sys.executable, script, *resume, f"hydra.run.dir={tmp_path / 'r2'}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    log = (tmp_path / "r2" / "train.log").read_text()
    assert "from the command line: training.epochs" in log and "resumed from" in log
    conflict = subprocess.run([sys.executable, script, *resume, "lora.rank=8", f"hydra.run.dir={tmp_path / 'r3'}"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert conflict.returncode == 1 and "Traceback" not in conflict.stderr
    assert conflict.stderr.strip().splitlines()[-1].startswith(
        "error: lora.rank=8 conflicts with the checkpoint, trained with lora.rank=4")
