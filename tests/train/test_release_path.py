"""The default path on a stand-in of Meta's release: download (step 1's real code, stand-in Hub) ->
LoRA training with ``model=sam3d`` on the downloaded folder -> evaluation.

The stand-in is packaged like the real release in everything but size: the same file names under
``checkpoints/``, pipeline.yaml and component YAMLs in the official schema (small sizes, the Dino
input size above the stored position embedding's, as 770 vs 518), a Lightning-style generator
checkpoint, an fp16 decoder and 0-byte encoder placeholders. Weights are random: this checks the
path, not the quality."""

import dataclasses
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


def standin_hub_files(folder: Path) -> dict[str, bytes]:
    torch.manual_seed(0)
    save_official_layout(SparseStructureModel(standin_config()), folder, release=True)
    return {f"checkpoints/{p.name}": p.read_bytes() for p in folder.iterdir() if p.is_file()}


def run(args, cwd, env, timeout=600):
    done = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    return done


@pytest.mark.e2e
def test_download_train_and_evaluate_the_default_path_on_a_standin_release(cache_dir, tmp_path):
    files = standin_hub_files(tmp_path / "release")
    assert files["checkpoints/ss_encoder.safetensors"] == b"" and files["checkpoints/ss_encoder.yaml"] == b""
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("HF_TOKEN", None)
    with HubStub(HUB_REPO, files) as hub:
        env["HF_ENDPOINT"] = hub.endpoint
        downloaded = run([REPO / "scripts" / "download_hf_checkpoints.py", "--repo", HUB_REPO, "--out", "checkpoints/hf"],
                         work, env)
    assert "not released by Meta (0-byte placeholder in the repository)" in downloaded.stdout
    info = run(["-m", "sam3d_med.cli", "model-info", "--preset", "sam3d", "--config_dir", "checkpoints/hf"], work, env)
    assert "Dino input 42 px (position embedding stored for 28 px)" in info.stdout
    assert f"{4 * 10 + 2 * 4} condition tokens" in info.stdout

    # tutorial step 3 with the defaults (model=sam3d, LoRA, checkpoints/hf), small and quick
    run([REPO / "scripts" / "train_medical_hydra.py", f"data.slice_cache_dir={cache_dir}",
         "data.preprocess_crop_size=[42,42]", "data.num_workers=0", "device=cpu", "training.epochs=1",
         "training.batch_size=2", "training.max_steps_per_epoch=2", "training.warmup_steps=1",
         "validation.max_batches=1", "validation.reconstructions=1", "validation.sampler_steps=2",
         "latent_targets.steps=3", "latent_targets.batch_size=16", "hydra.run.dir=run"], work, env)
    log = (work / "run" / "train.log").read_text()
    assert "not released by Meta" in log and "inverting the frozen decoder" in log
    assert "round trip, Dice of decoder(target latent) vs true occupancy" in log
    assert "LoRA rank 8" in log
    payload = read_training_checkpoint(work / "checkpoints" / "medical" / "best.pt")
    assert payload["model_config"]["image_vit"]["input_size"] == 42 and payload["config"]["model"]["preset"] == "sam3d"
    assert payload["base_identity"]["files"]["ss_encoder.safetensors"]["size"] == 0
    assert payload["trained_state"] and all("lora_" in k for k in payload["trained_state"])
    assert list((cache_dir / "latent_targets").glob("*/*.npy"))

    # tutorial step 4 on the trained checkpoint
    evaluated = run([REPO / "scripts" / "eval_medical.py", "--checkpoint", "checkpoints/medical/best.pt",
                     "--data_root", cache_dir, "--output_dir", "results", "--steps", "2", "--max_cases", "1",
                     "--device", "cpu"], work, env)
    assert "mean_shape" in evaluated.stdout and (work / "results" / "metrics.json").is_file()
