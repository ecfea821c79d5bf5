import numpy as np
import pytest

import io
import zipfile

from sam3d_med.io.atomic import (TMP_MARKER, atomic_path, atomic_save_npz, atomic_write_bytes,
                                 atomic_write_json, npy_bytes, npz_bytes, remove_stale_temporaries)


def test_write_replaces_target_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write_json(target, {"x": 1})
    atomic_write_json(target, {"x": 2})
    assert target.read_text().strip().replace(" ", "").replace("\n", "") == '{"x":2}'
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_failed_write_keeps_old_file_and_removes_temporary(tmp_path):
    target = tmp_path / "a.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_npz_round_trip_and_stale_temporaries(tmp_path):
    atomic_save_npz(tmp_path / "x.npz", a=np.arange(3), s=np.str_("hi"))
    with np.load(tmp_path / "x.npz") as data:
        assert data["a"].tolist() == [0, 1, 2] and str(data["s"]) == "hi"
    (tmp_path / f".y.npz{TMP_MARKER}abc.npz").write_bytes(b"partial")
    assert remove_stale_temporaries(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npz"]


def test_npz_bytes_reads_back_with_chosen_members_deflated():
    ramp = np.broadcast_to(np.arange(64, dtype=np.float32), (3, 64, 64))[:, ::2]  # strided view
    noise = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    arrays = {"image": noise, "pointmap": ramp, "path": npy_bytes(np.str_("s0001_sdf.npy")), "idx": np.int64(7)}
    data = npz_bytes(arrays, deflate=("pointmap",))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        kinds = {m.filename: m.compress_type for m in archive.infolist()}
    assert kinds == {"image.npy": zipfile.ZIP_STORED, "pointmap.npy": zipfile.ZIP_DEFLATED,
                     "path.npy": zipfile.ZIP_STORED, "idx.npy": zipfile.ZIP_STORED}
    with np.load(io.BytesIO(data)) as loaded:
        np.testing.assert_array_equal(loaded["image"], noise)
        np.testing.assert_array_equal(loaded["pointmap"], ramp)
        assert loaded["pointmap"].dtype == np.float32 and loaded["pointmap"].shape == (3, 32, 64)
        assert str(loaded["path"]) == "s0001_sdf.npy" and int(loaded["idx"]) == 7
    assert npz_bytes(arrays, deflate=("pointmap",)) == data  # reproducible bytes
    assert len(data) < len(npz_bytes(arrays)) - ramp.nbytes // 2  # the ramp shrank
    with zipfile.ZipFile(io.BytesIO(npz_bytes(arrays, deflate=True))) as archive:
        assert {m.compress_type for m in archive.infolist()} == {zipfile.ZIP_DEFLATED}
