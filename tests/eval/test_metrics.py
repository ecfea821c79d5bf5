import math
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

from sam3d_med.eval.metrics import directed_distances_mm, segmentation_metrics, summarize
from tests.conftest import ellipsoid_mask


def one_hot(mask):
    return torch.from_numpy(np.stack([~mask, mask]))[None].float()


def shapes(seed):
    rng = np.random.default_rng(seed)
    a = ellipsoid_mask((30, 32, 28), centre=rng.uniform(12, 16, 3), semi_axes=rng.uniform(4, 9, 3))
    b = ellipsoid_mask((30, 32, 28), centre=rng.uniform(12, 16, 3), semi_axes=rng.uniform(4, 9, 3))
    return a, b


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("spacing", [(3.0, 3.0, 3.0), (1.0, 2.0, 0.7)])
def test_equal_to_monai(seed, spacing):
    a, b = shapes(seed)
    ours = segmentation_metrics(a, b, spacing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = compute_hausdorff_distance(one_hot(a), one_hot(b), include_background=False, percentile=95, spacing=list(spacing))
        dice = compute_dice(one_hot(a), one_hot(b), include_background=False)
        voxels = segmentation_metrics(a, b, spacing, nsd_definition="boundary_voxels")
        for tol in (1.0, 3.0, 6.0):
            for subvoxels, values in ((True, ours), (False, voxels)):  # the reference definition; the voxel count
                nsd = compute_surface_dice(one_hot(a), one_hot(b), class_thresholds=[tol], include_background=False,
                                           spacing=list(spacing), use_subvoxels=subvoxels)
                assert values[f"nsd_{tol:g}mm"] == pytest.approx(nsd.item(), abs=1e-5), (tol, subvoxels)
    assert ours["hd95_mm"] == pytest.approx(hd.item(), rel=1e-5)
    assert ours["dice"] == pytest.approx(dice.item(), abs=1e-6)


def test_known_values_in_mm():
    a = np.zeros((20, 20, 20), bool)
    a[5:10, 5:10, 5:10] = True
    b = np.roll(a, 2, axis=0)  # shifted by 2 voxels of 3 mm along i
    m = segmentation_metrics(a, b, (3.0, 3.0, 3.0))
    assert m["dice"] == pytest.approx(2 * 75 / 250)
    assert m["hd95_mm"] == pytest.approx(6.0)
    assert segmentation_metrics(a, a, (3.0, 3.0, 3.0)) == {"dice": 1.0, "hd95_mm": 0.0, "chamfer_mm": 0.0,
                                                           "nsd_1mm": 1.0, "nsd_3mm": 1.0, "nsd_6mm": 1.0}
    # Chamfer is the mean of the two directed means, not squared
    d1, d2 = directed_distances_mm(a, b, (3, 3, 3)), directed_distances_mm(b, a, (3, 3, 3))
    assert m["chamfer_mm"] == pytest.approx((d1.mean() + d2.mean()) / 2)


def test_empty_masks_and_summaries():
    a = np.zeros((8, 8, 8), bool)
    a[2:5, 2:5, 2:5] = True
    empty = np.zeros_like(a)
    assert all(math.isnan(v) for v in segmentation_metrics(empty, empty, (1, 1, 1)).values())
    missed = segmentation_metrics(empty, a, (1, 1, 1))
    assert missed["dice"] == 0 and missed["nsd_1mm"] == 0 and math.isinf(missed["hd95_mm"]) and math.isinf(missed["chamfer_mm"])
    # NaN (undefined) is left out and counted; inf (a failure) stays in every mean and median
    s = summarize([1.0, 3.0, math.inf, math.nan])
    assert (s["mean"], s["median"], s["count"], s["finite"], s["nan"], s["inf"]) == (math.inf, 3.0, 4, 2, 1, 1)
    failed = summarize([0.0, math.inf, math.inf, math.inf])  # empty for 3 of 4 structures, perfect for one
    assert math.isinf(failed["median"]) and math.isinf(failed["mean"]) and failed["inf"] == 3
    s = summarize([1.0, 3.0, math.nan])
    assert (s["mean"], s["median"], s["std"]) == (2.0, 2.0, 1.0)


def test_surface_element_areas_equal_the_reference_table():
    from monai.metrics.utils import create_table_neighbour_code_to_surface_area

    from sam3d_med.eval.metrics import surface_area_of_neighbourhood_codes

    for spacing in ((3.0, 3.0, 3.0), (1.0, 2.0, 0.7)):
        reference = create_table_neighbour_code_to_surface_area(spacing)
        reference = np.asarray(reference[0] if isinstance(reference, tuple) else reference, dtype=float)
        assert np.allclose(surface_area_of_neighbourhood_codes(spacing), reference, rtol=1e-6, atol=1e-6)  # float32 there


def test_a_one_voxel_erosion_at_3mm_is_not_zero_at_1mm_by_the_reference_definition():
    """The issue's observation: on 3 mm voxels a one-voxel erosion scores NSD@1mm 0 by boundary-voxel
    count, while by surface area the parts of the surface within 1 mm still count."""
    from scipy import ndimage

    truth = ellipsoid_mask((40, 40, 40), centre=(20, 19, 21), semi_axes=(12, 9, 15))
    eroded = ndimage.binary_erosion(truth)
    by_area = segmentation_metrics(eroded, truth, (3.0, 3.0, 3.0))["nsd_1mm"]
    by_voxels = segmentation_metrics(eroded, truth, (3.0, 3.0, 3.0), nsd_definition="boundary_voxels")["nsd_1mm"]
    assert by_voxels == 0.0 and 0.1 < by_area < 0.9
    with pytest.raises(ValueError, match="nsd_definition"):
        segmentation_metrics(eroded, truth, (3.0, 3.0, 3.0), nsd_definition="voxels")
