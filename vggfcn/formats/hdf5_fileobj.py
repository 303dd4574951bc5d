"""File objects that h5py reads and writes an HDF5 file through, when the file is not a file of
its own: a window of a file (`FileWindow`: the weights member inside a `.keras` archive), or an
image in memory (`HDF5Image`).

An HDF5 file laid out by h5py in memory, data-less, lets its weights be streamed in: our `.keras`
output's `model.weights.h5` is an HDF5 file inside a zip, and its weights (553 MB for
VGG16) must not be held in memory, nor written twice. h5py writes the file's structure into this
file object; each dataset is allocated at creation and never filled (`ALLOC_TIME_EARLY`,
`FILL_TIME_NEVER`), so its space is a known range that h5py never writes. The writer then emits
the image front to back, the structure h5py wrote between the weights it streams into their
ranges (`read_at` gives the structure's bytes; the ranges read as zeros).
"""

from __future__ import annotations

import builtins
import io
from typing import Any


class _Seekable(io.RawIOBase):
    """A readable, seekable raw file of `size` bytes, positioned at `_pos`."""

    def __init__(self) -> None:
        super().__init__()
        self._pos = self.size = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._pos = max(0, (0, self._pos, self.size)[whence] + offset)
        return self._pos


class FileWindow(_Seekable):
    """A read-only file object over bytes [start, start + length) of a file."""

    def __init__(self, path: str, start: int, length: int) -> None:
        super().__init__()
        self._file = builtins.open(path, "rb")
        self._start, self.size = start, length

    def readinto(self, buffer: Any) -> int:
        count = max(0, min(len(buffer), self.size - self._pos))
        self._file.seek(self._start + self._pos)
        data = self._file.read(count)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        self._file.close()
        super().close()


class HDF5Image(_Seekable):
    """The HDF5 file h5py writes, kept in memory as the writes it made: its metadata, some
    kilobytes. The datasets' ranges are never written (allocated early, never filled), so they
    read as zeros here and cost nothing until `write` streams the weights into them."""

    def __init__(self) -> None:
        super().__init__()
        self._writes: list[tuple[int, bytes]] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._writes.append((self._pos, chunk))
        self._pos += len(chunk)
        self.size = max(self.size, self._pos)
        return len(chunk)

    def readinto(self, buffer: Any) -> int:
        """HDF5 may read back metadata it wrote (h5py's file-object contract asks for it)."""
        data = self.read_at(self._pos, min(self._pos + len(buffer), self.size))
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def truncate(self, size: int | None = None) -> int:
        self.size = self._pos if size is None else size
        self._writes = [(at, data[: self.size - at]) for at, data in self._writes if at < self.size]
        return self.size

    def read_at(self, start: int, end: int) -> bytes:
        """Bytes [start, end) of the file: the latest write to each byte, else zero."""
        out = bytearray(max(0, end - start))
        for at, data in self._writes:
            lo, hi = max(start, at), min(end, at + len(data))
            if lo < hi:
                out[lo - start : hi - start] = data[lo - at : hi - at]
        return bytes(out)
