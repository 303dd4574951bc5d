"""The plain-copy floor: what any converter must at least spend on the same file.

Same interpreter, same imports as `vggfcn convert` (h5py, numpy), same disk work (every weight
read from the HDF5 file in 16 MiB chunks, written once to one output file, fsynced), and no
conversion at all. `vggfcn convert` is measured as a ratio to this, in the same run.

Usage: python -m bench.floor IN.h5 OUT
"""

from __future__ import annotations

import os
import sys

import h5py
import numpy as np

CHUNK = 16 << 20


def copy_datasets(source: str, output: str) -> int:
    """Copy the bytes of every dataset of `source` into `output`; return bytes written."""
    datasets: list[h5py.Dataset] = []
    written = 0
    with h5py.File(source, "r") as f, open(output, "wb") as out:
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


if __name__ == "__main__":
    copy_datasets(sys.argv[1], sys.argv[2])
