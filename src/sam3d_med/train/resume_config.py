"""The configuration of a resumed run: the checkpoint's own settings, and only what the user gave.

A checkpoint stores the resolved configuration it was trained with. The tutorial resumes with
``--resume checkpoints/medical/epoch_10.pt --epochs 100`` and repeats no other option, so a run
trained with ``lora.rank=4`` must resume with rank 4, not the default 8. Resuming therefore starts
from the stored configuration and applies on top only the settings given explicitly on the command
line (``key=value``, a ``model=`` group, the keys an ``experiment=`` file sets), plus this machine's
settings (``device``, ``data.num_workers``). One-shot settings, which describe one invocation and
not the run (``training.resume``, ``training.stop_after_steps``), are never inherited: a run stopped
after N steps and resumed, as its own message says, trains on to ``training.epochs``. An explicit
value that contradicts what the trained weights are (the model, the LoRA structure, full-weight vs
LoRA, the target frame) is one line naming the key.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError

MACHINE_KEYS = ("device", "data.num_workers")  # where the run happens, not what it trains
ONE_SHOT_KEYS = ("training.resume", "training.stop_after_steps")  # this invocation's, never the checkpoint's
STRUCTURAL_KEYS = ("model", "lora.enabled", "lora.rank", "lora.targets", "lora.include_mlp", "lora.trainable_modules",
                   "training.train_base", "data.target_frame")


def _leaves(node, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [key for k, v in node.items() for key in _leaves(v, f"{prefix}{k}.")]
    return [prefix[:-1]]


def explicit_keys(overrides: list[str], config_dir: str | Path) -> set[str]:
    """Dotted keys the command line sets: ``key=value`` overrides, ``model=`` (the whole ``model``
    node), and every key (and ``model`` override) of an ``experiment=NAME`` file."""
    keys: set[str] = set()
    for override in overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key == "experiment":
            doc = OmegaConf.to_container(OmegaConf.load(Path(config_dir) / "experiment" / f"{value}.yaml"))
            for entry in doc.pop("defaults", []) or []:
                if isinstance(entry, dict) and any(str(k).split()[-1] == "/model" for k in entry):
                    keys.add("model")
            keys.update(_leaves(doc))
        elif not key.startswith("hydra"):
            keys.add(key)
    return keys


def _covered(key: str, explicit: set[str]) -> bool:
    """Whether ``key`` is set by an explicit key (itself or a parent node)."""
    return any(key == e or key.startswith(e + ".") for e in explicit)


def config_for_resume(cfg: DictConfig, stored: dict, explicit: set[str]) -> tuple[DictConfig, list[str]]:
    """(the configuration to resume with, the keys taken from the command line). ``cfg``: the
    command line's configuration; ``stored``: the checkpoint's resolved configuration."""
    given = OmegaConf.to_container(cfg, resolve=True)
    merged = OmegaConf.create(stored)
    for key in STRUCTURAL_KEYS:
        if not (_covered(key, explicit) or any(_covered(e, {key}) for e in explicit)):  # the key, a parent or a child
            continue
        mine, theirs = OmegaConf.select(cfg, key), OmegaConf.select(merged, key)
        mine = OmegaConf.to_container(mine, resolve=True) if isinstance(mine, DictConfig) else mine
        theirs = OmegaConf.to_container(theirs, resolve=True) if isinstance(theirs, DictConfig) else theirs
        if key == "model" and isinstance(mine, dict) and isinstance(theirs, dict):
            # the weights' folder may move (the trainer checks the files' identity), nothing else
            differing = sorted((k for k in set(mine) | set(theirs) if k != "checkpoint_dir" and mine.get(k) != theirs.get(k)),
                               key=lambda k: (k != "preset", k))
            if differing:
                k = differing[0]
                raise ConfigError(f"model.{k}={mine.get(k)} conflicts with the checkpoint, trained with model.{k}="
                                  f"{theirs.get(k)}: a resumed run keeps its model (drop the option, or start a new run)")
        elif mine != theirs:
            raise ConfigError(f"{key}={mine} conflicts with the checkpoint, trained with {key}={theirs}: a resumed run "
                              f"keeps what its weights are (drop the option, or start a new run)")
    taken = sorted({*[k for k in _leaves(given) if _covered(k, explicit)], *MACHINE_KEYS, *ONE_SHOT_KEYS})
    for key in taken:
        value = OmegaConf.select(cfg, key)
        if value is not None or OmegaConf.select(merged, key) is not None:
            OmegaConf.update(merged, key, value, force_add=True)
    # keys this version has and the checkpoint's config lacks (an older sam3d-med) keep their defaults
    merged = OmegaConf.merge(OmegaConf.create({k: v for k, v in given.items() if k != "hydra"}), merged)
    return merged, sorted(set(taken) - set(MACHINE_KEYS) - set(ONE_SHOT_KEYS))
