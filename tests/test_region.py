"""Raw regions are memory-mapped: exact bytes at any offset, and maps that go with their arrays."""

from __future__ import annotations

import gc
import mmap
from pathlib import Path

import numpy as np
import pytest

from vggfcn.errors import FormatError
from vggfcn.formats.region import FOLIO, FileRegion


def _file_with(tmp_path: Path, data: np.ndarray, offset: int) -> Path:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"\xab" * offset + data.tobytes() + b"\xcd" * 7)
    return path


@pytest.mark.parametrize("offset", [0, 3, 8, mmap.ALLOCATIONGRANULARITY - 4, 70_001])
def test_rows_at_any_offset_read_exactly(tmp_path: Path, offset: int) -> None:
    data = np.arange(6 * 1000, dtype="<f4").reshape(6, 1000) / 7
    path = _file_with(tmp_path, data, offset)
    region = FileRegion(str(path), offset, data.shape, np.dtype("<f4"))
    np.testing.assert_array_equal(region[()], data)
    np.testing.assert_array_equal(region[2:5], data[2:5])
    assert region[4:4].shape == (0, 1000)
    # a whole tensor is computed with: unaligned data is copied once so later arithmetic does
    # not take NumPy's slow unaligned path. Rows are streamed onwards, so they stay mapped.
    assert region[()].flags.aligned
    assert region[1:3].flags.aligned == (offset % 4 == 0)


def test_big_endian_and_half_precision_regions(tmp_path: Path) -> None:
    for dtype in (">f4", "<f2", ">f8"):
        data = np.linspace(-3, 3, 24, dtype=dtype).reshape(4, 6)
        path = _file_with(tmp_path, data, 5)
        np.testing.assert_array_equal(FileRegion(str(path), 5, (4, 6), np.dtype(dtype))[()], data)


def test_mapped_arrays_are_read_only_and_unmap_with_the_array(tmp_path: Path) -> None:
    data = np.ones((512, 1024), dtype="<f4")  # 2 MiB
    path = _file_with(tmp_path, data, 0)
    region = FileRegion(str(path), 0, data.shape, np.dtype("<f4"))
    array = region[()]
    with pytest.raises(ValueError, match="read-only"):
        array[0, 0] = 2
    maps = Path("/proc/self/maps")  # Linux, like the CI machines
    assert str(path) in maps.read_text()
    del array
    gc.collect()
    assert str(path) not in maps.read_text()


def test_a_file_shrunk_after_opening_is_a_clean_error(tmp_path: Path) -> None:
    data = np.ones((64, 1024), dtype="<f4")
    path = _file_with(tmp_path, data, 0)
    region = FileRegion(str(path), 0, data.shape, np.dtype("<f4"))
    path.write_bytes(b"\0" * 100)
    with pytest.raises(FormatError, match="blob.bin: cannot map"):
        region[()]


def test_unaligned_data_is_read_not_mapped_and_stays_read_only(tmp_path: Path) -> None:
    """Unaligned weights are read into an aligned array, with no map of the file left behind
    (a map and a copy of a 400 MB tensor at once doubled verify's memory on .keras files)."""
    data = np.arange(512 * 1024, dtype="<f4").reshape(512, 1024)
    path = _file_with(tmp_path, data, 3)
    region = FileRegion(str(path), 3, data.shape, np.dtype("<f4"))
    array = region[()]
    np.testing.assert_array_equal(array, data)
    assert array.flags.aligned and not array.flags.writeable
    assert str(path) not in Path("/proc/self/maps").read_text()
    path.write_bytes(b"\0" * 100)  # shrunk after the region was found
    with pytest.raises(FormatError, match="blob.bin: cannot read"):
        region[()]


def _map_of(array: np.ndarray) -> tuple[int, int]:
    """(offset of `array` in the map behind it, that map's length)."""
    base = array.base
    while isinstance(base, np.ndarray):  # views of views: down to the map itself
        base = base.base
    behind = np.frombuffer(base, np.uint8)
    return array.ctypes.data - behind.ctypes.data, behind.size


def test_long_reads_map_whole_folios_and_short_ones_only_their_pages(tmp_path: Path) -> None:
    """A read of 2 MiB or more is mapped from the 2 MiB boundary before it to the one after (or
    the file's end), so cached folios map whole; a short one maps only the pages it needs."""
    offset = FOLIO + 12_345 * 4
    data = np.arange(3 * (FOLIO // 4), dtype="<f4").reshape(3, -1)  # 3 rows of 2 MiB
    path = _file_with(tmp_path, data, offset)
    region = FileRegion(str(path), offset, data.shape, np.dtype("<f4"))
    rows = region[1:2]
    np.testing.assert_array_equal(rows, data[1:2])
    at, length = _map_of(rows)
    start = offset + FOLIO  # row 1's file offset
    assert at == start % FOLIO and (start - at + length) % FOLIO == 0
    last = region[2:3]  # ends 7 bytes before the file does: the map stops at the file's end
    np.testing.assert_array_equal(last, data[2:3])
    at, length = _map_of(last)
    assert offset + 2 * FOLIO - at + length == path.stat().st_size
    small = FileRegion(str(path), offset, (16, 4), np.dtype("<f4"))[0:2]
    at, length = _map_of(small)
    assert at == offset % mmap.ALLOCATIONGRANULARITY and length == at + 32
