"""The default path on stand-ins of Meta's release: download (step 1's real code, stand-in Hub) ->
LoRA training with ``model=sam3d`` on the downloaded folder -> evaluation; for today's release also
``check-release`` and flow targets from its encoder, for a snapshot from before 2026-06-01 (0-byte
encoder placeholders) flow targets from decoder inversion.

The stand-ins are packaged like the real release in everything but size: the same file names under
``checkpoints/``, pipeline.yaml and component YAMLs in the official schema (small sizes, the Dino
input size above the stored position embedding's, as 770 vs 518), a Lightning-style generator
checkpoint, fp16 decoder and encoder (``ss_encoder.ckpt``), or the older 0-byte placeholders. Weights
are random: this checks the path, not the quality."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sam3d_med.model.checkpoint import save_official_layout
from sam3d_med.model.config import get_preset
from sam3d_med.model.sam3d import SparseStructureModel
from sam3d_med.train.trainer import read_training_checkpoint
from sam3d_med.model.hub_standin import HubStub

REPO = Path(__file__).resolve().parents[2]
HUB_REPO = "facebook/sam-3d-objects"


def standin_config():
    """The release's architecture at small sizes (every difference a size in the YAML)."""
    config = get_preset("sam3d")
    vit = dict(img_size=28, input_size=42, embed_dim=32, depth=1, num_heads=2)
    config.image_vit = dataclasses.replace(config.image_vit, **vit)
    config.mask_vit = dataclasses.replace(config.mask_vit, **vit)
    config.point = dataclasses.replace(config.point, input_size=16, embed_dim=32, num_heads=2)
    config.cond_dim = 32
    config.flow = dataclasses.replace(config.flow, model_channels=32, num_blocks=1, num_heads=2)
    config.vae = dataclasses.replace(config.vae, channels=[16, 8, 4], num_res_blocks=1, num_res_blocks_middle=1)
    return config


def standin_hub_files(folder: Path, encoder_released: bool = True) -> dict[str, bytes]:
    torch.manual_seed(0)
    save_official_layout(SparseStructureModel(standin_config()), folder, release=True, encoder_released=encoder_released)
    return {f"checkpoints/{p.name}": p.read_bytes() for p in folder.iterdir() if p.is_file()}


def run(args, cwd, env, timeout=600):
    done = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    return done


def download(files: dict[str, bytes], work: Path) -> tuple[dict, subprocess.CompletedProcess]:
    """Step 1 into ``work``/checkpoints/hf against a stand-in Hub serving ``files``: the environment
    (with that Hub's address) and the command's output."""
    work.mkdir()
    env = {**os.environ, "HF_HOME": str(work / "hf_home"), "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("HF_TOKEN", None)
    with HubStub(HUB_REPO, files) as hub:
        env["HF_ENDPOINT"] = hub.endpoint
        downloaded = run([REPO / "scripts" / "download_hf_checkpoints.py", "--repo", HUB_REPO, "--out", "checkpoints/hf"],
                         work, env)
    return env, downloaded


def train_quick(cache_dir: Path, work: Path, env: dict) -> str:
    """Step 3 with the defaults (model=sam3d, LoRA, checkpoints/hf), small and quick: its log."""
    run([REPO / "scripts" / "train_medical_hydra.py", f"data.slice_cache_dir={cache_dir}",
         "data.preprocess_crop_size=[42,42]", "data.num_workers=0", "device=cpu", "training.epochs=1",
         "training.batch_size=2", "training.max_steps_per_epoch=2", "training.warmup_steps=1",
         "validation.max_batches=1", "validation.reconstructions=1", "validation.sampler_steps=2",
         "latent_targets.steps=3", "latent_targets.batch_size=16", "hydra.run.dir=run"], work, env)
    return (work / "run" / "train.log").read_text()


@pytest.mark.e2e
def test_todays_release_download_check_train_with_encoder_targets_and_evaluate(cache_dir, tmp_path):
    files = standin_hub_files(tmp_path / "release")
    assert len(files["checkpoints/ss_encoder.ckpt"]) > 0 and "checkpoints/ss_encoder.safetensors" not in files
    work = tmp_path / "work"
    env, downloaded = download(files, work)
    assert "SS encoder: ss_encoder.ckpt" in downloaded.stdout and "released weights: usable" in downloaded.stdout
    info = run(["-m", "sam3d_med.cli", "model-info", "--preset", "sam3d", "--config_dir", "checkpoints/hf"], work, env)
    assert "Dino input 42 px (position embedding stored for 28 px)" in info.stdout
    assert f"{4 * 10 + 2 * 4} condition tokens" in info.stdout
    assert "flow targets from the encoder" in info.stdout

    checked = run(["-m", "sam3d_med.cli", "check-release", "--config_dir", "checkpoints/hf", "--data_root", cache_dir,
                   "--cases", "1"], work, env)
    assert "| class | n | solid round trip | surface round trip | surface filled vs solid |" in checked.stdout
    assert "ms per volume" in checked.stdout and "recommended: data.occupancy=" in checked.stdout

    log = train_quick(cache_dir, work, env)
    assert "flow targets: the SS encoder's posterior mean of every (case, class) solid occupancy" in log
    assert "encoder alone" in log and "inverting the frozen decoder" not in log
    assert "LoRA rank 8" in log
    payload = read_training_checkpoint(work / "checkpoints" / "medical" / "best.pt")
    assert payload["model_config"]["image_vit"]["input_size"] == 42 and payload["config"]["model"]["preset"] == "sam3d"
    assert payload["base_identity"]["files"]["ss_encoder.ckpt"]["size"] == len(files["checkpoints/ss_encoder.ckpt"])
    assert payload["trained_state"] and all("lora_" in k for k in payload["trained_state"])
    targets = [p for p in (cache_dir / "latent_targets").glob("*/settings.json")
               if json.loads(p.read_text()).get("source") == "encoder"]
    assert targets and list(targets[0].parent.glob("*.npy"))

    # tutorial step 4 on the trained checkpoint
    evaluated = run([REPO / "scripts" / "eval_medical.py", "--checkpoint", "checkpoints/medical/best.pt",
                     "--data_root", cache_dir, "--output_dir", "results", "--steps", "2", "--max_cases", "1",
                     "--device", "cpu"], work, env)
    assert "mean_shape" in evaluated.stdout and (work / "results" / "metrics.json").is_file()


@pytest.mark.e2e
def test_a_snapshot_from_before_the_encoder_trains_with_inversion_targets(cache_dir, tmp_path):
    files = standin_hub_files(tmp_path / "release", encoder_released=False)
    assert files["checkpoints/ss_encoder.safetensors"] == b"" and files["checkpoints/ss_encoder.yaml"] == b""
    work = tmp_path / "work"
    env, downloaded = download(files, work)
    assert "0-byte placeholders in this snapshot: ss_encoder.yaml, ss_encoder.safetensors" in downloaded.stdout
    assert "no usable encoder" in downloaded.stdout
    refused = subprocess.run([sys.executable, "-m", "sam3d_med.cli", "check-release", "--config_dir", "checkpoints/hf",
                              "--data_root", str(cache_dir)], cwd=work, env=env, capture_output=True, text=True)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "is a 0-byte placeholder" in refused.stderr and "holds no encoder weights to measure" in refused.stderr
    log = train_quick(cache_dir, work, env)
    assert f"no usable SS encoder in {(work / 'checkpoints' / 'hf').resolve()}" in log  # paths resolved at launch
    assert "inverting the frozen decoder" in log
    assert "round trip, Dice of decoder(target latent) vs true occupancy" in log
    payload = read_training_checkpoint(work / "checkpoints" / "medical" / "best.pt")
    assert payload["base_identity"]["files"]["ss_encoder.safetensors"]["size"] == 0
    evaluated = run([REPO / "scripts" / "eval_medical.py", "--checkpoint", "checkpoints/medical/best.pt",
                     "--data_root", cache_dir, "--output_dir", "results", "--steps", "2", "--max_cases", "1",
                     "--device", "cpu"], work, env)
    assert "mean_shape" in evaluated.stdout
