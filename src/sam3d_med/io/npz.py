"""``.npz``/``.npy`` bytes in memory (so they can be written atomically) and reading ``.npz`` files.

``npz_bytes`` writes what ``np.savez`` writes (``np.load`` reads it), with a per-member choice of
deflate compression and reproducible bytes; ``read_npz`` reads named arrays with one clear error.
"""

from __future__ import annotations

import io
import os
import zipfile
from typing import Any, Collection, Mapping

import numpy as np

from ..errors import InputError


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


def read_npz(path: str | os.PathLike, keys: Collection[str], what: str = "file") -> dict[str, np.ndarray]:
    """The arrays ``keys`` of an ``.npz`` file, each decompressed once (every ``npz[key]`` access
    would decompress again). A missing, corrupt or incomplete file raises InputError naming the
    file and ``what`` it should be ("slice file", ...)."""
    try:
        with np.load(path) as npz:
            return {key: npz[key] for key in keys}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: unreadable {what} ({type(exc).__name__})") from None
