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



@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_get_the_permissions_of_a_plain_open_under_the_umask(tmp_path, umask, expected):
    """mkstemp makes 0600 files; a rename keeps that, and colleagues could not read caches,
    checkpoints or figures on a shared server."""
    import os

    import torch

    from sam3d_med.io.atomic import atomic_path, atomic_save_npz, atomic_write_json, current_umask
    from sam3d_med.io.nifti import save_volume

    previous = os.umask(umask)
    try:
        assert current_umask() == umask
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        atomic_save_npz(tmp_path / "b.npz", x=np.zeros(3))
        with atomic_path(tmp_path / "c.pt") as tmp:
            torch.save({"x": 1}, tmp)
        save_volume(tmp_path / "d.nii.gz", np.zeros((4, 4, 4), np.int16), np.eye(4))
        with open(tmp_path / "plain.txt", "w") as fh:
            fh.write("x")
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {name: expected for name in ("a.json", "b.npz", "c.pt", "d.nii.gz", "plain.txt")}
