"""The training configuration's typed settings: one place where every value is cast and checked."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from sam3d_med.errors import ConfigError
from sam3d_med.settings import (DataSettings, InversionSettings, LossWeights, RunSettings, TrainingSettings,
                                ValidationSettings)

REPO = Path(__file__).resolve().parents[1]


def test_every_key_of_the_yaml_is_a_typed_setting_with_the_same_default():
    """configs/train.yaml and the dataclasses declare the same keys and defaults (no second list)."""
    document = yaml.safe_load((REPO / "configs" / "train.yaml").read_text())
    for name, group in RunSettings.GROUPS.items():
        declared = {f.name: f.default for f in dataclasses.fields(group)}
        assert set(document[name]) == set(declared), name
        built = group.from_mapping(document[name]).to_dict()
        assert built == group().to_dict(), name


def test_values_are_cast_and_checked_where_built():
    assert DataSettings(preprocess_crop_size=[64, 64]).preprocess_crop_size == (64, 64)
    assert isinstance(LossWeights(w_flow=1).w_flow, float)
    assert TrainingSettings(grad_clip=None).grad_clip == 0.0
    for build, message in [(lambda: TrainingSettings(batch_size=0), "training.batch_size=0: must be a whole number >= 1"),
                           (lambda: TrainingSettings(epochs=2.5), "training.epochs=2.5: must be a whole number"),
                           (lambda: DataSettings(preprocess_crop_size=[64, 32]), "must be square"),
                           (lambda: DataSettings(val_fraction=1.0), r"data.val_fraction=1.0: must be in \[0, 1\)"),
                           (lambda: InversionSettings(source="decoder"), "must be one of auto, encoder, inversion"),
                           (lambda: ValidationSettings(eval_samples=0), "validation.eval_samples=0"),
                           (lambda: TrainingSettings(train_base="yes"), "must be true or false")]:
        with pytest.raises(ConfigError, match=message):
            build()


def test_a_stored_config_from_an_earlier_version_gets_the_defaults_it_ran_with():
    old = {"seed": 3, "device": "cpu", "data": {"slice_cache_dir": "c", "preprocess_crop_size": [64, 64]},
           "training": {"train_base": True}, "lora": {"enabled": False}, "model": {"preset": "tiny"},
           "validation": {"removed_later": 1}}
    run = RunSettings.from_config(old, legacy=True)
    assert (run.data.target_frame, run.data.epoch, run.seed) == ("volume", "slices", 3)
    assert RunSettings.from_config(old).data.target_frame == "object"  # a new config: today's default


def test_what_trains_is_checked_with_the_rest():
    with pytest.raises(ConfigError, match="nothing to train"):
        RunSettings.from_config({"lora": {"enabled": False}})
    with pytest.raises(ConfigError, match="training.train_base=true: trains the whole model"):
        RunSettings.from_config({"training": {"train_base": True}})
