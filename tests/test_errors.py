"""Library errors name their parameters; each front end shows its own option names."""

import subprocess
import sys
from pathlib import Path


from sam3d_med.errors import ConfigError, InputError

REPO = Path(__file__).resolve().parents[1]


def test_a_parameter_error_is_shown_in_each_front_ends_words():
    error = ConfigError("must be a whole number >= 1", parameter="training.batch_size", value=0)
    assert str(error) == "training.batch_size=0: must be a whole number >= 1"  # Hydra's form
    assert error.rendered({"training.batch_size": "--batch_size"}) == "--batch_size 0: must be a whole number >= 1"
    assert str(ConfigError("x", parameter="lora.enabled", value=True)) == "lora.enabled=true: x"  # YAML's spelling
    assert str(ConfigError("x", parameter="data.epoch", value="cases")) == "data.epoch='cases': x"
    other = InputError("{label_path} needs {class_id} (the label value)")
    assert str(other) == "label_path needs class_id (the label value)"
    assert other.rendered({"label_path": "--label", "class_id": "--class"}) == "--label needs --class (the label value)"
    assert str(InputError("a dict {'kind': 1} and a set {1, 2} stay as they are")).endswith("{1, 2} stay as they are")


def test_the_command_line_names_its_own_options(tmp_path):
    from sam3d_med.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    predict, evaluate = sub.choices["predict"].get_default("flag_names"), sub.choices["eval"].get_default("flag_names")
    assert predict["class_id"] == "--class" and predict["label_path"] == "--label" and predict["mask_png"] == "--mask"
    assert evaluate["class_unions"] == "--class_union" and evaluate["exclude_classes"] == "--exclude_class"
    assert "label_path" not in evaluate  # eval has no --label: the parameter keeps its name
    # a library error (sam3d_med.data.preprocess.parse_axes) through the command line
    done = subprocess.run([sys.executable, "-m", "sam3d_med.cli", "preprocess", "--original_nifti_dir", str(tmp_path),
                           "--out", str(tmp_path / "o"), "--axes", "5"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "error: --axes 5: must list array axes among 0,1,2"


def test_the_pipeline_script_names_its_own_options(tmp_path):
    env = {"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}
    done = subprocess.run([str(REPO / "scripts" / "run_medical_pipeline.sh"), "--batch_size", "0", "--lora_rank", "4",
                           f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=120, env=env,
                          cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == "error: --batch_size 0: must be a whole number >= 1"
    hydra = subprocess.run([sys.executable, str(REPO / "scripts" / "train_medical_hydra.py"), "lora.rank=-2",
                            f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert hydra.stderr.strip().splitlines()[-1] == "error: lora.rank=-2: must be a whole number >= 1"
