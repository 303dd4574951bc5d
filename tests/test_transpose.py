"""Transposes: NumPy's bytes exactly, through OpenBLAS where it can and through tiles where not."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from vggfcn import openblas
from vggfcn.transpose import merge_axes, transpose_into

#: (source shape, axes): the permutations compile makes, merged and not, and harder ones.
CASES = [
    ((300, 70, 9), (2, 1, 0)),  # a conv kernel OIHW -> HWIO, merged
    ((20, 6, 3, 3), (2, 3, 1, 0)),  # the same, as the file gives it
    ((513, 130), (1, 0)),  # a dense (out, in) -> (in, out)
    ((4, 5, 6, 7), (2, 0, 3, 1)),  # an innermost axis from the middle of the source
    ((13, 5, 4), (0, 2, 1)),  # the first axis kept
    ((6, 7, 8), (1, 0, 2)),  # the innermost axis kept: runs copied whole
    ((1, 40, 1), (2, 1, 0)),
]


@pytest.fixture(params=["openblas", "tiles"])
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each test runs with OpenBLAS's transpose and with NumPy tiles alone."""
    if request.param == "tiles":
        monkeypatch.setenv("VGGFCN_NO_OPENBLAS", "1")
    openblas._kernel.cache_clear()
    yield str(request.param)
    openblas._kernel.cache_clear()  # found again, as the environment is restored, next time


def _data(shape: tuple[int, ...], dtype: str = "<f4") -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


def test_numpys_own_openblas_is_used_where_numpy_ships_it() -> None:
    # PyPI wheels (what CI installs) bundle scipy-openblas: the speed of every conversion that
    # moves axes rests on finding its transpose there
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]  # type: ignore[func-returns-value]
    if blas["name"].startswith("scipy-openblas"):
        assert openblas.available()
    else:
        assert not openblas.available() or blas["name"].startswith("openblas")


@pytest.mark.parametrize(("shape", "axes"), CASES)
def test_transpose_into_equals_numpy(
    kernel: str, shape: tuple[int, ...], axes: tuple[int, ...]
) -> None:
    source = _data(shape)
    out = np.empty(tuple(shape[a] for a in axes), np.float32)
    transpose_into(source, axes, out)
    np.testing.assert_array_equal(out, source.transpose(axes))


def test_unaligned_strided_and_non_float32_sources(kernel: str) -> None:
    data = _data((40, 9 * 12))
    raw = np.frombuffer(b"\0" + data.tobytes(), np.uint8, offset=1)
    unaligned = raw.view("<f4").reshape(40, 12, 9)  # a Caffe blob at an odd file offset
    strided = np.zeros((40, 12, 20), np.float32)[:, :, 3:12]
    strided[...] = data.reshape(40, 12, 9)
    half = data.astype("<f2").reshape(40, 12, 9)
    for source in (unaligned, strided, half):
        out = np.empty((9, 12, 40), np.float32)
        transpose_into(source, (2, 1, 0), out)
        np.testing.assert_array_equal(out, source.astype(np.float32).transpose(2, 1, 0))


def test_a_strided_output_is_written_only_where_it_lies(kernel: str) -> None:
    source = _data((30, 50))
    canvas = np.full((60, 40), -1.0, np.float32)
    transpose_into(source, (1, 0), canvas[5:55, 4:34])
    np.testing.assert_array_equal(canvas[5:55, 4:34], source.T)
    canvas[5:55, 4:34] = -1
    assert (canvas == -1).all()


def test_openblas_takes_only_what_it_can_do_exactly() -> None:
    a = _data((6, 10))
    out = np.full((10, 6), -1.0, np.float32)
    if not openblas.available():  # a NumPy without it: nothing is done, the tiles do it all
        assert not openblas.transpose(a, out) and (out == -1).all()
        return
    assert openblas.transpose(a, out)
    np.testing.assert_array_equal(out, a.T)
    unaligned = np.frombuffer(b"\0" + a.tobytes(), np.uint8, offset=1).view("<f4").reshape(6, 10)
    refused = [
        (a.astype(np.float64), out),  # another dtype
        (a[:, ::2], out[:5]),  # elements not contiguous in a row
        (unaligned, out),  # not 4-byte aligned
        (np.broadcast_to(a[:1], (6, 10)), out),  # rows that overlap
        (a, out[:, :5]),  # the wrong shape
    ]
    for source, target in refused:
        target[...] = -1
        assert not openblas.transpose(source, target)
        assert (target == -1).all()
    with pytest.raises(ValueError, match="read-only"):
        openblas.transpose(a, np.broadcast_to(out, out.shape))


def test_neighbouring_axes_merge() -> None:
    assert merge_axes((7, 7, 512, 4096), (3, 2, 0, 1)) == ((49, 512, 4096), (2, 1, 0))
    assert merge_axes((64, 3, 3, 3), (2, 3, 1, 0)) == ((64, 3, 9), (2, 1, 0))
    assert merge_axes((4, 5), (0, 1)) == ((20,), (0,))
