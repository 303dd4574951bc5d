"""Cache-blocked transposes: moving a large tensor's axes without thrashing the cache.

`np.ascontiguousarray(w.transpose(axes))` walks the source in the destination's order, so for a
400 MB FC6 one side of every copy strides through memory a cache line per element. Copying tile
by tile (a few hundred KB each, so both sides of a tile stay in cache) is several times faster
and needs no temporary beyond the destination itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Bytes of source per tile: well inside L2, so a tile's reads and writes both hit cache.
TILE_BYTES = 256 << 10
#: Rows of the source's first axis per tile (the axis that ends up innermost in our layouts).
TILE_ROWS = 64


def permuted_shape(shape: Sequence[int], axes: Sequence[int]) -> tuple[int, ...]:
    """The shape of `x.transpose(axes)` for `x` of `shape`."""
    return tuple(int(shape[a]) for a in axes)


def transpose_into(source: np.ndarray, axes: Sequence[int], out: np.ndarray) -> None:
    """out[...] = source.transpose(axes), copied in cache-sized tiles.

    Tiles cut the source's first two axes; the rest of each tile is contiguous in the source.
    """
    if out.shape != permuted_shape(source.shape, axes):
        raise ValueError(
            f"out has shape {out.shape}, expected {permuted_shape(source.shape, axes)}"
        )
    if source.ndim < 2:
        out[...] = source
        return
    target = out.transpose(np.argsort(axes))  # `out` seen in the source's axis order
    inner = int(np.prod(source.shape[2:], dtype=np.int64)) * source.dtype.itemsize
    rows = min(TILE_ROWS, source.shape[0])
    cols = max(1, TILE_BYTES // max(1, rows * inner))
    for i in range(0, source.shape[0], rows):
        for j in range(0, source.shape[1], cols):
            target[i : i + rows, j : j + cols] = source[i : i + rows, j : j + cols]
