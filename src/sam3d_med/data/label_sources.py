"""Label values of the segmentation tools users crop from, by name, so that ``crop --labels NAME``
turns their output into the tutorial's classes (1 left atrium, 2 left ventricle, 3 right atrium,
4 right ventricle, 5 myocardium) without a hand-written value map.

The values are TotalSegmentator's published label tables (``totalsegmentator/map_to_binary.py``,
``class_map``; wasserth/TotalSegmentator at commit 0e65a44): the v1 ``total`` task (``total_v1``)
and the ``heartchambers_highres`` task. TotalSegmentator v2's ``total`` task has no chambers (its 51 is
the whole heart, 52 the aorta, 53 the pulmonary vein): it is refused by name with what to run instead.
"""

from __future__ import annotations

from ..errors import InputError

# the tutorial's classes and the structure each is in TotalSegmentator's names
TUTORIAL_CLASSES = {1: "heart_atrium_left", 2: "heart_ventricle_left", 3: "heart_atrium_right",
                    4: "heart_ventricle_right", 5: "heart_myocardium"}
# structure -> label value in each tool's output (TotalSegmentator's class_map)
PUBLISHED_VALUES = {
    "totalseg_v1": {"heart_myocardium": 44, "heart_atrium_left": 45, "heart_ventricle_left": 46,
                    "heart_atrium_right": 47, "heart_ventricle_right": 48},
    "heartchambers_highres": {"heart_myocardium": 1, "heart_atrium_left": 2, "heart_ventricle_left": 3,
                              "heart_atrium_right": 4, "heart_ventricle_right": 5},
}
WITHOUT_CHAMBERS = {
    "totalseg_v2": "TotalSegmentator v2's `total` task has no heart chambers (51 is the whole heart, 52 the aorta, "
                   "53 the pulmonary vein)",
    "total": "TotalSegmentator v2's `total` task has no heart chambers (51 is the whole heart, 52 the aorta, "
             "53 the pulmonary vein)",
}


def named_label_map(name: str) -> dict[int, int] | None:
    """{tool's label value: tutorial class} for a named label source, None when ``name`` is not one."""
    if name in WITHOUT_CHAMBERS:
        raise InputError(f"{WITHOUT_CHAMBERS[name]}: run TotalSegmentator with `--task heartchambers_highres` and "
                         f"use {{labels}} heartchambers_highres, or v1's `total` output with {{labels}} totalseg_v1",
                         parameter="labels", value=name)
    values = PUBLISHED_VALUES.get(name)
    if values is None:
        return None
    return {values[structure]: target for target, structure in TUTORIAL_CLASSES.items()}
