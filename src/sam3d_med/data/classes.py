"""Class names of the cardiac labels, stored with the data (``classes.json``) rather than assumed."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError

CLASSES_FILE = "classes.json"
CLASSES_FORMAT = ('classes.json must map label values to names: {"class_names": {"1": "left_atrium", '
                  '"2": "left_ventricle"}} (label values from 1; 0 is the background)')

# The tutorial's label values 1..5 (0 is background): its reference crops and the phantom use them, and
# `crop --labels totalseg_v1|heartchambers_highres` produces them from TotalSegmentator's output, whose
# own values differ (data.label_sources).
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
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON ({exc}); {CLASSES_FORMAT}") from None
    names = raw.get("class_names") if isinstance(raw, dict) else None
    if not isinstance(names, dict):
        got = "a list" if isinstance(raw, list) or isinstance(names, list) else (
            "no \"class_names\"" if names is None else type(names).__name__)
        raise InputError(f"{path}: {CLASSES_FORMAT} (got {got})")
    try:
        parsed = {int(k): str(v) for k, v in names.items()}
    except ValueError:
        raise InputError(f"{path}: label values must be whole numbers; {CLASSES_FORMAT}") from None
    if 0 in parsed or any(k < 0 for k in parsed):
        raise InputError(f"{path}: label values start at 1 (0 is the background); {CLASSES_FORMAT}")
    return parsed


def class_names_document(names: dict[int, str]) -> dict:
    return {"class_names": {str(k): v for k, v in sorted(names.items())}, "background": 0}


def parse_class_names(text: str) -> dict[int, str]:
    """``--class_names`` (comma-separated names of labels 1..N) -> {label value: name}."""
    return {i + 1: n.strip() for i, n in enumerate(text.split(","))}


def find_class_names(folder: str | Path, names_arg: str | None) -> tuple[dict[int, str], str]:
    """Class names from ``names_arg`` (comma-separated names of labels 1..N), else
    ``folder/classes.json``, else the tutorial's order; returns (names, where from)."""
    if names_arg:
        return parse_class_names(names_arg), "--class_names"
    names = read_class_names(folder)
    if names is not None:
        return names, f"{folder}/{CLASSES_FILE}"
    return dict(DEFAULT_CLASS_NAMES), ("the tutorial's default order (1 left_atrium ... 5 myocardium; not any "
                                       "tool's own values: pass --class_names to change)")
