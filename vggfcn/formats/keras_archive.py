"""Keras 3 `.keras` archives (`model.save("m.keras")`, Keras 3's default), read in place.

The archive is a zip of `metadata.json`, `config.json` (the model, as data) and
`model.weights.h5` (the `.weights.h5` layout). Keras writes every member stored, uncompressed, so
the HDF5 bytes are one range of the archive: h5py reads its structure through a file object over
that range, and the weights are mapped straight from the archive (`region`), never extracted.
A compressed member is inflated into memory, capped; the config is parsed as data and checked
against the weights (`keras_model`): nothing in it is imported or run.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import os
import zipfile
from collections.abc import Iterator
from typing import BinaryIO

from ..errors import FormatError
from ..fcn import FCN
from ..graph import SourceGraph
from . import fcn_file, keras_fcn
from .keras_h5 import Maps, open_file, read_keras3
from .keras_model import CONFIG_MAX_BYTES, parse_config
from .pickle_scan import printable
from .zip_member import ZIP_ERRORS, data_start, read_member, vetted_members

CONFIG = "config.json"
WEIGHTS = "model.weights.h5"
#: A compressed weights member is inflated into memory up to this size (VGG19 is 575 MB).
INFLATE_MAX_BYTES = 2 << 30


@contextlib.contextmanager
def open(path: str) -> Iterator[SourceGraph | FCN]:  # noqa: A001 (the reader contract's name)
    """The model in a `.keras` archive, open for the `with` block (weights stream from it): a
    classifier's source graph, or the network a `.keras` written by vggfcn holds.

    Raises:
        FormatError: a corrupt archive, a missing or oversized member, a config that is not
            JSON or names a layer vggfcn does not convert (a Lambda, a custom class).
        ArchitectureError: the layers do not form a VGG classifier.
    """
    size = os.path.getsize(path)
    try:
        with zipfile.ZipFile(path) as z:
            members = vetted_members(path, z.infolist(), size)
            missing = [m for m in (CONFIG, WEIGHTS) if m not in members]
            if missing:
                raise FormatError(f"{path}: Keras archive without {', '.join(missing)}")
            config = parse_config(
                read_member(path, z, members[CONFIG], CONFIG_MAX_BYTES), f"{path}: {CONFIG}"
            )
            ours = _our_metadata(path, z, members)
            weights = members[WEIGHTS]
            inflated = None
            if weights.compress_type != zipfile.ZIP_STORED:
                inflated = read_member(path, z, weights, INFLATE_MAX_BYTES)
    except ZIP_ERRORS as e:
        raise FormatError(f"{path}: corrupt zip archive ({printable(str(e), 200)})") from None
    if inflated is not None:
        data = inflated
        maps = Maps(None)

        def opener() -> BinaryIO:
            return io.BytesIO(data)

    else:
        start = data_start(path, weights, lambda at, n: _read_at(path, at, n), size)
        maps = Maps(path, start)

        def opener() -> BinaryIO:
            return io.BufferedReader(_Range(path, start, weights.file_size))

    with open_file(path, opener) as f:
        graph = read_keras3(f, path, maps, config, "keras-archive")
        yield graph if ours is None else keras_fcn.read_back(graph, ours, path)


def _our_metadata(
    path: str, z: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo]
) -> dict[str, str] | None:
    """The metadata a `.keras` written by vggfcn carries (`keras_fcn`), None for other files."""
    info = members.get(keras_fcn.METADATA)
    if info is None:
        return None
    try:
        meta = json.loads(read_member(path, z, info, CONFIG_MAX_BYTES))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None  # Keras never reads it either: a broken one does not stop the model
    ours = meta.get(keras_fcn.VGGFCN_KEY) if isinstance(meta, dict) else None
    if not isinstance(ours, dict) or ours.get("format") != fcn_file.FORMAT:
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in ours.items()):
        raise FormatError(f"{path}: {keras_fcn.METADATA}: vggfcn metadata must map strings")
    return ours


def _read_at(path: str, offset: int, count: int) -> bytes:
    with builtins.open(path, "rb") as f:
        f.seek(offset)
        return f.read(count)


class _Range(io.RawIOBase):
    """A read-only file object over bytes [start, start + length) of a file: the HDF5 member."""

    def __init__(self, path: str, start: int, length: int) -> None:
        super().__init__()
        self._file = builtins.open(path, "rb")
        self._start, self._length, self._pos = start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        count = max(0, min(len(buffer), self._length - self._pos))
        self._file.seek(self._start + self._pos)
        data = self._file.read(count)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        self._file.close()
        super().close()
