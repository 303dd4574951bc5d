"""Raw regions are memory-mapped: exact bytes at any offset, and maps that go with their arrays."""

from __future__ import annotations

import gc
import mmap
from pathlib import Path

import numpy as np
import pytest

from vggfcn.errors import FormatError
from vggfcn.formats.region import FileRegion


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
