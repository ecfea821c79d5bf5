import numpy as np
import pytest

from sam3d_med.io.atomic import (TMP_MARKER, atomic_path, atomic_save_npz, atomic_write_bytes,
                                 atomic_write_json, remove_stale_temporaries)


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

