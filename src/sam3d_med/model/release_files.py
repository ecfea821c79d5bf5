"""The sparse-structure stage's file names in Meta's release (``checkpoints/`` of the Hub repository,
``checkpoints/hf`` after step 1). Kept free of heavy imports: commands check them before loading torch."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError

FILES = {"generator": "ss_generator.ckpt", "decoder": "ss_decoder.ckpt", "encoder": "ss_encoder.safetensors"}


def require_weights_folder(folder: str | Path) -> Path:
    """``folder`` if it holds the release's generator checkpoint, else one line saying what to do."""
    folder = Path(folder)
    if not (folder / FILES["generator"]).is_file():
        raise InputError(f"{folder}: no official weights ({FILES['generator']} missing): run "
                         f"scripts/download_hf_checkpoints.py --out {folder}, or train the CPU model with model=tiny")
    return folder
