"""Zip archives both ways: members located and read safely, and archives written front to back.

Reading is shared by the PyTorch `.pth` and Keras `.keras` readers: sizes are vetted against
the archive, and both formats keep their weights *stored* (not compressed), so a member's bytes
can be mapped where they lie; what that needs is the start of its data, after a local header
whose name and extra field the central directory does not describe (torch pads the extra field
to align storages). A compressed member is inflated in bounded memory (`inflate_to`).

Writing (`ZipWriter`, for our `.keras` output) makes what Python's zipfile makes for stored
members, deterministically: zip 2.0, made on Unix, no extra fields, no data descriptors, every
member dated 1980-01-01.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from collections.abc import Callable
from typing import IO, Any, BinaryIO

from ..errors import FormatError
from .pickle_scan import printable

#: A zip local file header (zipfile.structFileHeader); fields 10 and 11 are the name and
#: extra-field lengths, bytes 14..25 the CRC-32 and the compressed and uncompressed sizes.
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
_LOCAL_SIGNATURE = b"PK\x03\x04"
_CRC_AT = 14
#: A central directory entry and the end-of-central-directory record.
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_END = struct.Struct("<4s4H2LH")
_VERSION, _UNIX = 20, 3  # zip 2.0, made on Unix: what zipfile writes for stored members
_DATE = 1 << 5 | 1  # 1980-01-01 in MS-DOS form (time 00:00 is 0)
_ATTRIBUTES = 0o600 << 16  # as zipfile gives `open(name, "w")`
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


#: A deflated member may inflate to this many times its compressed size, or to `INFLATE_FLOOR`
#: whatever it compresses to: weights barely compress (random floats by ~1.1x), so a member
#: that declares more is a zip bomb, refused before anything is inflated.
INFLATE_RATIO = 100
INFLATE_FLOOR = 64 << 20
#: Bytes inflated at a time: all that a compressed member ever holds in memory.
_INFLATE_CHUNK = 1 << 20


def inflate_to(
    path: str, z: zipfile.ZipFile, info: zipfile.ZipInfo, out: IO[bytes], limit: int, magic: bytes
) -> None:
    """A compressed member streamed into `out`, `_INFLATE_CHUNK` at a time: memory stays bounded
    whatever the member declares. Its first bytes must be `magic` (the format it should hold),
    checked before the rest is inflated.

    Raises:
        FormatError: the member declares more than `limit`, or far more than it compresses to
            (a zip bomb), is encrypted or oddly compressed, does not start with `magic`, or is
            corrupt (zipfile checks its CRC and size as it ends).
    """
    name = printable(info.filename)
    if info.file_size > limit:
        raise FormatError(
            f"{path}: member {name} is {info.file_size} bytes, more than the {limit} it may hold"
        )
    if info.file_size > max(INFLATE_FLOOR, INFLATE_RATIO * info.compress_size):
        raise FormatError(
            f"{path}: member {name} declares {info.file_size} bytes from "
            f"{info.compress_size} compressed, more than weights ever compress (a zip bomb); "
            "refused before inflating"
        )
    if info.flag_bits & 0x1 or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise FormatError(f"{path}: member {name} is encrypted or oddly compressed")
    try:
        with z.open(info) as f:
            head = f.read(len(magic))
            if head != magic:
                raise FormatError(
                    f"{path}: member {name} starts with {head!r}, expected {magic!r}; refused "
                    "before inflating the rest"
                )
            out.write(head)
            while chunk := f.read(_INFLATE_CHUNK):
                out.write(chunk)
    except ZIP_ERRORS as e:
        raise FormatError(
            f"{path}: member {name} cannot be read ({printable(str(e), 200)})"
        ) from None


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


class ZipWriter:
    """A zip archive written front to back: stored members, fixed dates, one member streamed
    at a time (its local header patched when it ends: the CRC is known only then)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._members: list[tuple[bytes, int, int, int]] = []  # name, CRC-32, size, offset
        self._name, self._offset, self._crc, self._size = b"", 0, 0, 0

    def add(self, name: str, data: bytes) -> None:
        self.begin(name)
        self.stream(data)
        self.end()

    def begin(self, name: str) -> None:
        self._name, self._offset, self._crc, self._size = name.encode(), self._f.tell(), 0, 0
        self._f.write(_local(self._name, 0, 0))

    def stream(self, data: Any) -> None:
        self._f.write(data)
        self._crc = zlib.crc32(data, self._crc)
        self._size += memoryview(data).nbytes

    def end(self) -> None:
        here = self._f.tell()
        self._f.seek(self._offset + _CRC_AT)
        self._f.write(struct.pack("<3L", self._crc, self._size, self._size))
        self._f.seek(here)
        self._members.append((self._name, self._crc, self._size, self._offset))

    def finish(self) -> None:
        """The central directory and its end record."""
        start = self._f.tell()
        for name, crc, size, offset in self._members:
            self._f.write(_central(name, crc, size, offset))
        count, length = len(self._members), self._f.tell() - start
        self._f.write(_END.pack(b"PK\x05\x06", 0, 0, count, count, length, start, 0))


def _local(name: bytes, crc: int, size: int) -> bytes:
    """A stored member's local header: zip 2.0, no flags, no extra field, dated 1980-01-01."""
    fields = (_VERSION, 0, 0, 0, 0, _DATE, crc, size, size, len(name), 0)
    return _LOCAL_HEADER.pack(_LOCAL_SIGNATURE, *fields) + name


def _central(name: bytes, crc: int, size: int, offset: int) -> bytes:
    """Its central directory entry, made on Unix with mode 0o600, as zipfile writes it."""
    fields = (_VERSION, _UNIX, _VERSION, 0, 0, 0, 0, _DATE, crc, size, size, len(name), 0, 0, 0, 0)
    return _CENTRAL.pack(b"PK\x01\x02", *fields, _ATTRIBUTES, offset) + name
