"""Entry point behind ``scripts/train_medical_hydra.py``: Hydra config in, one-line errors out.

Every path setting (``PATH_KEYS``) means what the user typed: relative to the folder the command was
launched from, also with ``hydra.job.chdir=true`` (which moves the working directory into the run's
output folder). They are made absolute against that folder before anything reads them, so the
checkpoint stores absolute paths and an error names the absolute path it tried.

An error about a setting names its key as typed here (``training.batch_size=0: ...``); a front end
that calls this one with options of its own (``scripts/run_medical_pipeline.sh``) lists them in
``SAM3D_MED_OPTION_NAMES`` (``key=--option,...``) and the error names its option instead.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..errors import Sam3dMedError

log = logging.getLogger("sam3d_med.train")
PATH_KEYS = ("data.slice_cache_dir", "model.checkpoint_dir", "training.checkpoint_dir", "training.resume")


def resolve_paths(cfg: DictConfig, launch_dir: str | Path) -> DictConfig:
    """``cfg`` with every relative path setting made absolute against ``launch_dir``."""
    for key in PATH_KEYS:
        value = OmegaConf.select(cfg, key)
        if value and not Path(str(value)).is_absolute():
            OmegaConf.update(cfg, key, str((Path(launch_dir) / str(value)).resolve()), force_add=True)
    return cfg


def run_training_job(cfg: DictConfig) -> int:
    from hydra.core.hydra_config import HydraConfig

    from .config_check import check_training_config

    runtime = HydraConfig.get().runtime
    run_dir = runtime.output_dir
    try:
        cfg = resolve_paths(cfg, runtime.cwd)  # the launch folder, whatever hydra.job.chdir says
        if cfg.training.get("resume"):  # the checkpoint's settings first, then the checks of what results
            cfg = resolve_paths(_resume_config(cfg), runtime.cwd)
        check_training_config(cfg)  # before torch loads: a wrong value is one line within a second
        from .trainer import train

        summary = train(cfg, run_dir)
    except Sam3dMedError as exc:
        message = f"error: {exc.rendered(option_names())}"
        _log_to_files(message)  # the run's train.log keeps it; the console shows it once, on stderr
        print(message, file=sys.stderr)
        return 1
    if summary["status"] == "interrupted":
        print(f"stopped ({'step limit' if not summary['signal'] else 'signal'}): state saved in "
              f"{summary['checkpoint_dir']}/last.pt; continue with training.resume={summary['checkpoint_dir']}/last.pt")
        return 128 + int(summary["signal"]) if summary["signal"] else 0
    before, best = summary["untrained_dice"], summary["best_dice"]
    chosen = (f"best validation Dice {best:.4f}" if summary.get("best_by", "val_dice") == "val_dice" else
              f"no validation cases, best.pt has the lowest training loss ({summary['best_train_loss']:.4f})")
    print(f"training finished: {chosen}"
          + (f" (untrained model: {before:.4f})" if before is not None else "")
          + f"; checkpoints in {summary['checkpoint_dir']}; log and curves in {summary['run_dir']}")
    return 0


def option_names(text: str | None = None) -> dict[str, str]:
    """{setting key: the calling front end's option} from ``SAM3D_MED_OPTION_NAMES`` (or ``text``)."""
    text = os.environ.get("SAM3D_MED_OPTION_NAMES", "") if text is None else text
    return dict(pair.split("=", 1) for pair in text.split(",") if "=" in pair)


def _log_to_files(message: str) -> None:
    """Write an ERROR record to the log files only (Hydra's train.log), not to the console handler."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers + log.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _resume_config(cfg: DictConfig) -> DictConfig:
    from hydra.core.hydra_config import HydraConfig

    from .resume_config import config_for_resume, explicit_keys
    from .trainer import read_training_checkpoint

    hydra_cfg = HydraConfig.get()
    config_dir = next(source.path for source in hydra_cfg.runtime.config_sources if source.provider == "main")
    stored = read_training_checkpoint(cfg.training.resume)["config"]
    cfg, given = config_for_resume(cfg, stored, explicit_keys(list(hydra_cfg.overrides.task), config_dir))
    log.info("resuming with the checkpoint's settings%s",
             f"; from the command line: {', '.join(given)}" if given else " (nothing else given)")
    return cfg
