"""Checks of a training configuration that need no heavy import: run before torch is loaded, so a
mistyped value or a missing folder is one line within a second, not after seconds of imports."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..errors import InputError
from ..settings import RunSettings


def check_training_config(cfg: DictConfig) -> RunSettings:
    """The configuration's typed settings (``settings.RunSettings``: every value checked, ConfigError
    naming the key), the device and the files it names (InputError naming the key or the file)."""
    from ..preflight import device_option

    device_option(str(OmegaConf.select(cfg, "device")), "device=")
    settings = RunSettings.from_config(cfg)
    resume = settings.training.resume
    if resume and not Path(resume).is_file():
        raise InputError("no such checkpoint file", parameter="training.resume", value=resume)
    from ..data.manifest import load_manifest  # json only

    load_manifest(settings.data.slice_cache_dir)
    if settings.model.get("checkpoint_dir"):
        from ..model.release_files import require_weights_folder

        require_weights_folder(settings.model["checkpoint_dir"])
    return settings
