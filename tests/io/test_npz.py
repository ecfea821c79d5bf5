import io
import zipfile

import numpy as np
import pytest

from sam3d_med.errors import InputError
from sam3d_med.io.npz import npy_bytes, npz_bytes, read_npz


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


def test_read_npz_names_the_file_when_it_is_missing_corrupt_or_incomplete(tmp_path):
    good = tmp_path / "good.npz"
    good.write_bytes(npz_bytes({"a": np.arange(4)}))
    assert read_npz(good, ("a",))["a"].tolist() == [0, 1, 2, 3]
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:40])
    for path in (tmp_path / "missing.npz", truncated):
        with pytest.raises(InputError, match=f"{path.name}: unreadable slice file"):
            read_npz(path, ("a",), "slice file")
    with pytest.raises(InputError, match="good.npz: unreadable slice file \\(KeyError\\)"):
        read_npz(good, ("a", "pointmap"), "slice file")
