import hashlib
import json

import numpy as np
import pytest
from scipy import ndimage

from sam3d_med.cli import main
from sam3d_med.data.classes import read_class_names
from sam3d_med.data.phantom import orientation_affine
from sam3d_med.data.template_phantom import (
    DEFAULT_AMPLITUDE_MM,
    DEFAULT_SMOOTHNESS_MM,
    generate_template_case,
    generate_template_case_details,
    prepare_template,
    write_template_phantom_dataset,
)
from sam3d_med.errors import InputError
from sam3d_med.io.nifti import Volume, as_canonical, load_volume, save_volume

LA, LV, MYO = 1, 2, 5
CUBE = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity

# A synthetic template on a 1.5 mm LPS grid: an ellipsoidal LV cavity (2) in a 10 mm shell (5), both
# cut open at the base plane, and a separate sphere (1) 16 mm beside the shell.
SPACING = 1.5
SHAPE = (90, 56, 70)  # 135 x 84 x 105 mm
CENTRE = np.array([20.0, -30.0, -80.0])
LV_CENTRE = CENTRE + np.array([-12.0, 0.0, 5.0])
CAVITY_SEMI = np.array([18.0, 18.0, 32.0])
WALL_MM = 10.0
SPHERE_CENTRE = LV_CENTRE + np.array([58.0, 0.0, 10.0])
SPHERE_R = 14.0


def make_template(with_sphere: bool = True, shape=SHAPE, extra: int | None = None) -> Volume:
    affine = np.diag([-SPACING, -SPACING, SPACING, 1.0])  # LPS
    affine[:3, 3] = CENTRE - affine[:3, :3] @ ((np.array(shape) - 1) / 2)
    world = np.indices(shape, dtype=np.float64).transpose(1, 2, 3, 0) @ affine[:3, :3].T + affine[:3, 3]
    d = world - LV_CENTRE
    cavity = ((d / CAVITY_SEMI) ** 2).sum(-1) <= 1
    outer = ((d / (CAVITY_SEMI + WALL_MM)) ** 2).sum(-1) <= 1
    below_base = world[..., 2] < LV_CENTRE[2] + 0.6 * CAVITY_SEMI[2]
    label = np.zeros(shape, np.uint8)
    label[outer & ~cavity & below_base] = MYO
    label[cavity & below_base] = LV
    if with_sphere:
        label[np.linalg.norm(world - SPHERE_CENTRE, axis=-1) <= SPHERE_R] = LA
    if extra is not None:
        label[:3, :3, :3] = extra
    return Volume(label, affine)


@pytest.fixture(scope="module")
def template():
    return make_template()


@pytest.fixture(scope="module")
def prepared(template):
    return prepare_template(template)


@pytest.fixture(scope="module")
def cases(prepared):
    """Six cases with the default deformation (about 0.3 s each)."""
    return [generate_template_case_details(np.random.default_rng([3, n]), prepared) for n in range(6)]


def volume_mm3(label, value, spacing):
    return float((label == value).sum()) * float(np.prod(np.broadcast_to(spacing, 3)))


def cavity_enclosure(label):
    """(share of the voxels next to the cavity that are shell, number of 26-connected background patches
    touching the cavity: 1, the open base)."""
    cavity = label == LV
    ring = ndimage.binary_dilation(cavity) & ~cavity
    return (label[ring] == MYO).mean(), ndimage.label(ring & (label == 0), structure=CUBE)[1]


def test_the_synthetic_template_is_what_the_tests_assume(template):
    for value in (LA, LV, MYO):
        mask = template.data == value
        assert ndimage.label(mask, structure=CUBE)[1] == 1
        assert not (ndimage.binary_fill_holes(mask) & ~mask).any()
    share, openings = cavity_enclosure(template.data)
    assert share > 0.8 and openings == 1


def test_topology_is_kept_in_every_case(cases):
    """Per label one 26-connected component and no hole; the cavity stays wrapped by the shell, open
    only at its base; the sphere stays apart; labels the template lacks stay absent."""
    for n, case in enumerate(cases):
        label = case.label
        assert set(np.unique(label).tolist()) == {0, LA, LV, MYO}, n
        for value in (LA, LV, MYO):
            mask = label == value
            assert ndimage.label(mask, structure=CUBE)[1] == 1, (n, value)
            assert not (ndimage.binary_fill_holes(mask) & ~mask).any(), (n, value)
        share, openings = cavity_enclosure(label)
        assert share > 0.75 and openings == 1, (n, share, openings)
        assert not (label[ndimage.binary_dilation(label == LA, structure=CUBE)] > LA).any(), n
        # inside the grid (the jitter is clipped to keep the structures in): nothing on a border face
        assert not any(np.take(label, i, axis=a).any() for a in range(3) for i in (0, -1)), n
        assert case.min_jacobian > 0, n


def test_the_topology_checks_can_fail(prepared):
    """A folding deformation (40 mm RMS at 3 mm correlation) breaks what the test above checks."""
    case = generate_template_case_details(np.random.default_rng([3, 0]), prepared, amplitude_mm=40.0, smoothness_mm=3.0)
    label = case.label
    assert case.min_jacobian < 0
    broken = [ndimage.label(label == v, structure=CUBE)[1] != 1 or (ndimage.binary_fill_holes(label == v) & (label != v)).any()
              for v in (LA, LV, MYO)]
    assert any(broken) and cavity_enclosure(label)[1] > 1


def test_volumes_vary_within_the_deformation_amplitude(template, cases):
    """Volume / (template volume x scale^3): 0.78..1.18 over 40 calibration cases at the default 4 mm RMS,
    20 mm deformation (local Jacobians ~0.55..1.65, averaged over each structure); asserted in 0.7..1.35.
    Without deformation the same ratio is within 5% (3 mm nearest-neighbour resampling only)."""
    template_mm3 = {v: volume_mm3(template.data, v, SPACING) for v in (LA, LV, MYO)}
    for value in (LA, LV, MYO):
        volumes = [volume_mm3(c.label, value, 3.0) for c in cases]
        assert len(set(volumes)) == len(cases), (value, volumes)
        ratios = [vol / (template_mm3[value] * c.scale ** 3) for vol, c in zip(volumes, cases)]
        assert 0.7 < min(ratios) and max(ratios) < 1.35, (value, ratios)
        # and the deformation does change them: without it they spread by 0.026 at most (6 cases)
        assert np.ptp(ratios) > 0.08, (value, ratios)
    assert np.ptp([c.scale for c in cases]) > 0.05


def test_without_deformation_volumes_are_the_scaled_templates(prepared, template):
    for n in range(2):
        case = generate_template_case_details(np.random.default_rng([3, n]), prepared, amplitude_mm=0.0)
        assert case.min_jacobian == pytest.approx(1.0)
        for value in (LA, LV, MYO):
            ratio = volume_mm3(case.label, value, 3.0) / (volume_mm3(template.data, value, SPACING) * case.scale ** 3)
            assert ratio == pytest.approx(1.0, abs=0.05), (n, value, ratio)


def centroid_world(label, affine, value=None):
    mask = label > 0 if value is None else label == value
    return affine[:3, :3] @ np.argwhere(mask).mean(0) + affine[:3, 3]


def test_global_similarity_puts_the_centroid_at_the_drawn_centre_and_rotates_as_drawn(prepared, template):
    """Without deformation a case is G(template), G(x) = h + s R (x - c): the labelled centroid lands at h,
    and the vector from the LV cavity to the sphere is s R times the template's (R: from_euler("xyz"))."""
    from scipy.spatial.transform import Rotation

    before = centroid_world(template.data, template.affine, LA) - centroid_world(template.data, template.affine, LV)
    for n in (3, 4):  # seeds drawing rotations of 10-15 degrees about every axis
        case = generate_template_case_details(np.random.default_rng([5, n]), prepared, amplitude_mm=0.0)
        np.testing.assert_allclose(centroid_world(case.label, case.affine), case.heart_centre_mm, atol=1.5)
        rotation = Rotation.from_euler("xyz", case.rotation_deg, degrees=True).as_matrix()
        after = centroid_world(case.label, case.affine, LA) - centroid_world(case.label, case.affine, LV)
        np.testing.assert_allclose(after, case.scale * rotation @ before, atol=2.0)
        assert np.linalg.norm(after - case.scale * rotation.T @ before) > 10.0  # large enough to tell R from R^-1


def test_same_seed_same_case_and_another_case_differs(prepared, template):
    a = generate_template_case(np.random.default_rng([3, 0]), template)  # a Volume: prepared on the fly
    b = generate_template_case(np.random.default_rng([3, 0]), prepared)
    c = generate_template_case(np.random.default_rng([3, 1]), prepared)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()
    assert a[0].dtype == np.int16 and a[1].dtype == np.uint8 and a[1].shape == (64, 64, 64)
    assert not np.array_equal(a[1], c[1]) and not np.array_equal(a[0], c[0])


def test_same_anatomy_in_every_file_orientation(prepared):
    las = generate_template_case_details(np.random.default_rng([8, 1]), prepared, axcodes="LAS")
    pir = generate_template_case_details(np.random.default_rng([8, 1]), prepared, axcodes="PIR")
    centre = las.affine[:3, :3] @ np.full(3, 31.5) + las.affine[:3, 3]
    np.testing.assert_allclose(las.affine, orientation_affine("LAS", 3.0, (64, 64, 64), centre), atol=1e-9)
    a = as_canonical(Volume(las.label, las.affine))
    b = as_canonical(Volume(pir.label, pir.affine))
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-9)
    assert np.array_equal(a.data, b.data)
    assert np.array_equal(as_canonical(Volume(las.image_hu, las.affine)).data,
                          as_canonical(Volume(pir.image_hu, pir.affine)).data)


def test_intensities_follow_the_ellipsoid_phantom(cases):
    for case in cases:
        hu, label = case.image_hu.astype(float), case.label
        interior = {v: ndimage.binary_erosion(label == v) for v in (LA, LV, MYO)}
        assert 250 < hu[interior[LV]].mean() < 390 and abs(hu[interior[LA]].mean() - hu[interior[LV]].mean()) < 40
        assert 60 < hu[interior[MYO]].mean() < 160
        heart = label > 0
        near = ndimage.binary_dilation(heart, iterations=3) & ~heart  # lungs start 5 voxels out; blur reaches 1
        assert (hu < -500).mean() > 0.1  # lungs
        assert (hu[near] > -500).all()  # kept clear of the heart


def test_refuses_labels_outside_the_tutorial_values():
    with pytest.raises(InputError, match=r"found 7.*remap"):
        prepare_template(make_template(extra=7), name="t.nii.gz")
    fractional = make_template()
    with pytest.raises(InputError, match="found 2.5"):
        prepare_template(Volume(fractional.data.astype(np.float32) + np.float32(0.5) * (fractional.data == 2),
                                fractional.affine))
    with pytest.raises(InputError, match="no labelled voxel"):
        prepare_template(Volume(np.zeros((5, 5, 5), np.uint8), np.eye(4)))


def test_refuses_a_template_that_does_not_fit_the_field_of_view():
    big = np.zeros((90, 20, 20), np.uint8)
    big[2:-2, 5:15, 5:15] = LV  # 86 voxels of 2.5 mm: 215 mm
    with pytest.raises(InputError, match=r"span 215 x 25 x 25 mm.*192 mm"):
        prepare_template(Volume(big, np.diag([2.5, 2.5, 2.5, 1.0])), name="big.nii.gz")


def test_cli_writes_the_dataset_with_template_provenance_using_templates_in_turn(tmp_path, capsys):
    first, second = tmp_path / "a-labels.nii.gz", tmp_path / "b-labels.nii.gz"
    save_volume(first, make_template().data, make_template().affine, dtype=np.uint8)
    save_volume(second, make_template(with_sphere=False).data, make_template().affine, dtype=np.uint8)
    out = tmp_path / "D"
    assert main(["phantom", "--template", str(first), "--template", str(second), "--cases", "3", "--out", str(out),
                 "--seed", "4"]) == 0
    labels = []
    for n in (1, 2, 3):
        assert (out / f"s{n:04d}" / f"s{n:04d}-image.nii.gz").is_file()
        labels.append(load_volume(out / f"s{n:04d}" / f"s{n:04d}-label.nii.gz"))
    assert [set(np.unique(v.data).tolist()) for v in labels] == [{0, 1, 2, 5}, {0, 2, 5}, {0, 1, 2, 5}]
    assert "".join(labels[0].axcodes) == "RAS" and "SYNTHETIC" in (out / "README_SYNTHETIC.txt").read_text()
    doc = json.loads((out / "classes.json").read_text())
    assert doc["synthetic"] is True and doc["generator"] == "sam3d_med.data.template_phantom" and doc["seed"] == 4
    assert [t["file"] for t in doc["templates"]] == ["a-labels.nii.gz", "b-labels.nii.gz"]
    assert doc["templates"][0]["sha256"] == hashlib.sha256(first.read_bytes()).hexdigest()
    assert doc["deformation_amplitude_mm"] == DEFAULT_AMPLITUDE_MM
    assert doc["deformation_smoothness_mm"] == DEFAULT_SMOOTHNESS_MM
    assert read_class_names(out)[2] == "left_ventricle"
    # case 3 alone, by the API, is the file written by the CLI
    again = write_template_phantom_dataset(tmp_path / "E", [first, second], 1, seed=4, first_index=3)
    assert np.array_equal(load_volume(again[0] / "s0003-label.nii.gz").data, labels[2].data)


@pytest.mark.parametrize("problem", ["missing", "not_nifti", "bad_labels", "negative_amplitude", "zero_smoothness",
                                     "deformation_without_template"])
def test_cli_bad_input_is_one_line(tmp_path, capsys, problem):
    template = tmp_path / "t.nii.gz"
    args = ["phantom", "--out", str(tmp_path / "D"), "--cases", "1"]
    if problem == "missing":
        args += ["--template", str(tmp_path / "nope.nii.gz")]
    elif problem == "not_nifti":
        (tmp_path / "t.txt").write_text("labels")
        args += ["--template", str(tmp_path / "t.txt")]
    elif problem == "bad_labels":
        small = np.zeros((8, 8, 8), np.uint8)
        small[2:5, 2:5, 2:5] = 9
        save_volume(template, small, np.eye(4), dtype=np.uint8)
        args += ["--template", str(template)]
    else:
        save_volume(template, np.ones((4, 4, 4), np.uint8), np.eye(4), dtype=np.uint8)
        args += {"negative_amplitude": ["--template", str(template), "--deformation_mm", "-1"],
                 "zero_smoothness": ["--template", str(template), "--smoothness_mm", "0"],
                 "deformation_without_template": ["--deformation_mm", "3"]}[problem]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not (tmp_path / "D" / "s0001").exists()


def test_a_template_numbered_otherwise_is_renumbered_by_labels(tmp_path):
    template = make_template()
    own = np.zeros_like(template.data)
    own[template.data == LV], own[template.data == MYO], own[template.data == LA] = 1, 2, 3  # biv-me-like numbering
    path = tmp_path / "own-labels.nii.gz"
    save_volume(path, own, template.affine, dtype=np.uint8)
    out = tmp_path / "D"
    assert main(["phantom", "--template", str(path), "--labels", "1:2,2:5", "--cases", "1", "--out", str(out)]) == 0
    label = load_volume(out / "s0001" / "s0001-label.nii.gz").data
    assert set(np.unique(label).tolist()) == {0, 2, 5}  # 3 was not named: background
    assert json.loads((out / "classes.json").read_text())["template_label_map"] == {"1": 2, "2": 5}
