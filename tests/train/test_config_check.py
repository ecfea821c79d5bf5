import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from sam3d_med.errors import ConfigError, InputError
from sam3d_med.train.config_check import check_training_config

REPO = Path(__file__).resolve().parents[2]


def config(*overrides):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        return compose(config_name="train", overrides=list(overrides))


@pytest.mark.parametrize("override, message", [
    ("training.batch_size=0", "training.batch_size=0: must be a whole number >= 1"),
    ("training.epochs=2.5", "training.epochs=2.5: must be a whole number"),
    ("training.learning_rate=-1", "training.learning_rate=-1"),
    ("data.epoch=cases", "data.epoch='cases': must be one of pairs, slices"),
    ("data.target_frame=scan", "must be one of object, volume"),
    ("device=gpu", "device='gpu': must be one of auto, cpu, cuda"),
    ("lora.rank=0", "lora.rank=0"),
    ("data.val_fraction=1.5", "data.val_fraction=1.5"),
])
def test_wrong_values_are_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        check_training_config(config(override))


def test_missing_inputs_are_named(tmp_path, cache_dir):
    with pytest.raises(InputError, match="cache folder does not exist"):
        check_training_config(config(f"data.slice_cache_dir={tmp_path / 'none'}"))
    with pytest.raises(InputError, match=r"no official weights \(ss_generator.ckpt missing\)"):
        check_training_config(config(f"data.slice_cache_dir={cache_dir}", f"model.checkpoint_dir={tmp_path}"))
    with pytest.raises(InputError, match="training.resume=.*no such checkpoint file"):
        check_training_config(config(f"data.slice_cache_dir={cache_dir}", "model=tiny",
                                     f"training.resume={tmp_path / 'last.pt'}"))
    check_training_config(config(f"data.slice_cache_dir={cache_dir}", "model=tiny"))  # all good


def test_the_checks_run_before_torch_is_imported(tmp_path):
    """An argument error must not wait for torch's import (seconds)."""
    code = ("import sys; from hydra import compose, initialize_config_dir\n"
            "from sam3d_med.train.config_check import check_training_config\n"
            f"with initialize_config_dir(config_dir={str(REPO / 'configs')!r}, version_base=None):\n"
            "    cfg = compose(config_name='train', overrides=['training.batch_size=0'])\n"
            "try:\n    check_training_config(cfg)\nexcept Exception as exc:\n    print(type(exc).__name__)\n"
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["ConfigError", "False"], done.stderr
    cli = subprocess.run([sys.executable, str(REPO / "scripts" / "train_medical_hydra.py"), "training.batch_size=0",
                          f"hydra.run.dir={tmp_path}"],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1 and cli.stderr.strip().splitlines()[-1] == (
        "error: training.batch_size=0: must be a whole number >= 1")
