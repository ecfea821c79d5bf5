"""Atomic file writes: write to a temporary file in the target folder, then rename over the target.

A reader (or a resumed run) therefore sees either the old file or the complete new one, never a
half-written file. Temporary files carry the marker ``TMP_MARKER`` in their name so that leftovers of
a killed run can be found and removed (``remove_stale_temporaries``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .npz import npy_bytes, npz_bytes

TMP_MARKER = ".tmp-sam3d-"


def current_umask() -> int:
    """The process's umask. Linux reports it in /proc (read without changing it); elsewhere it is
    set and restored, which is only racy against threads creating files at that instant."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temporary_beside(target: Path, suffix: str | None) -> tuple[int, Path]:
    """A new temporary file beside ``target`` with the permissions a plain ``open()`` would give
    the target under the current umask (``mkstemp`` makes it 0600, which the rename would keep:
    colleagues on a shared server could not read caches, checkpoints or figures)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(target.suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}{TMP_MARKER}", suffix=suffix, dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    except BaseException:
        os.close(fd)
        Path(tmp_name).unlink(missing_ok=True)
        raise
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
    atomic_write_bytes(target, npy_bytes(array))


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
