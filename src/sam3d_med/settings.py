"""The training configuration as typed settings, one dataclass per config group, each value cast to
its declared type and checked where the settings are built (``__post_init__``): the one place a
configuration is validated, whether it comes from Hydra (``configs/train.yaml``), from a checkpoint's
stored config, or from code.

A bad value is a ``ConfigError`` naming its key (``training.batch_size=0: must be a whole number >=
1``), which each front end shows with its own flags (``errors.Sam3dMedError.rendered``). No heavy
import: the checks run before torch loads. Groups and keys are those of ``configs/train.yaml``, which
documents them; a stored config from an earlier version lacks some keys and gets the defaults that
version behaved with (``LEGACY_DEFAULTS``: a run from before ``data.target_frame`` trained in the
volume frame).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .data.frames import FRAME_NAMES as TARGET_FRAMES  # data.target_frame: the registry's frames
from .data.frames import target_frame
from .data.input_slices import EXTRA_SLICE_STREAMS, MAX_SLICES, SLICE_POLICIES
from .errors import ConfigError

OCCUPANCY_KINDS = ("solid", "surface")  # data.occupancy (see data.occupancy)
EPOCH_MODES = ("pairs", "slices")  # data.epoch (see data.dataset)
LEGACY_DEFAULTS = {"data.target_frame": "volume", "data.occupancy": "solid", "data.epoch": "slices"}


# ----------------------------------------------------------------------------- value checks
def _whole(minimum: int) -> Callable[[Any], int]:
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be a whole number >= {minimum}")
        if value < minimum:
            raise ValueError(f"must be a whole number >= {minimum}")
        return value
    return check


def _number(low: float, *, above: bool = False, below: float | None = None) -> Callable[[Any], float]:
    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("must be a number")
        value = float(value)
        if (value <= low if above else value < low) or (below is not None and value >= below):
            bound = f"> {low:g}" if above else f">= {low:g}"
            raise ValueError(f"must be a number {bound}" if below is None else f"must be in [{low:g}, {below:g})")
        return value
    return check


def _choice(*allowed) -> Callable[[Any], Any]:
    def check(value):
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(str(a).lower() for a in allowed)}")
        return value
    return check


def _flag(value) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _optional(check: Callable) -> Callable:
    return lambda value: None if value is None else check(value)


def _names(value) -> tuple[str, ...]:
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a list of names")
    return tuple(value)


def _num_slices(value) -> tuple[int, ...]:
    if isinstance(value, (str, bool)) or not hasattr(value, "__len__") or not 1 <= len(value) <= 2 or any(
            isinstance(v, bool) or not isinstance(v, int) for v in value) or not 1 <= value[0] <= value[-1] <= MAX_SLICES:
        raise ValueError(f"must be [K] or [K_min, K_max], whole numbers in 1..{MAX_SLICES}")
    return tuple(int(v) for v in value)


def _crop(value) -> tuple[int, int]:
    if isinstance(value, (str, int)) or len(value) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 8
                                                              for v in value):
        raise ValueError("must be [H, W], whole numbers >= 8")
    if value[0] != value[1]:
        raise ValueError("must be square (the condition embedder takes square crops)")
    return int(value[0]), int(value[1])


def _text(value) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ValueError("must be text")
    return str(value)


def _setting(default, check: Callable, doc: str = ""):
    return field(default=default, metadata={"check": check, "doc": doc})


class SettingsGroup:
    """Base of the groups: ``GROUP`` is the config group's key; every field is checked as built."""

    GROUP = ""

    def __post_init__(self):
        for spec in dataclasses.fields(self):
            check = spec.metadata.get("check")
            if check is None:
                continue
            value = getattr(self, spec.name)
            try:
                object.__setattr__(self, spec.name, check(value))
            except (ValueError, TypeError) as exc:
                raise ConfigError(str(exc), parameter=f"{self.GROUP}.{spec.name}", value=value) from None

    @classmethod
    def from_mapping(cls, values: Mapping | None, legacy: bool = False):
        """The group from a config mapping (plain or OmegaConf); keys it lacks take the defaults (with
        ``legacy``: those of ``LEGACY_DEFAULTS`` first); keys it does not declare are ignored (a later
        version's, read by an earlier one)."""
        values = _plain(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        given = {k: v for k, v in values.items() if k in known}
        if legacy:
            for key, default in LEGACY_DEFAULTS.items():
                group, name = key.split(".")
                if group == cls.GROUP and name not in given:
                    given[name] = default
        return cls(**given)

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}


def _plain(values) -> dict:
    if hasattr(values, "_metadata"):  # an OmegaConf node: its resolved plain values
        from omegaconf import OmegaConf

        return OmegaConf.to_container(values, resolve=True)
    return dict(values)


# ----------------------------------------------------------------------------- the groups
@dataclass(frozen=True)
class DataSettings(SettingsGroup):
    GROUP = "data"
    slice_cache_dir: str = _setting("dataset/ts_processed", _text)
    target_frame: str = _setting("object", _choice(*TARGET_FRAMES))
    cube_margin: float = _setting(0.1, _number(0.0))
    occupancy: str = _setting("solid", _choice(*OCCUPANCY_KINDS))
    preprocess_crop_size: tuple[int, int] = _setting((256, 256), _crop)
    val_fraction: float = _setting(0.1, _number(0.0, below=1.0))
    min_pixels: int = _setting(10, _whole(1))
    epoch: str = _setting("pairs", _choice(*EPOCH_MODES))
    augment: bool = _setting(True, _flag)
    num_workers: int = _setting(2, _whole(0))
    num_slices: tuple[int, ...] = _setting((1,), _num_slices)  # input slices per sample: [K] or [K_min, K_max]
    slice_policy: str = _setting("orthogonal", _choice(*SLICE_POLICIES))  # how the slices after the first are chosen
    slice_spacing_mm: float = _setting(15.0, _number(0.0, above=True))  # parallel slices: their spacing
    extra_slice_streams: str = _setting("all", _choice(*EXTRA_SLICE_STREAMS))  # the further slices' condition streams


@dataclass(frozen=True)
class LoraSettings(SettingsGroup):
    """Adapters on the flow transformer (``model.lora``): rank r, scale alpha / r (Hu et al. 2021)."""

    GROUP = "lora"
    enabled: bool = _setting(True, _flag)
    rank: int = _setting(8, _whole(1))
    alpha: float = _setting(16.0, _number(0.0, above=True))
    dropout: float = _setting(0.0, _number(0.0, below=1.0))
    targets: tuple[str, ...] = _setting(("to_qkv", "to_out", "to_q", "to_kv"), _names)
    include_mlp: bool = _setting(False, _flag)
    trainable_modules: tuple[str, ...] = _setting((), _names)  # regexes over module names trained in full


@dataclass(frozen=True)
class LossWeights(SettingsGroup):
    """The training objective's weights (``train.losses``); ``decode_samples`` 0: every sample."""

    GROUP = "loss"
    w_flow: float = _setting(1.0, _number(0.0))
    w_mask_loss: float = _setting(1.0, _number(0.0))
    w_sdf_loss: float = _setting(0.5, _number(0.0))
    w_vae_loss: float = _setting(0.0, _number(0.0))
    sdf_tau_mm: float = _setting(6.0, _number(0.0, above=True))
    decode_samples: int = _setting(0, _whole(0))
    vae_latent_l2: float = _setting(0.01, _number(0.0))


@dataclass(frozen=True)
class TrainingSettings(SettingsGroup):
    GROUP = "training"
    epochs: int = _setting(50, _whole(1))
    batch_size: int = _setting(4, _whole(1))
    learning_rate: float = _setting(1e-4, _number(0.0, above=True))
    weight_decay: float = _setting(0.01, _number(0.0))
    warmup_steps: int = _setting(100, _whole(0))
    grad_accum_steps: int = _setting(1, _whole(1))
    grad_clip: float = _setting(1.0, lambda v: 0.0 if v is None else _number(0.0)(v))  # 0: no clipping
    gradient_checkpointing: str | bool = _setting("auto", _choice("auto", True, False))
    train_base: bool = _setting(False, _flag)
    save_every: int = _setting(10, _whole(1))
    checkpoint_dir: str = _setting("checkpoints/medical", _text)
    resume: str | None = _setting(None, _optional(_text))
    max_steps_per_epoch: int | None = _setting(None, _optional(_whole(1)))
    stop_after_steps: int | None = _setting(None, _optional(_whole(1)))


@dataclass(frozen=True)
class InversionSettings(SettingsGroup):
    """Where the flow's shape targets come from and how decoder inversion runs (``train.latent_targets``)."""

    GROUP = "latent_targets"
    source: str = _setting("auto", _choice("auto", "encoder", "inversion"))
    steps: int = _setting(150, _whole(1))
    learning_rate: float = _setting(0.1, _number(0.0, above=True))
    l2: float = _setting(1e-3, _number(0.0))
    batch_size: int = _setting(8, _whole(1))
    target_dice: float = _setting(0.98, _number(0.0))  # an optimisation batch stops when every volume reached this
    init: str = _setting("generator", _choice("generator", "zero"))  # z0: the pretrained model's own sample, or 0
    init_steps: int = _setting(12, _whole(1))  # sampler steps of the generator's sample


@dataclass(frozen=True)
class ValidationSettings(SettingsGroup):
    """What validation measures, and the sampler settings it (and by default evaluation) uses."""

    GROUP = "validation"
    max_batches: int | None = _setting(None, _optional(_whole(1)))
    reconstructions: int = _setting(8, _whole(0))
    sampler_steps: int | None = _setting(None, _optional(_whole(1)))
    cfg_strength: float | None = _setting(None, _optional(_number(0.0)))
    eval_samples: int | None = _setting(None, _optional(_whole(1)))


@dataclass(frozen=True)
class RunSettings:
    """A whole training configuration (``model`` stays the preset's mapping: ``model.config`` types it)."""

    seed: int
    device: str
    data: DataSettings
    lora: LoraSettings
    loss: LossWeights
    training: TrainingSettings
    latent_targets: InversionSettings
    validation: ValidationSettings
    model: dict

    GROUPS = {"data": DataSettings, "lora": LoraSettings, "loss": LossWeights, "training": TrainingSettings,
              "latent_targets": InversionSettings, "validation": ValidationSettings}

    @classmethod
    def from_config(cls, cfg: Mapping, legacy: bool = False) -> "RunSettings":
        """Every group of ``cfg`` typed and checked (``ConfigError`` naming the first bad key); the
        combinations that cannot train are refused too. ``legacy``: a stored config (see module doc)."""
        cfg = _plain(cfg)
        seed = cfg.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError("must be a whole number", parameter="seed", value=seed)
        device = str(cfg.get("device", "auto"))
        groups = {name: group.from_mapping(cfg.get(name), legacy) for name, group in cls.GROUPS.items()}
        settings = cls(seed=seed, device=device, model=dict(cfg.get("model") or {}), **groups)
        if not legacy:
            settings.check_trainable()
            if settings.data.num_slices[-1] > 1 and not target_frame(settings.data.target_frame).several_slices:
                raise ConfigError("conditions on one slice only: data.num_slices=[1] with it, or "
                                  "data.target_frame=object", parameter="data.target_frame",
                                  value=settings.data.target_frame)
        return settings

    @classmethod
    def of(cls, cfg) -> "RunSettings":
        """``cfg`` as settings: itself when it is already, else read as a stored config would be
        (``from_config(cfg, legacy=True)``: a current config has every key, so nothing differs)."""
        return cfg if isinstance(cfg, RunSettings) else cls.from_config(cfg, legacy=True)

    def check_trainable(self) -> None:
        """What to train: LoRA adapters, or every weight (``training.train_base``), not both, not neither."""
        if self.training.train_base and self.lora.enabled:
            raise ConfigError("trains the whole model: set {lora.enabled}=false with it",
                              parameter="training.train_base", value=True)
        if not self.training.train_base and not self.lora.enabled:
            raise ConfigError("nothing to train: enable lora ({lora.enabled}=true) or set {training.train_base}=true")
