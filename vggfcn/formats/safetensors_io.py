"""safetensors, read and written by us: a validated reader and a streaming, deterministic writer.
(Which network a safetensors file holds is `safetensors_file`'s business.)

Why not `safetensors.numpy`: `save_file` needs every tensor in memory at once and writes
`__metadata__` in hash-map order (two identical conversions can differ byte for byte), and the
library accepts duplicate tensor names. The format is simple enough to own: an 8-byte
little-endian header length N, N bytes of JSON, then the data buffer in C order.
For tensors of one dtype our bytes equal what `save_file` writes: entries ordered by name,
compact JSON, header padded with spaces to a multiple of 8.
"""

from __future__ import annotations

import builtins
import json
import os
import struct
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from ..errors import FormatError
from ..precision import PRECISIONS, BFloat16Source
from ..tensor import Tensor
from .blocks import write_tensor
from .detect import SAFETENSORS_MAX_HEADER
from .region import FileRegion

if TYPE_CHECKING:
    pass

#: Every safetensors dtype code we read -> the NumPy dtype of its bytes: our output precisions
#: (BF16 as bit patterns, decoded by `precision.BFloat16Source`), float64, and integers, which
#: are read so that bookkeeping (`num_batches_tracked`) can be recognised and skipped; a weight
#: of an integer type is refused where it is used (`Tensor.wrap`).
_DTYPES: dict[str, np.dtype[Any]] = {
    **{p.code: p.storage for p in PRECISIONS.values()},
    "F64": np.dtype("<f8"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}


def header_bytes(
    shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str], dtype: str = "float32"
) -> bytes:
    """The length prefix and JSON header for tensors of one dtype stored in name order."""
    code, storage = PRECISIONS[dtype].code, PRECISIONS[dtype].storage
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(sorted(metadata.items()))
    offset = 0
    for name in sorted(shapes):
        shape = shapes[name]
        end = offset + int(np.prod(shape, dtype=np.int64)) * storage.itemsize
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def write(
    f: BinaryIO,
    tensors: Mapping[str, Tensor],
    metadata: Mapping[str, str],
    progress: Callable[[int], object] = lambda _n: None,
    final_metadata: Callable[[], Mapping[str, str]] | None = None,
    allow_nonfinite: bool = False,
    dtype: str = "float32",
) -> None:
    """Stream `tensors` into `f` as `dtype`, one bounded block at a time.

    Args:
        f: a binary file on disk open for writing, positioned at 0 (pieces of a tensor are
            written where they belong, `write_tensor`).
        tensors: output name -> lazy tensor; written in name order.
        metadata: flat str -> str map stored as `__metadata__` (sorted, so output is reproducible).
        progress: called with the number of data bytes after each block.
        final_metadata: metadata known only once the data is written (e.g. a digest computed
            alongside); it replaces `metadata`, whose serialised length it must keep, so the
            header is rewritten in place and no data moves.
        allow_nonfinite: write NaN/Inf values instead of refusing them.
        dtype: storage precision, "float32", "float16" or "bfloat16" (see `precision`).

    Raises:
        FormatError: a tensor holds NaN or Inf (unless allowed), naming it and the count.
    """
    shapes = {n: t.shape for n, t in tensors.items()}
    header = header_bytes(shapes, metadata, dtype)
    f.write(header)
    for name in sorted(tensors):
        write_tensor(f, tensors[name], allow_nonfinite, progress, dtype)
    if final_metadata is not None:
        final = header_bytes(shapes, final_metadata(), dtype)
        if len(final) != len(header):
            raise ValueError("final metadata must serialise to the same length as the first")
        end = f.tell()
        f.seek(0)
        f.write(final)
        f.seek(end)


def read_header(path: str) -> tuple[dict[str, Any], dict[str, str], int]:
    """Parse and validate a safetensors header ourselves before trusting any of it.

    Returns:
        (entries, metadata, data_start): name -> {"dtype", "shape", "data_offsets"}, the
        `__metadata__` map, and the file offset where the data buffer begins.
    Raises:
        FormatError: truncated file, oversized or invalid header, duplicate names, unknown
        dtypes, offsets that overlap, leave gaps, or do not cover the file exactly.
    """
    size = os.path.getsize(path)
    with builtins.open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise FormatError(f"{path}: truncated safetensors file (no header length)")
        (n,) = struct.unpack("<Q", prefix)
        if n > SAFETENSORS_MAX_HEADER or n > size - 8:
            raise FormatError(f"{path}: safetensors header of {n} bytes does not fit the file")
        raw = f.read(n)
    try:
        pairs = json.loads(raw, object_pairs_hook=_no_duplicates)
    except (ValueError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: invalid safetensors header ({e})") from None
    if not isinstance(pairs, dict):
        raise FormatError(f"{path}: safetensors header is not a JSON object")
    metadata = pairs.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise FormatError(f"{path}: safetensors __metadata__ must map strings to strings")
    data_start = 8 + n
    spans = []
    for name, entry in pairs.items():
        _check_entry(path, name, entry)
        spans.append((entry["data_offsets"][0], entry["data_offsets"][1], name))
    spans.sort()
    position = 0
    for begin, end, name in spans:
        if begin != position:
            what = "overlaps the previous tensor" if begin < position else "leaves a gap"
            raise FormatError(f"{path}: tensor {name} {what} (offset {begin}, expected {position})")
        position = end
    if data_start + position != size:
        raise FormatError(
            f"{path}: data buffer is {size - data_start} bytes but the header describes "
            f"{position} (truncated or trailing bytes)"
        )
    return pairs, metadata, data_start


def open_tensors(path: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Lazy tensors over a validated safetensors file (nothing is read yet), their dtypes
    unchecked: whoever uses one checks it is a float (`Tensor.wrap`).

    Each read maps only that tensor's bytes (`FileRegion`), and the map goes when the array
    does: a layer's weights cost memory only while that layer is in use.
    """
    entries, metadata, data_start = read_header(path)
    tensors: dict[str, Tensor] = {}
    for name, entry in entries.items():
        begin = entry["data_offsets"][0]
        region: Any = FileRegion(
            path, data_start + begin, tuple(entry["shape"]), _DTYPES[entry["dtype"]]
        )
        if entry["dtype"] == "BF16":
            region = BFloat16Source(region)
        tensors[name] = Tensor(region, tuple(entry["shape"]), f"{path}:{name}")
    return tensors, metadata


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate name {key!r}")
        out[key] = value
    return out


def _check_entry(path: str, name: str, entry: Any) -> None:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise FormatError(f"{path}: tensor {name}: entry must have dtype, shape, data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in _DTYPES:
        raise FormatError(
            f"{path}: tensor {name} has dtype {dtype}; expected one of {list(_DTYPES)}"
        )
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise FormatError(f"{path}: tensor {name} has an invalid shape {shape!r}")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(o) is int and o >= 0 for o in offsets)
        and offsets[0] <= offsets[1]
    ):
        raise FormatError(f"{path}: tensor {name} has invalid data_offsets {offsets!r}")
    nbytes = int(np.prod(shape, dtype=np.int64)) * _DTYPES[dtype].itemsize
    if offsets[1] - offsets[0] != nbytes:
        raise FormatError(
            f"{path}: tensor {name} of shape {shape} needs {nbytes} bytes, "
            f"its offsets span {offsets[1] - offsets[0]}"
        )
