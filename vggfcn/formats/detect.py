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
#: How an ONNX model begins: ModelProto's `ir_version` (key 0x08, a one-byte varint: IR versions
#: are small), then another of its fields — producer_name 0x12, producer_version 0x1a, domain
#: 0x22, model_version 0x28, doc_string 0x32, graph 0x3a, opset_import 0x42 — as every
#: serialiser writes fields in number order. No HDF5, zip or npy file starts so, nor a
#: caffemodel (whose field 1 is a string, key 0x0a); safetensors files are told first.
ONNX_HEAD = re.compile(rb"\x08[\x01-\x7f][\x12\x1a\x22\x28\x32\x3a\x42]")
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
        raise FormatError(
            f"{path}: is a directory, expected a checkpoint file (or a KerasHub preset: its "
            "task.json, config.json, metadata.json and weights)"
        )
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
    """An ONNX model, whoever wrote it (see `ONNX_HEAD`)."""
    return ONNX_HEAD.match(p.head) is not None


#: The first keys a Caffe NetParameter field may follow the net's name (or first input) with.
_NET_KEYS = frozenset(b"\x12\x1a\x20\x22\x28\x32\x38\x42\xa2")
#: Keys a Caffe layer starts with as Caffe writes it (fields in number order): all strings.
_V1_FIRST, _V2_FIRST = frozenset(b"\x12\x1a\x22"), frozenset(b"\x0a\x12\x1a\x22")


def is_caffemodel(probe: Probe) -> bool:
    """A NetParameter as Caffe writes it (fields in number order; caffemodels have no magic).

    It starts with the net's name or first input (key 0x0a or 0x1a, a 1..127-byte printable
    string) followed by another NetParameter key, or with its first layer (V1 key 0x12 or
    current 0xa2 0x06, a length that fits the file) whose first field is a printable string.
    HDF5 (0x89), zip (0x50), npy (0x93) and our ONNX files (0x08) start with other bytes; a
    safetensors header length below 100 MB has zero bytes 4..7 and a byte 3 below 6, which
    neither a string starting by byte 4 nor a key at byte 3 or 4 can be.
    """
    head = probe.head
    if head[:1] in (b"\x0a", b"\x1a"):
        end = _text(head, 1)
        return end is not None and (end >= len(head) or head[end] in _NET_KEYS)
    for key, first in ((b"\x12", _V1_FIRST), (b"\xa2\x06", _V2_FIRST)):
        if head.startswith(key):
            length, at = _head_varint(head, len(key))
            return (
                at < len(head)
                and length <= probe.size - at
                and head[at] in first
                and _text(head, at + 1) is not None
            )
    return False


def _text(head: bytes, pos: int) -> int | None:
    """The end of a printable string of 1..127 bytes whose length byte is at `pos` (checked as
    far as the head shows), or None."""
    if pos >= len(head) or not 0 < head[pos] < 0x80:
        return None
    end = pos + 1 + head[pos]
    return end if all(0x20 <= b < 0x7F for b in head[pos + 1 : end]) else None


def _head_varint(head: bytes, pos: int) -> tuple[int, int]:
    """(value, end) of a varint of at most 5 bytes at `pos`; end is len(head) if there is none."""
    value = 0
    for i, at in enumerate(range(pos, min(pos + 5, len(head)))):
        value |= (head[at] & 0x7F) << 7 * i
        if head[at] < 0x80:
            return value, at + 1
    return 0, len(head)
