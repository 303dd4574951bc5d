"""Out-of-order streaming: fc6 between OIHW and HWIO in bands of channels, each piece written
where it belongs, every source byte read once, in bounded memory."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import vggfcn.formats.blocks
from vggfcn import bands
from vggfcn.bands import Bands
from vggfcn.errors import FormatError
from vggfcn.formats.blocks import write_tensor
from vggfcn.formats.region import FileRegion
from vggfcn.tensor import Tensor

#: Caffe's fc6 at a small size: 24 outputs, 10 channels, 3x3 taps, OIHW -> HWIO
OIHW, HWIO = (24, 10, 3, 3), (2, 3, 1, 0)
MAX_BYTES = 1200  # bands of 4 channels (3 bands), source read 2 rows at a time


@pytest.fixture(autouse=True)
def small(monkeypatch: pytest.MonkeyPatch) -> None:
    """At test sizes every output row is short: let bands take them as they take fc6's, and
    let writers stream in blocks of MAX_BYTES."""
    monkeypatch.setattr(bands, "_MIN_RUN", 0)
    monkeypatch.setattr(vggfcn.formats.blocks, "BLOCK_BYTES", MAX_BYTES)


def _data(shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(1).standard_normal(shape).astype("<f4")


def _region(tmp_path: Path, data: np.ndarray, offset: int) -> FileRegion:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"\x11" * offset + data.tobytes() + b"\x22" * 5)
    return FileRegion(str(path), offset, data.shape, np.dtype("<f4"))


def _assemble(tensor: Tensor, max_bytes: int) -> tuple[np.ndarray, int]:
    """The tensor put together from its pieces, each element written exactly once; and how
    many times the pieces came as more than one row."""
    out = np.full(tensor.size, np.nan, np.float32)
    written = np.zeros(tensor.size, np.int64)
    banded = 0
    for offsets, rows in tensor.pieces(max_bytes):
        assert rows.dtype == np.float32 and len(offsets) == len(rows)
        banded += len(rows) > 1
        for offset, row in zip(offsets.tolist(), rows.reshape(len(rows), -1), strict=True):
            out[offset : offset + row.size] = row
            written[offset : offset + row.size] += 1
    assert (written == 1).all()
    return out, banded


def _plan(tensor: Tensor) -> Bands | None:
    return Bands.plan(tensor.source, tensor.order, MAX_BYTES)


@pytest.mark.parametrize("offset", [0, 3])
def test_a_file_region_moves_in_bands_exactly(tmp_path: Path, offset: int) -> None:
    data = _data((24, 10 * 3 * 3))  # the file's (out, in) rows, columns in (C, H, W) order
    tensor = Tensor.wrap(_region(tmp_path, data, offset), "fc6").permute(OIHW, HWIO)
    plan = _plan(tensor)
    assert plan is not None and (plan.band, plan.rows) == (4, 2)
    out, banded = _assemble(tensor, MAX_BYTES)
    np.testing.assert_array_equal(out, data.reshape(OIHW).transpose(HWIO).reshape(-1))
    assert banded == 3


def test_the_other_direction_and_an_array_in_memory() -> None:
    data = _data((3, 3, 10, 24))  # Keras HWIO -> OIHW
    tensor = Tensor.wrap(data.reshape(90, 24), "fc6").permute(data.shape, (3, 2, 0, 1))
    out, banded = _assemble(tensor, MAX_BYTES)
    np.testing.assert_array_equal(out, data.transpose(3, 2, 0, 1).reshape(-1))
    assert banded > 1


def test_orders_and_sources_that_bands_leave_to_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _data((24, 90))
    oihw = Tensor.wrap(data, "fc6").permute(OIHW, HWIO)
    assert _plan(Tensor.wrap(data, "fc6").permute((24, 90), (1, 0))) is None
    assert _plan(Tensor.wrap(data.astype("<f2"), "fc6").permute(OIHW, HWIO)) is None
    assert _plan(Tensor.wrap(data, "fc6")) is None  # nothing to move
    strided = np.zeros((24, 180), "<f4")[:, ::2]
    assert _plan(Tensor.wrap(strided, "fc6").permute(OIHW, HWIO)) is None
    monkeypatch.setattr(bands, "_MIN_RUN", 4 * 24 * 4 + 1)  # output rows of a band: 4 * 24
    assert _plan(oihw) is None
    out, banded = _assemble(oihw, MAX_BYTES)  # in order, as blocks
    np.testing.assert_array_equal(out, data.reshape(OIHW).transpose(HWIO).reshape(-1))
    assert banded == 0


def test_bands_hold_a_few_blocks_of_memory(tmp_path: Path) -> None:
    # fc6 at 1/8 of its channels and 1/16 of its outputs (12.8 MB) through 128 KiB blocks
    max_bytes = 128 << 10
    data = _data((256, 64 * 49))
    tensor = Tensor.wrap(_region(tmp_path, data, 1), "fc6").permute((256, 64, 7, 7), HWIO)
    expected = data.reshape(256, 64, 7, 7).transpose(HWIO).reshape(-1)
    tracemalloc.start()
    try:
        for offsets, rows in tensor.pieces(max_bytes):
            for offset, row in zip(offsets.tolist(), rows, strict=True):
                assert np.array_equal(row, expected[offset : offset + row.size].reshape(row.shape))
            del rows
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the band's table (3 blocks) and a batch of source rows (a quarter)
    assert peak <= 3.5 * max_bytes


def test_write_tensor_puts_each_piece_in_place(tmp_path: Path) -> None:
    data = _data((24, 90))
    tensor = Tensor.wrap(_region(tmp_path, data, 5), "fc6").permute(OIHW, HWIO)
    expected = data.reshape(OIHW).transpose(HWIO)
    done: list[int] = []
    path = tmp_path / "out.bin"
    with open(path, "wb") as f:
        f.write(b"head")  # the writer's own bytes before the tensor, still buffered
        write_tensor(f, tensor, progress=done.append)
        f.write(b"tail")
    assert path.read_bytes() == b"head" + expected.tobytes() + b"tail"
    assert sum(done) == data.nbytes and len(done) == 3
    with open(path, "wb") as f:
        write_tensor(f, tensor, dtype="float16")
    assert path.read_bytes() == expected.astype("<f2").tobytes()


def test_short_writes_are_carried_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The OS may write less than asked (a signal, a pipe-like file): the rest follows."""
    data = _data((24, 90))
    tensor = Tensor.wrap(_region(tmp_path, data, 0), "fc6").permute(OIHW, HWIO)
    real = os.pwritev

    def stingy(fd: int, buffers: list[memoryview], position: int) -> int:
        return real(fd, [bytes(buffers[0][:7])], position)  # 7 bytes of the first buffer

    monkeypatch.setattr(os, "pwritev", stingy)
    path = tmp_path / "out.bin"
    with open(path, "wb") as f:
        write_tensor(f, tensor)
    assert path.read_bytes() == data.reshape(OIHW).transpose(HWIO).tobytes()


def test_nonfinite_values_are_counted_across_bands(tmp_path: Path) -> None:
    data = _data((24, 90))
    data[0, 0] = data[23, 89] = np.nan  # in the first band and the last
    data[10, 45] = np.inf
    tensor = Tensor.wrap(_region(tmp_path, data, 0), "m.caffemodel:fc6").permute(OIHW, HWIO)
    with open(tmp_path / "out.bin", "wb") as f, pytest.raises(FormatError, match=r"fc6: 3 NaN"):
        write_tensor(f, tensor)
    with open(tmp_path / "out.bin", "wb") as f:
        write_tensor(f, tensor, allow_nonfinite=True)


def test_runs_are_read_from_the_region_only(tmp_path: Path) -> None:
    data = _data((4, 10))
    region = _region(tmp_path, data, 3)
    out = np.empty((2, 12), np.uint8)
    region.read_runs(np.array([4, 100]), out)
    raw = data.tobytes()
    assert out.tobytes() == raw[4:16] + raw[100:112]
    with pytest.raises(ValueError, match="leave the region"):
        region.read_runs(np.array([150]), out[:1])
    Path(region.path).write_bytes(b"\x11" * 10)  # the file shrinks under us
    with pytest.raises(FormatError, match=r"blob\.bin: cannot read data \(unexpected end"):
        region.read_runs(np.array([0]), out[:1])
