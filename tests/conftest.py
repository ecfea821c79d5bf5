"""Shared fixtures: a small phantom dataset and its preprocessed cache (built once per session)."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest

from sam3d_med.data.phantom import write_phantom_dataset
from sam3d_med.data.preprocess import PreprocessOptions, run_preprocess


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory):
    """Three synthetic cases, written in LAS orientation (not RAS: preprocessing must reorient)."""
    out = tmp_path_factory.mktemp("phantom")
    write_phantom_dataset(out, 3, seed=7, axcodes="LAS")
    return out


@pytest.fixture(scope="session")
def trained(cache_dir, tmp_path_factory):
    """A tiny model trained one quick epoch on ``cache_dir`` (ckpt/best.pt) and a separate test cache
    of two new phantom cases sliced along axes 0 and 2 (test_cache/)."""
    from sam3d_med.train.trainer import train
    from tests.train.conftest import QUICK, make_config

    root = tmp_path_factory.mktemp("trained")
    cfg = make_config(QUICK + [f"data.slice_cache_dir={cache_dir}", f"training.checkpoint_dir={root / 'ckpt'}",
                               "training.epochs=1"])
    train(cfg, root / "run")
    test_raw = root / "test_raw"
    write_phantom_dataset(test_raw, 2, seed=42, first_index=201)
    run_preprocess(test_raw, root / "test_cache", PreprocessOptions(axes=(0, 2)), progress=False, log=lambda m: None)
    return root


def assert_png_not_blank(path, min_size=(64, 64), min_drawn=0.1) -> np.ndarray:
    """A PNG that exists, is at least ``min_size`` (width, height) pixels and shows something: many
    distinct colours, and at least ``min_drawn`` of the pixels differ from the commonest colour (the
    background). Returns the pixels."""
    assert path.is_file(), f"{path} missing"
    pixels = mpimg.imread(str(path))
    height, width = pixels.shape[:2]
    assert width >= min_size[0] and height >= min_size[1], (path, pixels.shape)
    rgb = np.round(pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    colours, counts = np.unique(rgb, axis=0, return_counts=True)
    drawn = 1.0 - counts.max() / len(rgb)
    assert len(colours) > 50 and drawn >= min_drawn, f"{path} looks blank ({len(colours)} colours, {drawn:.1%} drawn)"
    return pixels


@pytest.fixture(scope="session")
def cache_dir(phantom_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache")
    summary = run_preprocess(phantom_dir, out, PreprocessOptions(extract_mesh=True), workers=1, progress=False,
                             log=lambda m: None)
    assert summary.ok, summary.failed
    return out


def ellipsoid_mask(shape=(40, 40, 40), centre=(20, 18, 22), semi_axes=(8, 6, 10)) -> np.ndarray:
    grid = np.indices(shape).transpose(1, 2, 3, 0) - np.asarray(centre)
    return ((grid / np.asarray(semi_axes, dtype=float)) ** 2).sum(-1) <= 1.0
