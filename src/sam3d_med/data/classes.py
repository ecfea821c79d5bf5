"""Class names of the cardiac labels, stored with the data (``classes.json``) rather than assumed."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError

CLASSES_FILE = "classes.json"

# TotalSegmentator heart-crop label values 1..5 (0 is background).
DEFAULT_CLASS_NAMES: dict[int, str] = {
    1: "left_atrium",
    2: "left_ventricle",
    3: "right_atrium",
    4: "right_ventricle",
    5: "myocardium",
}


def read_class_names(folder: str | Path) -> dict[int, str] | None:
    """Return {label value: name} from ``folder/classes.json``, or None when the file is absent."""
    path = Path(folder) / CLASSES_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        return {int(k): str(v) for k, v in raw["class_names"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{path}: not a valid class-name file ({exc})") from None


def class_names_document(names: dict[int, str]) -> dict:
    return {"class_names": {str(k): v for k, v in sorted(names.items())}, "background": 0}


def find_class_names(folder: str | Path, names_arg: str | None) -> tuple[dict[int, str], str]:
    """Class names from ``names_arg`` (comma-separated names of labels 1..N), else
    ``folder/classes.json``, else the TotalSegmentator heart order; returns (names, where from)."""
    if names_arg:
        return {i + 1: n.strip() for i, n in enumerate(names_arg.split(","))}, "--class_names"
    names = read_class_names(folder)
    if names is not None:
        return names, f"{folder}/{CLASSES_FILE}"
    return dict(DEFAULT_CLASS_NAMES), "default TotalSegmentator heart order (pass --class_names to change)"
