"""The plain-copy floor: what any converter must at least spend on the same file.

Same interpreter, same imports as `vggfcn convert` (h5py, numpy), same disk work (every weight
read from the HDF5 file in 16 MiB chunks, written once to one output file, fsynced), and no
conversion at all. `vggfcn convert` is measured as a ratio to this, in the same run. A `.keras`
archive's HDF5 member is read in place, through a file object over its bytes, as vggfcn does; a
file that is neither (a `.caffemodel`, a torch `.pth` zip, an ONNX protobuf: almost all weights)
is copied whole, in the same chunks.

Usage: python -m bench.floor IN.h5|IN.keras OUT
"""

from __future__ import annotations

import io
import os
import sys
import zipfile
from typing import Any

import h5py
import numpy as np

from vggfcn.formats.hdf5_fileobj import FileWindow
from vggfcn.formats.zip_io import data_start

CHUNK = 16 << 20


def _weights_member(source: str) -> zipfile.ZipInfo | None:
    """A `.keras` archive's HDF5 weights member; None for any other file."""
    if not zipfile.is_zipfile(source):
        return None
    with zipfile.ZipFile(source) as z:
        return next((i for i in z.infolist() if i.filename == "model.weights.h5"), None)


def _open(source: str, info: zipfile.ZipInfo | None) -> Any:
    """An HDF5 file, or a `.keras` archive's weights member read in place."""
    if info is None:
        return h5py.File(source, "r")
    with open(source, "rb") as f:
        size = os.fstat(f.fileno()).st_size

        def read(at: int, n: int) -> bytes:
            f.seek(at)
            return f.read(n)

        start = data_start(source, info, read, size)
    return h5py.File(io.BufferedReader(FileWindow(source, start, info.file_size)), "r")


def copy_datasets(source: str, output: str) -> int:
    """Copy the bytes of every dataset of `source` into `output`; return bytes written."""
    member = _weights_member(source)
    if member is None and not h5py.is_hdf5(source):
        return copy_file(source, output)
    datasets: list[h5py.Dataset] = []
    written = 0
    with _open(source, member) as f, open(output, "wb") as out:
        f.visititems(
            lambda _name, obj: datasets.append(obj) if isinstance(obj, h5py.Dataset) else None
        )
        for ds in datasets:
            rows = ds.shape[0] if ds.shape else 1
            row_bytes = max(1, ds.size // max(rows, 1)) * ds.dtype.itemsize
            step = max(1, CHUNK // row_bytes)
            for start in range(0, rows, step):
                block = np.ascontiguousarray(ds[start : start + step] if ds.shape else ds[()])
                out.write(block.data)
                written += block.nbytes
        out.flush()
        os.fsync(out.fileno())
    return written


def copy_file(source: str, output: str) -> int:
    """Read `source` in chunks and write it once, fsynced; return bytes written."""
    written = 0
    with open(source, "rb") as f, open(output, "wb") as out:
        while chunk := f.read(CHUNK):
            block = np.frombuffer(chunk, np.uint8)  # as the HDF5 path holds its blocks
            out.write(block.data)
            written += block.nbytes
        out.flush()
        os.fsync(out.fileno())
    return written


if __name__ == "__main__":
    copy_datasets(sys.argv[1], sys.argv[2])
