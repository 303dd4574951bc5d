"""Tensor.blocks and Tensor.pieces: permuted tensors stream exactly, in bounded memory."""

from __future__ import annotations

import threading
import tracemalloc
from collections.abc import Generator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from vggfcn import bands
from vggfcn.errors import FormatError
from vggfcn.formats.region import FileRegion
from vggfcn.tensor import Tensor

#: name -> (source shape, view, axes): the orders compile makes, and harder ones.
ORDERS: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {
    "HWIO->OIHW": ((7 * 7 * 6, 20), (7, 7, 6, 20), (3, 2, 0, 1)),
    "(out,in)->(in,out)": ((20, 33), (20, 33), (1, 0)),
    "CHW rows->HWIO": ((6 * 7 * 7, 20), (6, 7, 7, 20), (1, 2, 0, 3)),
    "OIHW->HWIO": ((20, 6, 3, 3), (20, 6, 3, 3), (2, 3, 1, 0)),
    # a slab holds 20 whole kernels, so a chunk is gathered in output order, and an output
    # row (2 KiB) is larger than a block: blocks are cut from inside rows
    "OIHW->HWIO, wide slabs": ((128, 4, 3, 3), (128, 4, 3, 3), (2, 3, 1, 0)),
    "first axis kept": ((13, 5, 4), (13, 5, 4), (0, 2, 1)),
    "no axis stays put": ((4, 5, 6, 7), (4, 5, 6, 7), (2, 0, 3, 1)),
    "unit axes": ((5, 9), (5, 1, 9, 1), (2, 3, 1, 0)),
    "two view rows per source row": ((5, 24), (10, 12), (1, 0)),
    "view rows straddle source rows": ((8, 15), (12, 10), (1, 0)),
    "flat source": ((210,), (5, 6, 7), (1, 2, 0)),
}
#: name -> a block size at which the order streams (every row involved fits in it, the
#: tensor does not) yet makes several blocks and several slabs.
STREAMS_AT = {
    "HWIO->OIHW": 1200,
    "(out,in)->(in,out)": 200,
    "CHW rows->HWIO": 4000,
    "OIHW->HWIO": 500,
    "OIHW->HWIO, wide slabs": 6000,
    "first axis kept": 100,
    "no axis stays put": 900,
    "unit axes": 40,
    "two view rows per source row": 100,
    "view rows straddle source rows": 64,
    "flat source": 200,
}


class Recorder:
    """A source that notes how it is read (whole, and the largest row slice), like an h5py
    dataset would be read; in constant memory, so that the notes do not count as the reader's.
    """

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.dtype = data, data.shape, data.dtype
        self.reads, self.whole, self.largest = 0, False, 0  # largest: bytes

    def __getitem__(self, key: Any) -> np.ndarray:
        data = np.array(self.data[key])  # a copy, as a file read would be
        self.reads += 1
        self.whole |= key == ()
        self.largest = max(self.largest, data.nbytes)
        return data


def _expected(source: np.ndarray, view: tuple[int, ...], axes: tuple[int, ...]) -> np.ndarray:
    permuted = source.astype(np.float32).reshape(view).transpose(axes)
    return np.ascontiguousarray(permuted).reshape(-1)


def _stream(tensor: Tensor, max_bytes: int) -> np.ndarray:
    """The concatenated blocks, checking each is float32 and within `max_bytes`."""
    blocks = list(tensor.blocks(max_bytes))
    for block in blocks:
        assert block.dtype == np.float32
        assert block.nbytes <= max_bytes
    return np.concatenate([b.reshape(-1) for b in blocks])


def _data(shape: tuple[int, ...], dtype: str = "<f4") -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("max_bytes", [4, 64, 200, 1000, 5000, 1 << 20])
@pytest.mark.parametrize("name", ORDERS)
def test_blocks_are_the_permuted_tensors_bytes(name: str, max_bytes: int) -> None:
    shape, view, axes = ORDERS[name]
    data = _data(shape)
    tensor = Tensor.wrap(data, name).permute(view, axes)
    np.testing.assert_array_equal(_stream(tensor, max_bytes), _expected(data, view, axes))
    np.testing.assert_array_equal(tensor.read().reshape(-1), _expected(data, view, axes))


@pytest.mark.parametrize("max_bytes", [4, 200, 5000])
@pytest.mark.parametrize("name", ORDERS)
def test_pieces_put_in_place_are_the_permuted_tensors_bytes(
    name: str, max_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bands, "_MIN_RUN", 0)  # let the outer-axes swaps move in bands
    shape, view, axes = ORDERS[name]
    data = _data(shape)
    out = np.full(data.size, np.nan, np.float32)
    for offsets, rows in Tensor.wrap(data, name).permute(view, axes).pieces(max_bytes):
        for offset, row in zip(offsets.tolist(), rows.reshape(len(rows), -1), strict=True):
            assert np.isnan(out[offset : offset + row.size]).all()  # each element once
            out[offset : offset + row.size] = row
    np.testing.assert_array_equal(out, _expected(data, view, axes))


@pytest.mark.parametrize("name", ORDERS)
def test_streamed_orders_read_the_source_in_bounded_slices(name: str) -> None:
    shape, view, axes = ORDERS[name]
    max_bytes = STREAMS_AT[name]
    source = Recorder(_data(shape))
    streamed = _stream(Tensor.wrap(source, name).permute(view, axes), max_bytes)
    np.testing.assert_array_equal(streamed, _expected(source.data, view, axes))
    assert not source.whole
    assert source.largest <= 2 * max_bytes
    assert source.reads > 1


def test_composed_orders_stream_as_one() -> None:
    data = _data((6 * 7 * 7, 20))
    tensor = Tensor.wrap(data, "fc").permute((6, 7, 7, 20), (1, 2, 0, 3))  # CHW rows -> HWIO
    oihw = tensor.permute((7, 7, 6, 20), (3, 2, 0, 1))
    expected = data.reshape(6, 7, 7, 20).transpose(1, 2, 0, 3).transpose(3, 2, 0, 1)
    np.testing.assert_array_equal(_stream(oihw, 700), expected.reshape(-1))


@pytest.mark.parametrize("dtype", ["<f2", ">f4", "<f8"])
def test_other_float_types_stream_as_float32_like_read(dtype: str) -> None:
    data = _data((7 * 7 * 6, 20), dtype)
    tensor = Tensor.wrap(data, "fc6").permute((7, 7, 6, 20), (3, 2, 0, 1))
    np.testing.assert_array_equal(_stream(tensor, 1200), tensor.read().reshape(-1))


def test_a_memory_mapped_file_streams_exactly(tmp_path: Path) -> None:
    data = _data((7 * 7 * 8, 24))
    path = tmp_path / "fc6.bin"
    path.write_bytes(b"\0" * 12 + data.tobytes())
    region = FileRegion(str(path), 12, data.shape, np.dtype("<f4"))
    tensor = Tensor.wrap(region, "fc6").reshape((7, 7, 8, 24)).permute((7, 7, 8, 24), (3, 2, 0, 1))
    np.testing.assert_array_equal(
        _stream(tensor, 2048), _expected(data, (7, 7, 8, 24), (3, 2, 0, 1))
    )


def test_an_h5py_dataset_streams_exactly(tmp_path: Path) -> None:
    data = _data((30, 7 * 7 * 4), "<f2")  # torch-style (out, in) rows, CHW inputs
    with h5py.File(tmp_path / "w.h5", "w") as f:
        f["fc6"] = data
        tensor = Tensor.wrap(f["fc6"], "w.h5:/fc6").permute((30, 4, 7, 7), (2, 3, 1, 0))
        streamed = _stream(tensor, 1024)
    np.testing.assert_array_equal(streamed, _expected(data, (30, 4, 7, 7), (2, 3, 1, 0)))


def test_a_large_permuted_tensor_streams_in_a_few_blocks_of_memory() -> None:
    # fc6 at 1/8 of its width and 1/4 of its height (12.8 MB) through 128 KiB blocks: holding
    # the whole tensor, or a transposed copy of it, would cost 100 blocks' worth of memory.
    max_bytes = 128 << 10
    source = Recorder(_data((7 * 7 * 64, 1024)))
    tensor = Tensor.wrap(source, "fc6").reshape((7, 7, 64, 1024))
    tensor = tensor.permute((7, 7, 64, 1024), (3, 2, 0, 1))
    expected = _expected(source.data, (7, 7, 64, 1024), (3, 2, 0, 1))
    tracemalloc.start()
    try:
        start = 0
        for block in tensor.blocks(max_bytes):
            flat = block.reshape(-1)
            assert np.array_equal(flat, expected[start : start + flat.size])
            start += flat.size
            del block, flat  # a writer keeps no block once written
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert start == expected.size
    assert not source.whole
    assert source.largest <= max_bytes
    # a stream holds at most 4 blocks' worth (its table, a slab, the blocks in flight), plus
    # rounding; `expected` is not traced (allocated before tracing started)
    assert peak <= 5 * max_bytes


def test_an_order_too_coarse_to_stream_is_still_exact() -> None:
    # one output row (all 40 x 30 elements of view axes 0 and 1) is larger than a block, so
    # the tensor is transposed whole
    data = _data((40, 30, 2))
    tensor = Tensor.wrap(data, "t").permute((40, 30, 2), (2, 0, 1))
    np.testing.assert_array_equal(_stream(tensor, 512), _expected(data, (40, 30, 2), (2, 0, 1)))


def _workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("vggfcn-blocks")]


def test_abandoning_a_stream_stops_its_worker() -> None:
    data = _data((7 * 7 * 6, 20))
    tensor = Tensor.wrap(data, "fc6").permute((7, 7, 6, 20), (3, 2, 0, 1))
    blocks = tensor.blocks(1200)
    assert isinstance(blocks, Generator)
    assert next(blocks).size > 0 and _workers()
    blocks.close()  # as when a writer fails mid-tensor
    assert not _workers()


class _Failing(Recorder):
    """A source whose third read fails like a corrupt HDF5 chunk."""

    def __getitem__(self, key: Any) -> np.ndarray:
        if self.reads == 2:
            raise OSError("Can't read data (inflate() failed)\nmore detail")
        return super().__getitem__(key)


def test_a_read_error_while_streaming_names_the_tensor() -> None:
    source = _Failing(_data((7 * 7 * 6, 20)))
    tensor = Tensor.wrap(source, "w.h5:/fc6").permute((7, 7, 6, 20), (3, 2, 0, 1))
    with pytest.raises(FormatError, match=r"w\.h5:/fc6: cannot read data \(Can't read data"):
        list(tensor.blocks(1200))
    assert not _workers()


def test_transposed_blocks_are_whole_cache_lines_of_output_rows() -> None:
    # HWIO -> OIHW gathers output rows innermost in a table and transposes its columns into
    # blocks: blocks of a multiple of 16 rows (and passes of whole blocks) make every column
    # start on a 64-byte line. 1000 rows of 72 elements: 56 rows fit a 16 KiB block, 48 are used.
    data = _data((3 * 3 * 8, 1000))
    tensor = Tensor.wrap(data, "k").reshape((3, 3, 8, 1000)).permute((3, 3, 8, 1000), (3, 2, 0, 1))
    blocks = list(tensor.blocks(64 << 10))
    rows = [block.shape[0] for block in blocks]
    assert rows[:-1] == [48] * (len(rows) - 1) and 0 < rows[-1] <= 48
    flat = np.concatenate([b.reshape(-1) for b in blocks])
    np.testing.assert_array_equal(flat, _expected(data, (3, 3, 8, 1000), (3, 2, 0, 1)))
