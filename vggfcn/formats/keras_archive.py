"""Keras 3 `.keras` archives (`model.save("m.keras")`, Keras 3's default), read in place.

The archive is a zip of `metadata.json`, `config.json` (the model, as data) and
`model.weights.h5` (the `.weights.h5` layout). Keras writes every member stored, uncompressed, so
the HDF5 bytes are one range of the archive: h5py reads its structure through a file object over
that range, and the weights are mapped straight from the archive (`region`), never extracted.
A compressed member is inflated to a temporary file in bounded memory, refused when it declares
far more than it compresses to (a zip bomb) or does not start as HDF5 does. The config is parsed
as data and checked against the weights (`keras_config`, `keras_model`): nothing in it is
imported or run.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from typing import BinaryIO

from ..errors import FormatError
from ..fcn import FCN
from ..graph import SourceGraph
from . import fcn_metadata, keras_fcn, keras_hub
from .detect import HDF5_MAGIC
from .hdf5_fileobj import FileWindow
from .keras_config import CONFIG_MAX_BYTES, parse_config
from .keras_h5 import Maps, named_weights, open_file, placed_weights, read_keras3
from .pickle_scan import printable
from .zip_io import ZIP_ERRORS, data_start, inflate_to, read_member, vetted_members

CONFIG = "config.json"
WEIGHTS = "model.weights.h5"
#: A compressed weights member is inflated (to a temporary file) up to this size (VGG19 is
#: 575 MB).
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
    with contextlib.ExitStack() as stack:
        try:
            with zipfile.ZipFile(path) as z:
                members = vetted_members(path, z.infolist(), size)
                missing = [m for m in (CONFIG, WEIGHTS) if m not in members]
                if missing:
                    raise FormatError(f"{path}: Keras archive without {', '.join(missing)}")
                text = read_member(path, z, members[CONFIG], CONFIG_MAX_BYTES)
                config = parse_config(text, f"{path}: {CONFIG}")
                ours = _our_metadata(path, z, members)
                weights = members[WEIGHTS]
                inflated = None
                if weights.compress_type != zipfile.ZIP_STORED:
                    # Inflated to a file of its own, never into memory: its weights are then
                    # mapped from there like a stored member's from the archive.
                    inflated = stack.enter_context(tempfile.NamedTemporaryFile(suffix=".h5"))
                    inflate_to(path, z, weights, inflated, INFLATE_MAX_BYTES, HDF5_MAGIC)
                    inflated.flush()
        except ZIP_ERRORS as e:
            raise FormatError(f"{path}: corrupt zip archive ({printable(str(e), 200)})") from None
        if inflated is not None:
            maps, start, length = Maps(inflated.name), 0, weights.file_size
        else:
            start = data_start(path, weights, lambda at, n: _read_at(path, at, n), size)
            maps, length = Maps(path, start), weights.file_size

        def opener() -> BinaryIO:
            return io.BufferedReader(FileWindow(maps.path, start, length))

        with open_file(path, opener) as f:
            if keras_hub.is_task(config):  # KerasHub's: arguments, not a layer list
                named = named_weights(f, path, maps)
                preprocessing = keras_hub.converter(config)
                yield keras_hub.graph(config, named, path, "keras-archive", preprocessing)
                return
            if ours is not None:  # ours: its config is read by the module that wrote it
                placed = functools.partial(placed_weights, f, path, maps, config)
                yield keras_fcn.read(config, placed, ours, path)
                return
            yield read_keras3(f, path, maps, config, "keras-archive")


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
    if not isinstance(ours, dict) or not fcn_metadata.is_ours(ours):
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in ours.items()):
        raise FormatError(f"{path}: {keras_fcn.METADATA}: vggfcn metadata must map strings")
    return ours


def _read_at(path: str, offset: int, count: int) -> bytes:
    with builtins.open(path, "rb") as f:
        f.seek(offset)
        return f.read(count)
