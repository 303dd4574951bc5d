"""Transposes: moving a large tensor's axes at memory speed.

`np.ascontiguousarray(w.transpose(axes))` walks the source in the destination's order, so for a
400 MB FC6 one side of every copy strides through memory a cache line per element. Any
permutation that moves the innermost axis is 2-D transposes and a copy of whole rows (`_by_blas`);
OpenBLAS does the transposes (`openblas`) four to six times faster than NumPy can. Without it,
the copy goes tile by tile (a few hundred KB each, so both sides of a tile stay in cache) and
needs no temporary beyond the destination.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import openblas

#: Bytes of source per tile: well inside L2, so a tile's reads and writes both hit cache.
TILE_BYTES = 256 << 10
#: Rows of the source's first axis per tile (the axis that ends up innermost in our layouts).
TILE_ROWS = 64


def permuted_shape(shape: Sequence[int], axes: Sequence[int]) -> tuple[int, ...]:
    """The shape of `x.transpose(axes)` for `x` of `shape`."""
    return tuple(int(shape[a]) for a in axes)


def transpose_into(source: np.ndarray, axes: Sequence[int], out: np.ndarray) -> None:
    """out[...] = source.transpose(axes): by OpenBLAS 2-D transposes where it can, else in
    cache-sized tiles.

    Tiles cut the source's first two axes; the rest of each tile is contiguous in the source.
    """
    if out.shape != permuted_shape(source.shape, axes):
        raise ValueError(
            f"out has shape {out.shape}, expected {permuted_shape(source.shape, axes)}"
        )
    if source.ndim < 2:
        out[...] = source
        return
    if _by_blas(source, tuple(axes), out):
        return
    target = out.transpose(np.argsort(axes))  # `out` seen in the source's axis order
    inner = int(np.prod(source.shape[2:], dtype=np.int64)) * source.dtype.itemsize
    rows = min(TILE_ROWS, source.shape[0])
    cols = max(1, TILE_BYTES // max(1, rows * inner))
    for i in range(0, source.shape[0], rows):
        for j in range(0, source.shape[1], cols):
            target[i : i + rows, j : j + cols] = source[i : i + rows, j : j + cols]


def _by_blas(source: np.ndarray, axes: tuple[int, ...], out: np.ndarray) -> bool:
    """out[...] = source.transpose(axes) with OpenBLAS; False, having written nothing, when
    OpenBLAS cannot take these arrays or no 2-D transpose is needed.

    The output's innermost axis (q) goes innermost first: seen as (before q, q, after q), each
    (q, after q) matrix is one 2-D transpose, and what is left is a copy of whole runs of q.
    Few calls on large matrices: fc6 (4096, 512 * 49) is one; a conv kernel is one rather than
    one per input channel (2.4 to 10 times faster, measured).
    """
    last, inner = source.ndim - 1, axes[-1]
    if inner == last:
        return False  # the innermost axis stays: rows move whole, NumPy copies them at full speed
    if source.dtype == np.float32 and source.ctypes.data % source.itemsize:
        source = source.copy()  # unaligned (a mapped Caffe blob): BLAS needs, and repays, a copy
    if source.ndim == 2:
        return openblas.transpose(source, out)
    if not source.flags.c_contiguous:
        return False
    head, tail = source.shape[:inner], source.shape[inner + 1 :]
    rows, width = int(np.prod(head, dtype=np.int64)), int(np.prod(tail, dtype=np.int64))
    matrices = source.reshape(rows, source.shape[inner], width)
    moved = np.empty((*head, *tail, source.shape[inner]), np.float32)
    transposed = moved.reshape(rows, width, source.shape[inner])
    if not openblas.transpose(matrices[0], transposed[0]):
        return False
    for i in range(1, rows):  # each with the first's strides and alignment: OpenBLAS takes it
        if not openblas.transpose(matrices[i], transposed[i]):
            raise RuntimeError(f"OpenBLAS refused a transpose it took at another index: {i}")
    out[...] = moved.transpose([a if a < inner else a - 1 for a in axes[:-1]] + [last])
    return True


def merge_axes(
    view: tuple[int, ...], axes: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The same permutation with view axes that stay neighbours (i, i + 1 in `axes`) merged.

    HWIO -> OIHW, (7, 7, 512, 4096) by (3, 2, 0, 1), is (49, 512, 4096) by (2, 1, 0): fewer,
    longer axes, so slabs, tiles and 2-D transposes follow the data's real structure.
    """
    groups: list[list[int]] = []  # runs of view axes, in output order
    for axis in axes:
        if groups and groups[-1][-1] + 1 == axis:
            groups[-1].append(axis)
        else:
            groups.append([axis])
    ordered = sorted(groups)
    merged = tuple(int(np.prod([view[a] for a in group], dtype=np.int64)) for group in ordered)
    return merged, tuple(ordered.index(group) for group in groups)
