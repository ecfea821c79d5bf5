"""The preprocessed cache's manifest: its name, version and checked reading. Kept free of heavy imports
(json only): every command checks a cache before it loads torch or scipy."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError

PREPROCESS_VERSION = 1
MANIFEST_NAME = "manifest.json"


def load_manifest(cache_dir: str | Path) -> dict:
    """The cache's manifest, checked: folder present, manifest present, same version, not empty."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        raise InputError(f"{cache_dir}: cache folder does not exist (run scripts/reprocess_ts_nifti.py first)")
    path = cache_dir / MANIFEST_NAME
    if not path.is_file():
        raise InputError(f"{cache_dir}: no {MANIFEST_NAME}: not a preprocessed cache (run scripts/reprocess_ts_nifti.py)")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise InputError(f"{path}: unreadable manifest ({exc})") from None
    version = manifest.get("preprocess_version")
    if version != PREPROCESS_VERSION:
        raise InputError(f"{cache_dir}: made by preprocessing version {version}, this sam3d-med reads version "
                         f"{PREPROCESS_VERSION}: re-run scripts/reprocess_ts_nifti.py with --overwrite")
    if not manifest.get("cases"):
        raise InputError(f"{cache_dir}: the cache holds no cases")
    return manifest
