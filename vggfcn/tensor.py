"""Lazy tensors: a file's array, read only when someone needs its numbers.

A `Tensor` is a view of a sliceable source (an h5py dataset, a memory map, an ndarray) with a
shape and, optionally, a pending axis permutation. Readers hand out tensors exactly as their files
store them; compile (`convert`) reshapes and permutes them lazily, so converting streams from the
input file and never needs the whole model in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .bands import Bands
from .errors import ArchitectureError, FormatError, first_line
from .precision import F32
from .sources import Source
from .stream import Stream, ahead
from .transpose import merge_axes, permuted_shape, transpose_into

#: What a reader may hand us: float data of any width or byte order; read as float32.
_FLOAT_SIZES = {2, 4, 8}


@dataclass(frozen=True)
class Tensor:
    """A lazily read tensor: the elements of `source`, optionally with axes moved, under `shape`.

    `source` is anything sliceable along its first axis that yields NumPy arrays (an h5py
    dataset, an ndarray, a memory map, a `FileRegion`). Without `order`, the tensor is the
    source's C-order elements: reshapes are free, and that is what makes FC6 -> 7x7 conv a
    streaming operation. With `order = (view, axes)` the elements are
    `source.reshape(view).transpose(axes)`: how a PyTorch (out, in) or OIHW kernel becomes
    canonical. Orders compose, so OIHW -> canonical HWIO -> OIHW output is the source again.
    """

    source: Source
    shape: tuple[int, ...]
    where: str  # "file.h5:/fc1/fc1_W_1:0", for messages
    order: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    @classmethod
    def wrap(cls, source: Any, where: str) -> Tensor:
        """Wrap a file's array, refusing dtypes we cannot read exactly as floats."""
        dtype = np.dtype(source.dtype)
        if dtype.kind != "f" or dtype.itemsize not in _FLOAT_SIZES:
            raise FormatError(
                f"{where}: dtype {dtype} is not a float type (expected float16/32/64)"
            )
        return cls(source, tuple(int(d) for d in source.shape), where)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def reshape(self, shape: Sequence[int]) -> Tensor:
        """The same elements under another shape (no data is read)."""
        shape = tuple(int(d) for d in shape)
        if int(np.prod(shape, dtype=np.int64)) != self.size:
            raise ArchitectureError(f"{self.where}: cannot view shape {self.shape} as {shape}")
        return replace(self, shape=shape)

    def permute(self, view: Sequence[int], axes: Sequence[int]) -> Tensor:
        """The elements viewed as `view`, with axes moved as `x.transpose(axes)` would.

        No data is read. A tensor that is itself a permutation composes with it when `view` is
        that permutation's own shape (unit axes aside); otherwise it is materialised first.
        """
        view, axes = tuple(int(d) for d in view), tuple(int(a) for a in axes)
        if int(np.prod(view, dtype=np.int64)) != self.size:
            raise ArchitectureError(f"{self.where}: cannot view shape {self.shape} as {view}")
        shape = permuted_shape(view, axes)
        if self.order is None:
            return replace(self, shape=shape, order=_simplify(view, axes))
        base_view, base_axes = self.order
        composed = _compose(base_view, base_axes, view, axes)
        if composed is None:
            return Tensor.wrap(self.read(), self.where).permute(view, axes)
        return replace(self, shape=shape, order=_simplify(base_view, composed))

    def read(self) -> np.ndarray:
        """All elements as a float32 array of `shape` (little-endian, C order).

        Raw float32 data comes back as a read-only view of the file's memory map (no copy):
        copy it before writing to it or handing it to a library that wants to.
        """
        data = np.asarray(self.fetch(()))
        if self.order is None:
            return np.ascontiguousarray(data, dtype=F32).reshape(self.shape)
        view, axes = merge_axes(*self.order)
        out = np.empty(permuted_shape(view, axes), dtype=F32)
        transpose_into(data.reshape(view), axes, out)
        return out.reshape(self.shape)

    def blocks(self, max_bytes: int) -> Iterator[np.ndarray]:
        """float32 blocks whose concatenated bytes are the tensor's C-order bytes.

        Memory stays within a small multiple of `max_bytes` however large the tensor is. Without
        an `order`, blocks are whole source rows. With one, `stream.Stream` moves the axes a slab of
        the source at a time (see it for which orders stream); a tensor of at most `max_bytes`,
        or an order `Stream` cannot bound, is transposed whole in memory and handed out in
        slices.
        """
        if self.size == 0:
            return
        if self.order is None and len(self.source.shape) > 0:
            rows = int(self.source.shape[0])
            row_bytes = max(1, self.size // rows) * F32.itemsize
            step = max(1, max_bytes // row_bytes)
            for start in range(0, rows, step):
                yield np.ascontiguousarray(self.fetch(slice(start, start + step)), dtype=F32)
            return
        plan = None
        if self.order is not None and self.size * F32.itemsize > max_bytes:
            plan = Stream.plan(self.source, self.fetch, *self.order, max_bytes)
        if plan is not None:
            yield from ahead(plan.blocks())
            return
        flat = self.read().reshape(-1)
        step = max(1, max_bytes // F32.itemsize)
        for start in range(0, flat.size, step):
            yield flat[start : start + step]

    def pieces(self, max_bytes: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(offsets, rows): the tensor's C-order elements in pieces, in whatever order moves
        them fastest; `rows[n]` holds the elements from `offsets[n]` on (float32, read in C
        order; not necessarily contiguous).

        For writers that can seek. An order that swaps the outer axes of its merged view (fc6
        between OIHW and HWIO) moves in `bands`, each byte read once; anything else comes as
        `blocks`, one row each, in order. `rows` may be reused for the next piece: use it
        before asking for the next.
        """
        big = self.size * F32.itemsize > max_bytes
        bands = Bands.plan(self.source, self.order, max_bytes) if big else None
        if bands is not None:
            yield from bands.pieces()
            return
        offset = 0
        for block in self.blocks(max_bytes):
            yield np.array([offset], dtype=np.int64), block.reshape(1, -1)
            offset += block.size

    def fetch(self, key: Any) -> np.ndarray:
        """`source[key]` as stored (its own dtype, no `order` applied), turning a corrupt
        file's low-level error into ours."""
        try:
            return np.asarray(self.source[key])
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
            # h5py's errors on a corrupt dataset; the first line says enough
            raise FormatError(f"{self.where}: cannot read data ({first_line(e)})") from None


def _squeeze(
    view: tuple[int, ...], axes: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Drop unit axes from a (view, axes) permutation; they carry no ordering."""
    keep = [i for i, d in enumerate(view) if d != 1]
    renumber = {old: new for new, old in enumerate(keep)}
    return tuple(view[i] for i in keep), tuple(renumber[a] for a in axes if a in renumber)


def _simplify(
    view: tuple[int, ...], axes: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """None for the identity permutation (plain C-order elements), else the squeezed order."""
    view, axes = _squeeze(view, axes)
    return None if axes == tuple(range(len(axes))) else (view, axes)


def _compose(
    base_view: tuple[int, ...],
    base_axes: tuple[int, ...],
    view: tuple[int, ...],
    axes: tuple[int, ...],
) -> tuple[int, ...] | None:
    """Axes that apply two permutations in one, or None when a reshape sits between them."""
    view, axes = _squeeze(view, axes)
    if view != permuted_shape(base_view, base_axes):
        return None
    return tuple(base_axes[a] for a in axes)


def _prod(shape: Sequence[int]) -> int:
    return int(np.prod(shape, dtype=np.int64))
