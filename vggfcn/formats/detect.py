"""Which format a file holds, decided by its first bytes, never by its name."""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass

from ..errors import FormatError

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
#: The first bytes of every .npy file (numpy `lib/format.py`, MAGIC_PREFIX).
NPY_MAGIC = b"\x93NUMPY"
LFS_POINTER = b"version https://git-lfs"
#: How every ONNX file vggfcn writes begins (`onnx_file`): ModelProto's `ir_version` (key 0x08,
#: a one-byte varint), then `producer_name` "vggfcn" (key 0x12, length 6). No safetensors
#: (bytes 4..7 of its length are 0), HDF5, zip or npy file starts so, nor another producer's ONNX
#: model or a caffemodel (whose field 1 is a string, key 0x0a).
ONNX_HEAD = re.compile(rb"\x08[\x01-\x7f]\x12\x06vggfcn")
#: The safetensors library refuses headers above 100 MB; so do we.
SAFETENSORS_MAX_HEADER = 100_000_000


@dataclass(frozen=True)
class Probe:
    """What detection looks at: a file's first bytes and its size."""

    path: str
    head: bytes
    size: int


def probe(path: str) -> Probe:
    """The first 64 bytes and size of a file that exists and is not empty.

    Raises:
        FormatError: missing, a directory, unreadable, empty, or a Git LFS pointer.
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
    if head.startswith(LFS_POINTER):
        raise FormatError(
            f"{path}: is a Git LFS pointer, not the checkpoint itself (run 'git lfs pull')"
        )
    return Probe(path, head, size)


def is_hdf5(p: Probe) -> bool:
    return p.head.startswith(HDF5_MAGIC)


def is_zip(p: Probe) -> bool:
    return p.head.startswith(ZIP_MAGIC)


def is_npy(p: Probe) -> bool:
    return p.head.startswith(NPY_MAGIC)


def is_safetensors(p: Probe) -> bool:
    """An 8-byte little-endian header length that fits the file, then a JSON object."""
    if len(p.head) < 9:
        return False
    (n,) = struct.unpack("<Q", p.head[:8])
    return n <= min(SAFETENSORS_MAX_HEADER, p.size - 8) and p.head[8:9] == b"{"


def is_onnx(p: Probe) -> bool:
    """An ONNX model written by vggfcn (we read back only our own; see `ONNX_HEAD`)."""
    return ONNX_HEAD.match(p.head) is not None
