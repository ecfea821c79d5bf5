"""Entry point behind ``scripts/train_medical_hydra.py``: Hydra config in, one-line errors out."""

from __future__ import annotations

import logging
import sys

from omegaconf import DictConfig

from ..errors import Sam3dMedError

log = logging.getLogger("sam3d_med.train")


def run_training_job(cfg: DictConfig) -> int:
    from hydra.core.hydra_config import HydraConfig

    from .config_check import check_training_config

    run_dir = HydraConfig.get().runtime.output_dir
    try:
        if cfg.training.get("resume"):  # the checkpoint's settings first, then the checks of what results
            cfg = _resume_config(cfg)
        check_training_config(cfg)  # before torch loads: a wrong value is one line within a second
        from .trainer import train

        summary = train(cfg, run_dir)
    except Sam3dMedError as exc:
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
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
