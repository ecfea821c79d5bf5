"""Shared fixtures: a small phantom dataset and its preprocessed cache (built once per session)."""

from __future__ import annotations

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
def cache_dir(phantom_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache")
    summary = run_preprocess(phantom_dir, out, PreprocessOptions(extract_mesh=True), workers=1, progress=False,
                             log=lambda m: None)
    assert summary.ok, summary.failed
    return out


def ellipsoid_mask(shape=(40, 40, 40), centre=(20, 18, 22), semi_axes=(8, 6, 10)) -> np.ndarray:
    grid = np.indices(shape).transpose(1, 2, 3, 0) - np.asarray(centre)
    return ((grid / np.asarray(semi_axes, dtype=float)) ** 2).sum(-1) <= 1.0
