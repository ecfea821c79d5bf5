import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sam3d_med.errors import ConfigError, InputError
from sam3d_med.train.trainer import CHECKPOINT_FORMAT, read_training_checkpoint, train
from tests.train.conftest import QUICK, make_config

REPO = Path(__file__).resolve().parents[2]
TUTORIAL_OVERRIDES = [
    ["data.preprocess_crop_size=[256,256]", "training.epochs=50", "training.batch_size=4", "lora.rank=8", "lora.alpha=16"],
    ["data.slice_cache_dir=dataset/custom", "data.preprocess_crop_size=[192,192]", "training.learning_rate=1e-4",
     "training.weight_decay=0.01", "lora.rank=16", "lora.alpha=32", "loss.w_mask_loss=1.0", "loss.w_sdf_loss=0.5"],
]


@pytest.mark.parametrize("overrides", TUTORIAL_OVERRIDES)
def test_every_tutorial_key_exists(overrides):
    cfg = make_config(overrides)
    assert cfg.model.preset == "sam3d" and cfg.lora.enabled  # the default is the official model with LoRA


def test_training_writes_checkpoints_logs_and_curves(quick_config, tmp_path):
    cfg = quick_config("training.epochs=2", "training.save_every=1")
    summary = train(cfg, tmp_path / "run")
    ckpt = tmp_path / "ckpt"
    assert summary["status"] == "completed"
    assert {p.name for p in ckpt.iterdir()} == {"epoch_1.pt", "epoch_2.pt", "best.pt", "last.pt"}
    assert (tmp_path / "run" / "curves.png").stat().st_size > 5000
    assert list((tmp_path / "run" / "tensorboard").iterdir())
    payload = read_training_checkpoint(ckpt / "last.pt")
    assert payload["format"] == CHECKPOINT_FORMAT and payload["epoch"] == 2 and payload["step"] == 4
    for key in ("trained_state", "optimizer", "scheduler", "scaler", "rng", "config", "model_config", "base_identity"):
        assert key in payload
    assert payload["config"]["training"]["epochs"] == 2
    assert [h["epoch"] for h in payload["history"]] == [0, 1, 2]
    assert payload["base_identity"] == {"kind": "random-init", "preset": "tiny", "init_seed": 0}


@pytest.mark.parametrize("epoch_mode", ["slices", "pairs"])
def test_resume_mid_epoch_continues_exactly(quick_config, tmp_path, epoch_mode):
    mode = f"data.epoch={epoch_mode}"
    straight = train(quick_config("training.epochs=2", mode, f"training.checkpoint_dir={tmp_path / 'a'}"), tmp_path / "ra")
    # the same run, stopped after 3 steps (in the middle of epoch 2), then resumed
    stopped = train(quick_config("training.epochs=2", mode, "training.stop_after_steps=3",
                                 f"training.checkpoint_dir={tmp_path / 'b'}"), tmp_path / "rb")
    assert stopped["status"] == "interrupted"
    payload = read_training_checkpoint(tmp_path / "b" / "last.pt")
    assert (payload["epoch"], payload["batches_done"], payload["step"]) == (2, 1, 3)
    resumed = train(quick_config("training.epochs=2", mode, f"training.checkpoint_dir={tmp_path / 'b'}",
                                 f"training.resume={tmp_path / 'b' / 'last.pt'}"), tmp_path / "rc")
    assert resumed["status"] == "completed" and straight["status"] == "completed"
    a = read_training_checkpoint(tmp_path / "a" / "last.pt")
    b = read_training_checkpoint(tmp_path / "b" / "last.pt")
    assert a["step"] == b["step"] == 4
    for key, value in a["trained_state"].items():
        assert torch.equal(value, b["trained_state"][key]), key


def test_resume_refuses_other_base_weights_or_sizes(quick_config, tmp_path):
    train(quick_config("training.epochs=1"), tmp_path / "run")
    last = tmp_path / "ckpt" / "last.pt"
    with pytest.raises(ConfigError, match="other base weights"):
        train(quick_config("training.epochs=2", "model.init_seed=5", f"training.resume={last}"), tmp_path / "r2")
    cfg = quick_config("training.epochs=2", f"training.resume={last}")
    payload = torch.load(last, weights_only=False)
    payload["model_config"]["name"] = "other"
    torch.save(payload, tmp_path / "other.pt")
    cfg.training.resume = str(tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="other model sizes"):
        train(cfg, tmp_path / "r3")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    cfg.training.resume = str(tmp_path / "junk.pt")
    with pytest.raises(InputError, match="unreadable checkpoint: the file is truncated or damaged"):
        train(cfg, tmp_path / "r4")
    cfg.training.resume = str(last)  # a full-weight run resumed as a LoRA run, and a LoRA run at another rank
    for overrides, message in ((["lora.enabled=true", "training.train_base=false"], "holds fully trained weights"),):
        with pytest.raises(ConfigError, match=message):
            train(quick_config("training.epochs=2", f"training.resume={last}", *overrides), tmp_path / "r6")
    lora = ["lora.enabled=true", "training.train_base=false", f"training.checkpoint_dir={tmp_path / 'lora'}"]
    train(quick_config("training.epochs=1", "lora.rank=4", *lora), tmp_path / "r7")
    with pytest.raises(ConfigError, match=r"weights have other shapes .*: the LoRA rank \(lora.rank\) differs"):
        train(quick_config("training.epochs=2", "lora.rank=2", *lora, f"training.resume={tmp_path / 'lora' / 'last.pt'}"),
              tmp_path / "r8")
    with pytest.raises(ConfigError, match="holds LoRA adapters"):
        train(quick_config("training.epochs=2", f"training.resume={tmp_path / 'lora' / 'last.pt'}"), tmp_path / "r9")
    (tmp_path / "cut.pt").write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # an interrupted copy
    cfg.training.resume = str(tmp_path / "cut.pt")
    with pytest.raises(InputError, match=r"cut.pt: unreadable checkpoint: the file is truncated .* use last.pt"):
        train(cfg, tmp_path / "r5")


def test_lora_on_tiny_trains_only_adapters(quick_config, tmp_path):
    cfg = quick_config("training.epochs=1", "training.train_base=false", "lora.enabled=true", "lora.rank=2",
                       "loss.w_vae_loss=0")
    train(cfg, tmp_path / "run")
    state = read_training_checkpoint(tmp_path / "ckpt" / "last.pt")["trained_state"]
    assert state and all("lora_" in k for k in state)


def test_clear_errors_for_missing_weights_and_cache(quick_config, tmp_path):
    with pytest.raises(InputError, match="no official weights"):
        train(quick_config("model=sam3d", f"model.checkpoint_dir={tmp_path / 'nothing'}",
                           "training.train_base=false", "lora.enabled=true"), tmp_path / "run")
    with pytest.raises(InputError, match="cache folder does not exist"):
        train(quick_config(f"data.slice_cache_dir={tmp_path / 'none'}"), tmp_path / "run")
    with pytest.raises(ConfigError, match="nothing to train"):
        train(quick_config("training.train_base=false", "lora.enabled=false"), tmp_path / "run")


def _script_env():
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.mark.e2e
def test_unknown_key_fails_with_hydras_message(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "train_medical_hydra.py"), "training.no_such_key=1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env=_script_env())
    assert done.returncode != 0 and "no_such_key" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.e2e
def test_sigterm_writes_last_checkpoint_and_exits_cleanly(cache_dir, tmp_path):
    args = [sys.executable, str(REPO / "scripts" / "train_medical_hydra.py"), *QUICK,
            f"data.slice_cache_dir={cache_dir}", "training.checkpoint_dir=ckpt", "training.epochs=50",
            "training.max_steps_per_epoch=50", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_script_env())
    log = tmp_path / "run" / "train.log"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and "epoch 0 (untrained)" in log.read_text()):
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err
    payload = read_training_checkpoint(tmp_path / "ckpt" / "last.pt")
    assert payload["step"] >= 1 and "training.resume=" in out


@pytest.mark.e2e
def test_two_process_distributed_training_with_gloo(cache_dir, tmp_path):
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561",
            str(REPO / "scripts" / "train_medical_hydra.py"), *QUICK, f"data.slice_cache_dir={cache_dir}",
            "data.epoch=pairs", "training.checkpoint_dir=ckpt", "training.epochs=1", f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=_script_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert "distributed: rank 0 of 2 (gloo)" in (tmp_path / "run" / "train.log").read_text()
    payload = read_training_checkpoint(tmp_path / "ckpt" / "last.pt")
    assert payload["step"] == 2 and (tmp_path / "ckpt" / "best.pt").is_file()


@pytest.mark.e2e
def test_pipeline_script_translates_options_and_passes_overrides(cache_dir, tmp_path):
    script = REPO / "scripts" / "run_medical_pipeline.sh"
    helped = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert helped.returncode == 0 and "--lora_rank" in helped.stdout and "--resume" in helped.stdout
    env = {**_script_env(), "PYTHON": sys.executable}
    args = [str(script), "--batch_size", "2", "--epochs", "1", "--preprocess_crop_size", "32,32", "--lora_rank", "2",
            *[o for o in QUICK if not o.startswith(("training.batch_size", "data.preprocess_crop_size"))],
            "training.train_base=false", "lora.enabled=true", "loss.w_vae_loss=0",
            f"data.slice_cache_dir={cache_dir}", "training.checkpoint_dir=ckpt", f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "lora.rank=2" in done.stderr and "lora.alpha=4" in done.stderr
    payload = read_training_checkpoint(tmp_path / "ckpt" / "last.pt")
    assert payload["config"]["lora"]["rank"] == 2 and payload["config"]["training"]["batch_size"] == 2
    assert (tmp_path / "run" / "train.log").is_file()


def test_without_validation_cases_best_pt_is_chosen_by_training_loss_and_says_so(quick_config, tmp_path, caplog):
    """One case (or val_fraction 0) leaves nothing to validate on: said at the start, best.pt by the
    lowest training loss, the choice in the log and the checkpoint (was: 'best validation Dice -1')."""
    import logging

    caplog.set_level(logging.INFO, logger="sam3d_med")
    summary = train(quick_config("training.epochs=3", "data.val_fraction=0"), tmp_path / "run")
    assert summary["best_by"] == "train_loss"
    assert "no validation" in caplog.text and "lowest training loss" in caplog.text
    best = read_training_checkpoint(tmp_path / "ckpt" / "best.pt")
    losses = {h["epoch"]: h["train_loss"] for h in summary["history"] if h["epoch"] > 0}
    assert len(losses) == 3 and summary["best_train_loss"] == min(losses.values())
    assert best["best_by"] == "train_loss" and best["best_train_loss"] == min(losses.values())
    assert losses[best["epoch"]] == min(losses.values())


def test_surface_occupancy_trains_on_shells_and_reconstructs_solids(quick_config, tmp_path):
    """data.occupancy=surface: the VAE and flow learn the structures' shells; the trained model's
    reconstructions are the decoded shell filled back into a solid (what validation and evaluation score)."""
    from sam3d_med.data.occupancy import solid_logits_from_shell
    from sam3d_med.model.flow_transformer import SHAPE
    from sam3d_med.train.trainer import load_model_from_checkpoint
    from tests.model.conftest import condition_inputs

    summary = train(quick_config("data.occupancy=surface"), tmp_path / "run")
    assert summary["status"] == "completed"
    model, payload = load_model_from_checkpoint(tmp_path / "ckpt" / "last.pt")
    assert payload["config"]["data"]["occupancy"] == "surface" and model.occupancy == "surface"
    inputs = condition_inputs(batch=1, size=32)
    logits, _ = model.generate(inputs, seed=3)
    decoded = model.decode_shape(model.sample(inputs, seed=3)[SHAPE]).float()
    assert torch.equal(logits, solid_logits_from_shell(decoded))
    with pytest.raises(ConfigError, match="data.occupancy"):
        train(quick_config("data.occupancy=shell"), tmp_path / "bad")


def test_a_run_stopped_on_an_epochs_last_batch_loses_nothing(quick_config, tmp_path):
    """Stopped on epoch 1's last batch (2 steps per epoch) and resumed: the finished epoch is validated and
    saved as if never stopped; the two histories, the epochs kept and best.pt are the uninterrupted run's."""
    steps = ["training.epochs=3", "training.save_every=1"]
    straight = train(quick_config(*steps, f"training.checkpoint_dir={tmp_path / 'a'}"), tmp_path / "ra")
    stopped = train(quick_config(*steps, "training.stop_after_steps=2", f"training.checkpoint_dir={tmp_path / 'b'}"),
                    tmp_path / "rb")
    assert stopped["status"] == "interrupted" and straight["status"] == "completed"
    resumed = train(quick_config(*steps, f"training.checkpoint_dir={tmp_path / 'b'}",
                                 f"training.resume={tmp_path / 'b' / 'last.pt'}"), tmp_path / "rc")
    assert resumed["status"] == "completed"
    a, b = (read_training_checkpoint(tmp_path / name / "last.pt") for name in ("a", "b"))
    assert [h["epoch"] for h in b["history"]] == [h["epoch"] for h in a["history"]] == [0, 1, 2, 3]
    for ha, hb in zip(a["history"], b["history"]):
        assert ha.keys() == hb.keys() and all(ha[k] == pytest.approx(hb[k], abs=1e-6) for k in ha if ha[k] is not None)
    assert {p.name for p in (tmp_path / "a").iterdir()} == {p.name for p in (tmp_path / "b").iterdir()}
    best_a, best_b = (read_training_checkpoint(tmp_path / name / "best.pt")["epoch"] for name in ("a", "b"))
    assert best_a == best_b
    for key, value in a["trained_state"].items():
        assert torch.equal(value, b["trained_state"][key]), key


def test_training_on_one_to_three_slices(quick_config, tmp_path):
    """data.num_slices=[1,3]: K drawn per sample, the further slices' crop streams only
    (data.extra_slice_streams=crop); the checkpoint keeps the settings and the evaluation's validation
    of it conditions on several slices."""
    cfg = quick_config("data.num_slices=[1,3]", "data.extra_slice_streams=crop", "training.epochs=1")
    summary = train(cfg, tmp_path / "run")
    assert summary["status"] == "completed"
    stored = read_training_checkpoint(tmp_path / "ckpt" / "last.pt")["config"]["data"]
    assert stored["num_slices"] == [1, 3] and stored["extra_slice_streams"] == "crop"
    with pytest.raises(ConfigError, match="conditions on one slice only"):
        from sam3d_med.train.config_check import check_training_config

        check_training_config(quick_config("data.num_slices=[2]", "data.target_frame=volume"))
