from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")
# Small and quick: 2 steps per epoch, tiny crops, short sampling.
QUICK = ["experiment=demo_tiny", "data.preprocess_crop_size=[32,32]", "training.batch_size=2",
         "training.max_steps_per_epoch=2", "training.warmup_steps=1", "loss.decode_samples=1",
         "validation.max_batches=1", "validation.reconstructions=2", "validation.sampler_steps=2"]


def make_config(overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="train", overrides=overrides)


@pytest.fixture
def quick_config(cache_dir, tmp_path):
    def build(*extra):
        return make_config(QUICK + [f"data.slice_cache_dir={cache_dir}",
                                    f"training.checkpoint_dir={tmp_path / 'ckpt'}", *extra])
    return build
