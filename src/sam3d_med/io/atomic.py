"""Atomic file writes: write to a temporary file in the target folder, then rename over the target.

A reader (or a resumed run) therefore sees either the old file or the complete new one, never a
half-written file. Temporary files carry the marker ``TMP_MARKER`` in their name so that leftovers of
a killed run can be found and removed (``remove_stale_temporaries``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Collection, Iterator, Mapping

import numpy as np

TMP_MARKER = ".tmp-sam3d-"


def _temporary_beside(target: Path, suffix: str | None) -> tuple[int, Path]:
    target.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(target.suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}{TMP_MARKER}", suffix=suffix, dir=target.parent)
    return fd, Path(tmp_name)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it to ``target``.

    ``suffix`` defaults to the target's full suffix (".nii.gz", ".npz"...) because some writers
    (nibabel, numpy) choose the format from the file name. On an exception the temporary file is
    removed and the target is left untouched.
    """
    fd, tmp = _temporary_beside(Path(target), suffix)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``target`` and rename it over ``target``.

    No fsync: the rename already protects against an interrupted *process* (Ctrl-C, kill), which is
    what resumable steps need; fsync per slice file would dominate preprocessing time. The bytes go
    through the descriptor ``mkstemp`` returned (opening the file a second time cost as much again).
    """
    fd, tmp = _temporary_beside(Path(target), None)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    atomic_write_text(target, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def atomic_save_npy(target: str | os.PathLike, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(target, buf.getvalue())


def npy_bytes(array: Any) -> bytes:
    """The bytes of a ``.npy`` file of ``array`` (what ``np.save`` writes; no pickled objects)."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asanyarray(array), allow_pickle=False)
    return buf.getvalue()


# Fixed member time stamp: the same arrays always give the same bytes (re-runs are reproducible).
_NPZ_MEMBER_TIME = (1980, 1, 1, 0, 0, 0)


def npz_bytes(arrays: Mapping[str, Any], deflate: Collection[str] | bool = (), level: int = 1) -> bytes:
    """The bytes of an ``.npz`` archive of ``arrays``, as ``np.savez`` writes it (``np.load`` reads it).

    A value is an array or scalar, or the ready ``npy_bytes`` of one (a caller writing many archives
    that share a member encodes it once). ``deflate`` names the members stored zlib-compressed at
    ``level`` (``True``: all, as ``np.savez_compressed``); the others are stored as they are. Per-member
    choice matters for the slice cache: a pointmap (a smooth function of the pixel index) shrinks
    ~70x at level 1 for little CPU, while a noisy CT image shrinks only ~3x at four times the cost.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", allowZip64=True) as archive:
        for key, value in arrays.items():
            member = zipfile.ZipInfo(f"{key}.npy", date_time=_NPZ_MEMBER_TIME)
            packed = deflate is True or (deflate is not False and key in deflate)
            member.compress_type = zipfile.ZIP_DEFLATED if packed else zipfile.ZIP_STORED
            data = value if isinstance(value, bytes) else npy_bytes(value)
            archive.writestr(member, data, compresslevel=level if packed else None)
    return buf.getvalue()


def atomic_save_npz(target: str | os.PathLike, compressed: bool = False, **arrays: Any) -> None:
    """``np.savez`` (or ``np.savez_compressed``, zlib level 6) to ``target``, atomically.

    Built in memory, then one write: measured ~25 % faster than numpy writing into the file."""
    atomic_write_bytes(target, npz_bytes(arrays, deflate=compressed, level=6))


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete temporaries left by an interrupted run under ``folder``; return how many."""
    count = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for path in folder.rglob(f"*{TMP_MARKER}*"):
        if path.is_file():
            path.unlink(missing_ok=True)
            count += 1
    return count
