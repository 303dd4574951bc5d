"""Which format a file holds, decided by its first bytes, never by its name."""

from __future__ import annotations

import os
import struct

from ..errors import FormatError

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
NPY_MAGIC = b"\x93NUMPY"
LFS_POINTER = b"version https://git-lfs"
#: The safetensors library refuses headers above 100 MB; so do we.
SAFETENSORS_MAX_HEADER = 100_000_000


def sniff(path: str) -> str:
    """Return "hdf5", "safetensors", "zip" or "npy" for a checkpoint file.

    Raises:
        FormatError: missing, a directory, empty, a Git LFS pointer, or an unknown format.
    """
    if not os.path.exists(path):
        raise FormatError(f"{path}: no such file")
    if os.path.isdir(path):
        raise FormatError(f"{path}: is a directory, expected a checkpoint file")
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise FormatError(f"{path}: cannot read ({e.strerror})") from None
    if not head:
        raise FormatError(f"{path}: empty file, expected a checkpoint")
    if head.startswith(HDF5_MAGIC):
        return "hdf5"
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(LFS_POINTER):
        raise FormatError(
            f"{path}: is a Git LFS pointer, not the checkpoint itself (run 'git lfs pull')"
        )
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if n <= min(SAFETENSORS_MAX_HEADER, size - 8) and head[8:9] == b"{":
            return "safetensors"
    raise FormatError(
        f"{path}: unknown format (first bytes {head[:8]!r}); expected Keras HDF5, safetensors, "
        "a PyTorch zip checkpoint (.pth) or a tensorflow-vgg .npy"
    )
