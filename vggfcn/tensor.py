"""Lazy tensors: a file's array, read only when someone needs its numbers.

A `Tensor` is a view of a sliceable source (an h5py dataset, a memory map, an ndarray) with a
shape and, optionally, a pending axis permutation. Readers hand out tensors exactly as their files
store them; compile (`convert`) reshapes and permutes them lazily, so converting streams from the
input file and never needs the whole model in memory.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .bands import Bands
from .errors import ArchitectureError, FormatError, first_line
from .transpose import merge_axes, permuted_shape, transpose_into

#: What a reader may hand us: float data of any width or byte order; read as float32.
_FLOAT_SIZES = {2, 4, 8}
F32 = np.dtype("<f4")


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

    source: Any
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
        an `order`, blocks are whole source rows. With one, `_Stream` moves the axes a slab of
        the source at a time (see it for which orders stream); a tensor of at most `max_bytes`,
        or an order `_Stream` cannot bound, is transposed whole in memory and handed out in
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
        stream = None
        if self.order is not None and self.size * F32.itemsize > max_bytes:
            stream = _Stream.plan(self, *self.order, max_bytes)
        if stream is not None:
            yield from _ahead(stream.blocks())
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
        bands = Bands.plan(self, max_bytes) if self.size * F32.itemsize > max_bytes else None
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


#: Blocks alive at once: the one the caller is writing, the next that `_ahead` holds for it
#: and the one the worker fills.
_IN_FLIGHT = 3
#: Streamed blocks are at most a quarter of `max_bytes` (4 MiB writes still run at full disk
#: speed), so the three in flight cost less than one `max_bytes`.
_BLOCK_PARTS = 4
#: Source bytes read (mapped) at once, as a fraction of `max_bytes`: 8 MiB slabs mapped fc6
#: 10% faster than 4 MiB ones.
_SLAB_PARTS = 2
#: All a stream holds (table, slab, blocks in flight), as a multiple of `max_bytes`: 64 MiB
#: for 16 MiB blocks. When the output's first axis is inside the source's rows, each pass over
#: the source fills the table with one chunk of output rows and maps all of the source again,
#: at 3 to 25 ms per 400 MB (see bench/transpose.py), so the fewer passes the better: fc6
#: streamed in 0.38 s through a 44 MiB table (9 passes), 0.65 s through a 12 MiB one (34).
_WORK_BLOCKS = 4
#: Elements (64 bytes, a cache line) a slab must span of the output's innermost axis for a
#: chunk to be gathered straight into output order. A table gathered the other way, with the
#: output rows innermost, has rows a multiple of this long and blocks of a multiple of this
#: many output rows, so each block transposes columns that start on a cache line (fc6 Keras ->
#: OIHW streamed in 0.22 s, against 0.24 s with 41-row blocks from a 456-row table).
_RUN = 16


@dataclass(frozen=True)
class _Stream:
    """A permuted tensor in output order, block by block, reading its source a slab at a time.

    With the order's unit axes dropped and axes that stay neighbours merged (`merge_axes`), the
    output's first axis is view axis `j = axes[0]` and each block is a range of it ("output
    rows"). The source is read in slabs: runs of contiguous elements, a range of view axis
    `depth` (0 unless one index of axis 0 is too large to read at once) under fixed indices of
    the axes before it.

    - j == 0 (the output's first axis is the source's, e.g. OIHW -> OHWI): each block is a run
      of the source, transposed on its own; one pass over the source.
    - j > 0 (e.g. HWIO -> OIHW, where an output row is a column of the whole source): each
      chunk of output rows needs part of every slab, so takes a full pass over the source and
      is gathered into a table that is reused pass after pass; blocks are cut from it. When
      the output's innermost axis is the source's (CHW rows -> HWIO), the table is in output
      order and a block is a copy of its rows. Otherwise (HWIO -> OIHW, (out, in) -> (in,
      out)), gathering straight into output order would scatter 4-byte writes across the
      whole table; the table instead has the chunk's axis innermost (so each source row
      lands as one run) and each block is a tiled 2-D transpose of some of its columns.

    Streams any order whose source row and output row each fit in `max_bytes` (all of VGG's
    kernels, fc6 included); `plan` gives None for the rest.
    """

    tensor: Tensor
    view: tuple[int, ...]
    axes: tuple[int, ...]
    block_rows: int  # output rows per block
    block_size: int  # elements per block cut from an output-order table
    chunk_rows: int  # output rows gathered per pass over the source
    depth: int  # the view axis a slab is a range of
    span: int  # indices of that axis per slab
    layout: tuple[int, ...]  # view axes in the order a chunk is gathered

    @classmethod
    def plan(
        cls, tensor: Tensor, view: tuple[int, ...], axes: tuple[int, ...], max_bytes: int
    ) -> _Stream | None:
        """How to stream `tensor` (ordered as `view`, `axes`), or None when it cannot be
        bounded by `max_bytes`."""
        view, axes = merge_axes(view, axes)
        rows = int(tensor.source.shape[0]) if len(tensor.source.shape) else 0
        j = axes[0]
        row = tensor.size // view[j] * F32.itemsize  # bytes
        if rows == 0 or max(row, tensor.size // rows * F32.itemsize) > max_bytes:
            return None
        block = max_bytes // _BLOCK_PARTS  # bytes
        block_rows = max(1, block // row)
        slab = max_bytes // _SLAB_PARTS // F32.itemsize  # elements
        depth = 0
        while _prod(view[depth + 1 :]) > slab:
            depth += 1
        span = max(1, slab // _prod(view[depth + 1 :]))
        if j == 0:
            return cls(tensor, view, axes, block_rows, 0, block_rows, depth, span, axes)
        # Gather in output order when each output run is long: the output's innermost axis is
        # the source's (CHW rows -> HWIO), or the one a slab spans many indices of (OIHW ->
        # HWIO, where a slab is many whole output columns).
        in_order = axes[-1] == len(view) - 1 or (axes[-1] == depth and span >= _RUN)
        layout = axes if in_order else (*axes[1:], j)
        # An output-order table is cut into blocks anywhere, so its blocks stay small even
        # when its rows do not (an 8 MiB HWIO fc6 row from OIHW): more of it is table.
        block_size = min(block, block_rows * row) // F32.itemsize
        aligned = not in_order and block_rows >= _RUN  # blocks are table columns: see _RUN
        if aligned:
            block_rows -= block_rows % _RUN
        flight = _IN_FLIGHT * (block_size * F32.itemsize if in_order else block_rows * row)
        held = span * _prod(view[depth + 1 :]) * F32.itemsize + flight
        passes = -(-view[j] // max(block_rows, (_WORK_BLOCKS * max_bytes - held) // row))
        chunk_rows = -(-view[j] // passes)  # as even as the passes allow: the least memory
        if aligned:
            chunk_rows = -(-chunk_rows // block_rows) * block_rows
        return cls(tensor, view, axes, block_rows, block_size, chunk_rows, depth, span, layout)

    def blocks(self) -> Generator[np.ndarray, None, None]:
        """The tensor's blocks in order, each a fresh array (a caller may keep it)."""
        j = self.axes[0]
        buffer: np.ndarray | None = None  # the table's memory, reused pass after pass
        for a in range(0, self.view[j], self.chunk_rows):
            b = min(a + self.chunk_rows, self.view[j])
            shape = permuted_shape((*self.view[:j], b - a, *self.view[j + 1 :]), self.layout)
            if j == 0:  # a run of the source, in output order: the block itself
                block = np.empty(shape, F32)
                self._gather(a, b, block)
                yield block
                continue
            if buffer is None:
                buffer = np.empty(_prod(shape), F32)
            table = buffer[: _prod(shape)].reshape(shape)
            self._gather(a, b, table)
            if self.layout == self.axes:
                flat = table.reshape(-1)
                for o in range(0, flat.size, self.block_size):
                    yield flat[o : o + self.block_size].copy()
                continue
            columns = table.reshape(-1, b - a)
            for o in range(0, b - a, self.block_rows):
                block = np.empty((min(self.block_rows, b - a - o), columns.shape[0]), F32)
                transpose_into(columns[:, o : o + self.block_rows], (1, 0), block)
                yield block

    def _gather(self, a: int, b: int, out: np.ndarray) -> None:
        """Output rows a..b (view axis `axes[0]`), laid out as `layout`, into `out`."""
        j, depth = self.axes[0], self.depth
        where = {axis: p for p, axis in enumerate(self.layout)}  # view axis -> axis of `out`
        # `out` indexed by the prefix loses those axes: the slab's axes land in this order
        axes = [axis - depth for axis in self.layout if axis >= depth]
        first, last = (a, b) if j == depth else (0, self.view[depth])
        for prefix in np.ndindex(*self.view[:depth]):
            if j < depth and not a <= prefix[j] < b:
                continue  # holds none of these output rows
            index: list[int | slice] = [slice(None)] * len(self.layout)
            for axis, i in enumerate(prefix):
                index[where[axis]] = i - a if axis == j else i
            for h in range(first, last, self.span):
                end = min(h + self.span, last)
                slab = self._slab(prefix, h, end)
                if j > depth:
                    slab = slab[(slice(None),) * (j - depth) + (slice(a, b),)]
                index[where[depth]] = slice(h - first, end - first)
                transpose_into(slab, axes, out[tuple(index)])
                del slab  # unmap it before the next one is mapped

    def _slab(self, prefix: tuple[int, ...], start: int, stop: int) -> np.ndarray:
        """Indices start..stop of view axis `depth` under `prefix`: the source rows that hold
        them, trimmed to shape (stop - start, *view[depth + 1:])."""
        inner = self.view[self.depth + 1 :]
        head = int(np.ravel_multi_index(prefix, self.view[: self.depth])) if prefix else 0
        begin = (head * self.view[self.depth] + start) * _prod(inner)
        count = (stop - start) * _prod(inner)
        per_row = self.tensor.size // int(self.tensor.source.shape[0])
        first = begin // per_row
        data = self.tensor.fetch(slice(first, -(-(begin + count) // per_row))).reshape(-1)
        begin -= first * per_row
        return data[begin : begin + count].reshape((stop - start, *inner))


def _prod(shape: Sequence[int]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _ahead(blocks: Generator[np.ndarray, None, None]) -> Iterator[np.ndarray]:
    """`blocks`, each computed on a worker thread while the caller writes the one before.

    NumPy copies and file writes both release the GIL, so on two cores the caller's writes
    (and checks) cost no time beside the moving of axes: fc6 as OIHW streams to a file in
    0.38 s rather than 0.47 s. The worker runs one block ahead, never more.
    """
    worker = ThreadPoolExecutor(1, thread_name_prefix="vggfcn-blocks")
    pending = worker.submit(next, blocks, None)
    try:
        while (block := pending.result()) is not None:
            pending = worker.submit(next, blocks, None)
            yield block
    finally:
        worker.shutdown()  # let the block in flight finish: a running generator cannot close
        blocks.close()  # free its slab and table now, not when garbage collected
