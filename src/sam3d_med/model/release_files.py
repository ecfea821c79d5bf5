"""The sparse-structure stage's files in Meta's release (``checkpoints/`` of the Hub repository,
``checkpoints/hf`` after step 1), and which of them a folder holds. Kept free of heavy imports:
commands check them before loading torch.

``pipeline.yaml`` names each component's files (``<component>_config_path``,
``<component>_ckpt_path``); where it names none, the release's own names are used. The release as it
is today (Hub revision 2e73555, after Meta released the SS encoder on 2026-06-01) holds
``ss_encoder.ckpt`` (119 MB) and ``ss_encoder.yaml``; older snapshots and mirrors hold 0-byte
placeholders ``ss_encoder.safetensors`` / ``ss_encoder.yaml`` instead (see ``encoder_status``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import InputError

PIPELINE_FILE = "pipeline.yaml"
# component -> (config, checkpoint) as the release names them today
RELEASE_FILES = {"generator": ("ss_generator.yaml", "ss_generator.ckpt"),
                 "decoder": ("ss_decoder.yaml", "ss_decoder.ckpt"),
                 "encoder": ("ss_encoder.yaml", "ss_encoder.ckpt")}
# what snapshots from before the encoder's release hold (0-byte placeholders)
OLDER_ENCODER_CHECKPOINT = "ss_encoder.safetensors"
# the checkpoint file of each component under the release's names (the generator and decoder never moved)
FILES = {name: files[1] for name, files in RELEASE_FILES.items()}


def named_in_pipeline(pipeline: dict | None) -> dict[str, dict[str, str]]:
    """component key (``ss_generator``, ...) -> {"config": name, "ckpt": name}: the file names (basenames)
    that pipeline.yaml gives under ``<component>_config_path`` / ``<component>_ckpt_path``."""
    named: dict[str, dict[str, str]] = {}
    for key, value in (pipeline or {}).items():
        if isinstance(value, str) and value and key.endswith(("_config_path", "_ckpt_path")):
            component, kind = key.rsplit("_", 2)[0], key.rsplit("_", 2)[1]
            named.setdefault(component, {})[kind] = PurePosixPath(value).name
    return named


def _read_pipeline(folder: Path) -> dict | None:
    path = folder / PIPELINE_FILE
    if not path.is_file() or path.stat().st_size == 0:
        return None
    import yaml

    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None  # reported by whoever reads the settings (official_yaml.load_yaml)
    return document if isinstance(document, dict) else None


def component_files(folder: str | Path) -> dict[str, tuple[str, str]]:
    """component (generator, decoder, encoder) -> (config name, checkpoint name) in ``folder``: as its
    pipeline.yaml names them, else the release's names; an unnamed encoder checkpoint is whichever of
    ``ss_encoder.ckpt`` (today's release) and ``ss_encoder.safetensors`` (older snapshots) is there."""
    folder = Path(folder)
    named = named_in_pipeline(_read_pipeline(folder))
    out = {}
    for component, (config, ckpt) in RELEASE_FILES.items():
        given = named.get(f"ss_{component}", {})
        if component == "encoder" and "ckpt" not in given and not (folder / ckpt).exists() \
                and (folder / OLDER_ENCODER_CHECKPOINT).exists():
            ckpt = OLDER_ENCODER_CHECKPOINT
        out[component] = (given.get("config", config), given.get("ckpt", ckpt))
    return out


@dataclass(frozen=True)
class EncoderStatus:
    """Whether a folder holds usable SS encoder weights: ``state`` is ``released`` (a non-empty
    checkpoint), ``placeholder`` (0 bytes: a snapshot or mirror from before 2026-06-01) or ``absent``."""

    state: str
    checkpoint: Path
    config: Path

    @property
    def usable(self) -> bool:
        return self.state == "released"

    def describe(self) -> str:
        """One phrase for logs and summaries."""
        name = self.checkpoint.name
        if self.state == "released":
            return f"SS encoder: {name} ({self.checkpoint.stat().st_size / 1e6:,.1f} MB), released weights"
        if self.state == "placeholder":
            return (f"SS encoder: {name} is a 0-byte placeholder (a snapshot or mirror from before Meta released the "
                    f"encoder on 2026-06-01)")
        return f"SS encoder: {name} absent"


def encoder_status(folder: str | Path) -> EncoderStatus:
    folder = Path(folder)
    config, ckpt = component_files(folder)["encoder"]
    path = folder / ckpt
    state = "absent" if not path.is_file() else "placeholder" if path.stat().st_size == 0 else "released"
    return EncoderStatus(state, path, folder / config)


def require_weights_folder(folder: str | Path) -> Path:
    """``folder`` if it holds the release's generator checkpoint, else one line saying what to do."""
    folder = Path(folder)
    generator = component_files(folder)["generator"][1]
    if not (folder / generator).is_file():
        raise InputError(f"{folder}: no official weights ({generator} missing): run "
                         f"scripts/download_hf_checkpoints.py --out {folder}, or train the CPU model with model=tiny")
    return folder


def require_encoder(folder: str | Path) -> EncoderStatus:
    """The folder's encoder status when its weights are usable, else one line saying what to do."""
    status = encoder_status(folder)
    if not status.usable:
        raise InputError(f"{folder}: {status.describe()}: this folder holds no encoder weights to measure; download "
                         f"today's release (scripts/download_hf_checkpoints.py)")
    return status
