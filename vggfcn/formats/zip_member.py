"""Zip members located and read safely: sizes vetted against the archive, data found in place.

Shared by the PyTorch `.pth` and Keras `.keras` readers. Both keep their weights *stored* (not
compressed), so a member's bytes can be mapped where they lie; what that needs is the start of
its data, after a local header whose name and extra field the central directory does not
describe (torch pads the extra field to align storages).
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from collections.abc import Callable

from ..errors import FormatError
from .pickle_scan import printable

#: A zip local file header; fields 10 and 11 are the name and extra-field lengths.
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
_LOCAL_SIGNATURE = b"PK\x03\x04"
#: What zipfile raises on a corrupt archive or member.
ZIP_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    OSError,
    EOFError,
    ValueError,
    struct.error,
    NotImplementedError,
    OverflowError,
)


def vetted_members(
    path: str, infos: list[zipfile.ZipInfo], size: int
) -> dict[str, zipfile.ZipInfo]:
    """Name -> entry, refusing duplicates and sizes the archive cannot hold (bomb, corruption).

    Only stored members are held to the archive's size here: a compressed one may inflate to
    more, and whoever reads it caps that (`read_member`).
    """
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        if info.filename in members:
            raise FormatError(
                f"{path}: member {printable(info.filename)} appears twice in the archive"
            )
        stored = info.compress_type == zipfile.ZIP_STORED
        declared = max(info.file_size, info.compress_size) if stored else info.compress_size
        if declared > size or info.header_offset + info.compress_size > size:
            raise FormatError(
                f"{path}: member {printable(info.filename)} declares {declared} bytes at offset "
                f"{info.header_offset}, beyond the archive's {size} bytes (corrupt or a zip bomb)"
            )
        members[info.filename] = info
    return members


def read_member(path: str, z: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """A small member's bytes, inflated if need be, refused when it would exceed `limit`.

    Raises:
        FormatError: too large, encrypted, an unknown compression, or corrupt.
    """
    name = printable(info.filename)
    if info.file_size > limit:
        raise FormatError(
            f"{path}: member {name} is {info.file_size} bytes, more than the {limit} it may hold"
        )
    if info.flag_bits & 0x1 or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise FormatError(f"{path}: member {name} is encrypted or oddly compressed")
    try:
        with z.open(info) as f:
            data = f.read(limit + 1)  # the declared size may lie: never inflate past the limit
    except ZIP_ERRORS as e:
        raise FormatError(
            f"{path}: member {name} cannot be read ({printable(str(e), 200)})"
        ) from None
    if len(data) > limit:
        raise FormatError(f"{path}: member {name} inflates past {limit} bytes; refused")
    return data


def data_start(
    path: str, info: zipfile.ZipInfo, read: Callable[[int, int], bytes], size: int
) -> int:
    """Where a member's bytes begin in the archive, after checking its local header.

    Args:
        read: `read(offset, count)` -> the archive's bytes there (a map or a file).
        size: the archive's size.
    Raises:
        FormatError: no local header there, a header naming another member, or data that runs
            past the end of the file.
    """
    at, name = info.header_offset, printable(info.filename)
    raw = read(at, _LOCAL_HEADER.size)
    if len(raw) < _LOCAL_HEADER.size or raw[:4] != _LOCAL_SIGNATURE:
        raise FormatError(f"{path}: member {name} has no local header at offset {at}")
    fields = _LOCAL_HEADER.unpack(raw)
    name_start = at + _LOCAL_HEADER.size
    local_name = read(name_start, fields[10])
    encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
    if local_name != info.orig_filename.encode(encoding, "replace"):
        raise FormatError(
            f"{path}: member {name}: local header names {local_name[:80]!r} (corrupt zip)"
        )
    start: int = name_start + fields[10] + fields[11]
    if start + info.compress_size > size:
        raise FormatError(f"{path}: member {name} runs past the end of the file (truncated)")
    return start
