import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import trimesh
from nibabel.testing import data_path

from sam3d_med.data.geometry import take_slice
from sam3d_med.data.phantom import write_phantom_dataset
from sam3d_med.data.preprocess import MANIFEST_NAME, PreprocessOptions, run_preprocess, slice_file_name
from sam3d_med.io.atomic import TMP_MARKER
from sam3d_med.io.nifti import load_volume, save_volume

REPO = Path(__file__).resolve().parents[2]
QUIET = dict(progress=False, log=lambda m: None)


def manifest(out):
    return json.loads((Path(out) / MANIFEST_NAME).read_text())


def test_slice_files_follow_the_contract(cache_dir, phantom_dir):
    m = manifest(cache_dir)
    assert [c["case_id"] for c in m["cases"]] == ["s0001", "s0002", "s0003"]
    assert m["class_names"]["5"] == "myocardium" and m["spacing_mm"] == 3.0
    case = m["cases"][0]
    label = load_volume(phantom_dir / "s0001" / "s0001-label.nii.gz")  # canonical RAS+
    np.testing.assert_allclose(case["affine"], label.affine)
    assert {s["axis"] for s in case["slices"]} == {0, 1, 2}
    for entry in case["slices"][::7]:
        with np.load(cache_dir / entry["file"]) as npz:
            axis, idx = int(npz["axis"]), int(npz["slice_idx"])
            assert entry["file"] == slice_file_name("s0001", axis, idx) and (axis, idx) == (entry["axis"], entry["slice_idx"])
            assert npz["image"].dtype == np.float32 and npz["image"].shape[0] == 3
            assert 0.0 <= npz["image"].min() and npz["image"].max() <= 1.0
            assert npz["mask"].dtype == np.uint8 and npz["mask"].shape == npz["image"].shape[1:]
            assert np.array_equal(npz["mask"], take_slice(label.data, axis, idx))
            assert npz["pointmap"].dtype == np.float32 and npz["affine"].dtype == np.float64
            assert str(npz["gt_sdf_path"]) == "s0001_sdf.npy"
            # pointmap[:, h, w] == affine @ [i, j, k, 1] of that pixel's voxel (float32 rounding)
            h, w = np.indices(npz["mask"].shape)
            ijk = [None, None, None]
            others = [a for a in range(3) if a != axis]
            ijk[axis], ijk[others[0]], ijk[others[1]] = np.full_like(h, idx), h, w
            expected = np.einsum("ab,bhw->ahw", npz["affine"][:3, :3], np.stack(ijk).astype(float))
            expected += npz["affine"][:3, 3, None, None]
            np.testing.assert_allclose(npz["pointmap"], expected, atol=1e-3)
            counts = np.bincount(npz["mask"].ravel(), minlength=6)
            assert entry["class_pixel_counts"] == {str(c): int(counts[c]) for c in range(1, 6) if counts[c]}
    # every slice with foreground is there, none without
    per_axis = [sum(1 for s in case["slices"] if s["axis"] == a) for a in range(3)]
    assert per_axis == [int(np.any(label.data > 0, axis=tuple(b for b in range(3) if b != a)).sum()) for a in range(3)]


def test_sdf_and_meshes(cache_dir, phantom_dir):
    label = load_volume(phantom_dir / "s0002" / "s0002-label.nii.gz")
    sdf = np.load(cache_dir / "s0002_sdf.npy")
    assert sdf.shape == (5, 64, 64, 64) and sdf.dtype == np.float32
    for c in range(1, 6):
        assert np.array_equal(sdf[c - 1] < 0, label.data == c)
        mesh = trimesh.load(cache_dir / "meshes" / f"s0002_class{c}.obj", process=False)
        assert mesh.is_watertight and mesh.volume > 0
        voxel_mm3 = (label.data == c).sum() * 27.0
        assert mesh.volume == pytest.approx(voxel_mm3, rel=0.05)
        # in world mm: the mesh centroid sits at the class's world centroid
        centroid = label.affine[:3, :3] @ np.argwhere(label.data == c).mean(0) + label.affine[:3, 3]
        assert np.linalg.norm(mesh.center_mass - centroid) < 3.0


def test_rerun_is_idempotent_and_overwrite_redoes(phantom_dir, tmp_path):
    options = PreprocessOptions(axes=(2,))
    first = run_preprocess(phantom_dir, tmp_path, options, **QUIET)
    files = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file() and p.name != MANIFEST_NAME}
    body = (tmp_path / MANIFEST_NAME).read_text()
    second = run_preprocess(phantom_dir, tmp_path, options, **QUIET)
    assert second.reused == first.processed and not second.processed
    assert files == {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file() and p.name != MANIFEST_NAME}
    assert (tmp_path / MANIFEST_NAME).read_text() == body
    third = run_preprocess(phantom_dir, tmp_path, options, overwrite=True, **QUIET)
    assert third.processed == first.processed
    # other options: finished cases are redone and old slice files of other axes removed
    run_preprocess(phantom_dir, tmp_path, PreprocessOptions(axes=(0,)), **QUIET)
    assert not list(tmp_path.glob("*_axis2_*")) and list(tmp_path.glob("*_axis0_*"))


def test_interrupted_run_resumes(phantom_dir, tmp_path):
    options = PreprocessOptions(axes=(1,))
    run_preprocess(phantom_dir, tmp_path, options, **QUIET)
    # simulate a kill during case s0002: its record missing, a half-written temporary left behind
    (tmp_path / "case_records" / "s0002.json").unlink()
    next(tmp_path.glob("s0002*.npz")).unlink()
    (tmp_path / f".s0002.nii_axis1_slice0030.npz{TMP_MARKER}x.npz").write_bytes(b"half")
    summary = run_preprocess(phantom_dir, tmp_path, options, **QUIET)
    assert summary.processed == ["s0002"] and sorted(summary.reused) == ["s0001", "s0003"]
    assert not list(tmp_path.rglob(f"*{TMP_MARKER}*"))
    assert len(manifest(tmp_path)["cases"]) == 3


def test_parallel_workers_give_the_same_cache(phantom_dir, tmp_path):
    options = PreprocessOptions(axes=(0,))
    run_preprocess(phantom_dir, tmp_path / "one", options, workers=1, **QUIET)
    run_preprocess(phantom_dir, tmp_path / "two", options, workers=2, **QUIET)
    names = sorted(p.name for p in (tmp_path / "one").glob("*.npz"))
    assert names == sorted(p.name for p in (tmp_path / "two").glob("*.npz"))
    for name in names[::10]:
        with np.load(tmp_path / "one" / name) as a, np.load(tmp_path / "two" / name) as b:
            assert all(np.array_equal(a[k], b[k]) for k in a.files)
    assert manifest(tmp_path / "one")["cases"] == manifest(tmp_path / "two")["cases"]


def test_non_ras_oblique_and_anisotropic_input_is_reoriented_and_resampled(tmp_path):
    """An oblique LPS case at 1.5 mm: the cache is on the 3 mm RAS-canonical grid, same anatomy."""
    src = tmp_path / "src"
    write_phantom_dataset(src, 1, seed=4, axcodes="LPS", oblique_deg=25)
    # read into memory now: the files are overwritten below
    lab = nib.Nifti1Image(np.asarray(nib.load(src / "s0001" / "s0001-label.nii.gz").dataobj),
                          nib.load(src / "s0001" / "s0001-label.nii.gz").affine)
    img = nib.Nifti1Image(np.asarray(nib.load(src / "s0001" / "s0001-image.nii.gz").dataobj), lab.affine)
    fine_affine = lab.affine @ np.diag([0.5, 0.5, 0.5, 1.0])
    fine_affine[:3, 3] = lab.affine[:3, :3] @ np.full(3, -0.25) + lab.affine[:3, 3]  # same field of view
    up = lambda a: np.repeat(np.repeat(np.repeat(np.asarray(a.dataobj), 2, 0), 2, 1), 2, 2)  # noqa: E731
    save_volume(src / "s0001" / "s0001-label.nii.gz", up(lab), fine_affine, dtype=np.uint8)
    save_volume(src / "s0001" / "s0001-image.nii.gz", up(img), fine_affine, dtype=np.int16)
    out = tmp_path / "out"
    assert run_preprocess(src, out, PreprocessOptions(axes=(2,)), **QUIET).ok
    case = manifest(out)["cases"][0]
    assert case["shape_ijk"] == [64, 64, 64] and np.allclose(case["spacing_mm"], 3.0)
    assert nib.aff2axcodes(np.array(case["affine"])) == ("R", "A", "S")
    # the canonical 3 mm grid is the original 3 mm grid reoriented: labels agree voxel for voxel
    original = nib.as_closest_canonical(lab)
    np.testing.assert_allclose(case["affine"], original.affine, atol=1e-6)
    sdf = np.load(out / case["sdf_path"])
    agree = np.mean((sdf[1] < 0) == (np.asarray(original.dataobj) == 2))
    assert agree == 1.0


def test_real_nibabel_file_lands_on_its_affine(tmp_path):
    """nibabel's anatomical.nii (LAS, 2x2x2.2 mm) with a thresholded label, resampled to 2 mm."""
    img = nib.load(os.path.join(data_path, "anatomical.nii"))
    data = np.asarray(img.dataobj)
    case = tmp_path / "src" / "anat"
    save_volume(case / "anat-image.nii.gz", data, img.affine, dtype=np.int16)
    save_volume(case / "anat-label.nii.gz", (data > np.percentile(data, 80)).astype(np.uint8), img.affine)
    out = tmp_path / "out"
    assert run_preprocess(tmp_path / "src", out, PreprocessOptions(classes=1, spacing_mm=2.0, axes=(0,),
                          class_names={1: "bright"}), **QUIET).ok
    entry = manifest(out)["cases"][0]["slices"][3]
    with np.load(out / entry["file"]) as npz:
        i = int(npz["slice_idx"])
        corner = npz["affine"] @ np.array([i, 0, 0, 1.0])
        np.testing.assert_allclose(npz["pointmap"][:, 0, 0], corner[:3], atol=1e-3)
        # the canonical first voxel corner is a corner of the original field of view
        fov_corners = [img.affine @ np.array([*c, 1.0]) for c in
                       np.array(np.meshgrid(*[[-0.5, n - 0.5] for n in data.shape])).reshape(3, -1).T]
        canon_corner = npz["affine"] @ np.array([-0.5, -0.5, -0.5, 1.0])
        assert min(np.linalg.norm(c[:3] - canon_corner[:3]) for c in fov_corners) < 1e-6


def _bad_cases(root: Path):
    """One good case and one case per kind of bad input; returns {case id: expected message part}."""
    write_phantom_dataset(root, 1, seed=1)
    good_img = nib.load(root / "s0001" / "s0001-image.nii.gz")
    good_lab = nib.load(root / "s0001" / "s0001-label.nii.gz")
    img_data, lab_data, aff = np.asarray(good_img.dataobj), np.asarray(good_lab.dataobj), good_img.affine

    def case(name, image=img_data, label=lab_data, label_affine=aff):
        folder = root / name
        folder.mkdir()
        if image is not None:
            nib.save(nib.Nifti1Image(image, aff), folder / f"{name}-image.nii.gz")
        if label is not None:
            nib.save(nib.Nifti1Image(label, label_affine), folder / f"{name}-label.nii.gz")
        return folder

    expected = {}
    case("s0101", label=None)
    expected["s0101"] = "label file s0101-label.nii.gz is missing"
    case("s0102", label=lab_data[:, :, :60])
    expected["s0102"] = "does not match the image grid"
    shifted = aff.copy()
    shifted[0, 3] += 3.0
    case("s0103", label_affine=shifted)
    expected["s0103"] = "does not match the image grid"
    case("s0104", image=np.stack([img_data, img_data], axis=-1))
    expected["s0104"] = "must be 3-D, got 4-D"
    case("s0105", image=img_data[:, :, 0])
    expected["s0105"] = "must be 3-D, got 2-D"
    nan_img = img_data.astype(np.float32)
    nan_img[3, 3, 3] = np.inf
    case("s0106", image=nan_img)
    expected["s0106"] = "non-finite"
    bad_labels = lab_data.copy()
    bad_labels[5, 5, 5] = 9
    case("s0107", label=bad_labels)
    expected["s0107"] = "label values outside 0..5: [9]"
    folder = case("s0108", label=None)
    (folder / "s0108-label.nii.gz").write_bytes(b"\x1f\x8b garbage")
    expected["s0108"] = "cannot read label"
    return expected


def test_each_bad_input_is_one_error_line_and_nothing_written(tmp_path):
    expected = _bad_cases(tmp_path / "src")
    messages = []
    summary = run_preprocess(tmp_path / "src", tmp_path / "out", PreprocessOptions(extract_mesh=True),
                             progress=False, log=messages.append)
    assert summary.processed == ["s0001"] and not summary.ok
    assert sorted(summary.failed) == sorted(expected)
    for case_id, part in expected.items():
        assert part in summary.failed[case_id] and "\n" not in summary.failed[case_id]
        assert not [p for p in (tmp_path / "out").rglob(f"{case_id}*")], case_id
    assert [c["case_id"] for c in manifest(tmp_path / "out")["cases"]] == ["s0001"]


def run_script(*args, cwd):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.e2e
def test_tutorial_command_end_to_end(tmp_path):
    """Tutorial step 2, exactly as written, on phantom data made by the CLI; then bad input."""
    made = run_script("-m", "sam3d_med.cli", "phantom", "--out", "raw", "--cases", "2", "--seed", "3", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    cmd = [str(REPO / "scripts" / "reprocess_ts_nifti.py"), "--original_nifti_dir", "raw", "--out",
           "dataset/ts_processed", "--classes", "5", "--extract_mesh", "--spacing", "3.0"]
    done = run_script(*cmd, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    cache = tmp_path / "dataset" / "ts_processed"
    assert (cache / "s0001.nii_axis0_slice0032.npz").is_file() or list(cache.glob("s0001.nii_axis0_slice*.npz"))
    assert (cache / "meshes" / "s0002_class5.obj").is_file()
    assert "already done 0" in done.stdout
    again = run_script(*cmd, cwd=tmp_path)
    assert again.returncode == 0 and "already done 2" in again.stdout
    # bad input: a case without its label -> one line naming the file, exit status non-zero
    shutil.copytree(tmp_path / "raw" / "s0001", tmp_path / "raw" / "s0009")
    for p in (tmp_path / "raw" / "s0009").iterdir():
        p.rename(p.with_name(p.name.replace("s0001", "s0009")))
    (tmp_path / "raw" / "s0009" / "s0009-label.nii.gz").unlink()
    bad = run_script(*cmd, cwd=tmp_path)
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr
    assert "error: " in bad.stderr and "s0009-label.nii.gz is missing" in bad.stderr
    assert "1 cases skipped because of bad input: s0009" in bad.stderr
    missing = run_script(*cmd[:2], "no_such_dir", *cmd[3:], cwd=tmp_path)
    assert missing.returncode == 1 and missing.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in missing.stderr


def test_ctrl_c_stops_the_worker_pool_promptly_and_keeps_only_whole_cases(tmp_path):
    """SIGINT to the process group (what Ctrl-C does) at the 2nd finished case of 16, 2 workers: the
    queue is cancelled, the running cases finish, nothing partial is left (was: all 16 were done)."""
    import signal
    import time

    write_phantom_dataset(tmp_path / "raw", 16, seed=5)
    cmd = [sys.executable, str(REPO / "scripts" / "reprocess_ts_nifti.py"), "--original_nifti_dir", "raw", "--out",
           "cache", "--classes", "5", "--workers", "2"]
    # SIGINT's default disposition in the child whatever this process has (a job started with & in a
    # non-interactive shell ignores SIGINT, and Python then never raises KeyboardInterrupt)
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    records = tmp_path / "cache" / "case_records"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(records.glob("*.json")) if records.is_dir() else []) < 2:
        time.sleep(0.05)
    at_signal = len(list(records.glob("*.json")))
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr, stderr[-2000:]
    done = {p.stem for p in records.glob("*.json")}
    assert at_signal <= len(done) <= at_signal + 3  # the two running cases finish (+1: polling)
    started = {p.name.split(".")[0] for p in (tmp_path / "cache").glob("s*.npz")}
    assert started <= done  # every case with files is whole (its record is written last)
    assert not list((tmp_path / "cache").rglob(f"*{TMP_MARKER}*"))
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and f"already done {len(done)}" in again.stdout


def test_warnings_for_non_ct_intensities_and_a_class_that_never_occurs(tmp_path, capsys):
    write_phantom_dataset(tmp_path / "raw", 2, seed=4)
    for case in ("s0001", "s0002"):
        label_path = tmp_path / "raw" / case / f"{case}-label.nii.gz"
        label = nib.load(label_path)
        data = np.asarray(label.dataobj)
        data[data == 4] = 0  # no right ventricle anywhere
        save_volume(label_path, data, label.affine, dtype=np.uint8)
    image_path = tmp_path / "raw" / "s0002" / "s0002-image.nii.gz"
    image = nib.load(image_path)
    hu = np.asarray(image.dataobj).astype(np.float32)
    save_volume(image_path, (hu - hu.min()) / (hu.max() - hu.min()), image.affine, dtype=np.float32)  # normalised
    messages = []
    summary = run_preprocess(tmp_path / "raw", tmp_path / "cache", PreprocessOptions(axes=(2,)), progress=False,
                             log=messages.append)
    assert summary.ok
    stderr = capsys.readouterr().err
    assert stderr.count("intensities do not look like CT in Hounsfield units") == 1 and "s0002-image" in stderr
    assert any(m == "warning: class 4 (right_ventricle) occurs in none of the 2 cases: check --classes and the "
                    "label values" for m in messages)


@pytest.mark.parametrize("crop", [None, 64])
def test_a_label_is_taken_by_the_one_grid_rule(tmp_path, crop):
    """With and without --crop: a label stored in the other voxel order with a header keeping every voxel
    in place gives the same cache as the original; a header that mirrors it in the world (LPS with the
    image's origin, 189 mm away) is refused with what differs in mm and axes, nothing written."""
    write_phantom_dataset(tmp_path / "raw", 1, seed=2)  # LAS
    case = tmp_path / "raw" / "s0001"
    image = nib.load(case / "s0001-image.nii.gz")
    label = np.asarray(nib.load(case / "s0001-label.nii.gz").dataobj)
    affine = image.affine
    reordered, mirrored = affine.copy(), affine.copy()
    reordered[:3, 3] += affine[:3, 1] * (label.shape[1] - 1)
    reordered[:3, 1] *= -1
    mirrored[:3, 1] *= -1
    options = PreprocessOptions(axes=(2,), crop_size=crop)
    caches = {}
    for name, data, header in (("same", label, affine), ("reordered", label[:, ::-1, :], reordered),
                               ("mirrored", label, mirrored)):
        folder = tmp_path / name / "s0001"
        folder.mkdir(parents=True)
        shutil.copy(case / "s0001-image.nii.gz", folder)
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data), header), folder / "s0001-label.nii.gz")
        messages = []
        summary = run_preprocess(tmp_path / name, tmp_path / f"cache_{name}", options, workers=1, progress=False,
                                 log=messages.append)
        caches[name] = (summary, messages)
    assert caches["same"][0].ok and caches["reordered"][0].ok
    np.testing.assert_array_equal(np.load(tmp_path / "cache_same" / "s0001_sdf.npy"),
                                  np.load(tmp_path / "cache_reordered" / "s0001_sdf.npy"))
    summary, _ = caches["mirrored"]
    assert not summary.ok and not (tmp_path / "cache_mirrored" / "s0001_sdf.npy").exists()
    error = summary.failed["s0001"]
    assert "axes LPS vs LAS" in error and "centre shifted by [0.0, -189.0, 0.0] mm along R, A, S" in error


def test_a_case_rewritten_since_it_was_preprocessed_is_done_again(tmp_path):
    raw = tmp_path / "raw"
    write_phantom_dataset(raw, 2, seed=3)
    summary = run_preprocess(raw, tmp_path / "cache", PreprocessOptions(axes=(2,)), progress=False, log=lambda m: None)
    assert summary.ok and not summary.reused
    again = run_preprocess(raw, tmp_path / "cache", PreprocessOptions(axes=(2,)), progress=False, log=lambda m: None)
    assert sorted(again.reused) == ["s0001", "s0002"]
    label = raw / "s0002" / "s0002-label.nii.gz"
    stat = label.stat()
    os.utime(label, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the case's label written anew
    redone = run_preprocess(raw, tmp_path / "cache", PreprocessOptions(axes=(2,)), progress=False, log=lambda m: None)
    assert redone.reused == ["s0001"] and redone.ok
