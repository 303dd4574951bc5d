"""Lazy tensors: reshapes and permutations, composed without reading, read exactly."""

from __future__ import annotations

import numpy as np

from vggfcn.tensor import Tensor


def _tensor(shape: tuple[int, ...]) -> tuple[np.ndarray, Tensor]:
    data = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    return data, Tensor.wrap(data, "t")


def test_permute_reads_like_numpy_transpose() -> None:
    data, t = _tensor((6, 5, 3, 2))
    p = t.permute(t.shape, (2, 3, 1, 0))
    assert p.shape == (3, 2, 5, 6)
    np.testing.assert_array_equal(p.read(), data.transpose(2, 3, 1, 0))
    blocks = np.concatenate([b.reshape(-1) for b in p.blocks(64)])
    np.testing.assert_array_equal(blocks, data.transpose(2, 3, 1, 0).reshape(-1))


def test_inverse_permutations_compose_to_the_source() -> None:
    data, t = _tensor((6, 5, 3, 2))
    back = t.permute(t.shape, (2, 3, 1, 0)).permute((3, 2, 5, 6), (3, 2, 0, 1))
    assert back.order is None and back.source is data
    np.testing.assert_array_equal(back.read(), data)


def test_composition_ignores_unit_axes_and_reshapes() -> None:
    data, t = _tensor((7, 4))  # torch (out, in)
    dense = t.permute((7, 4), (1, 0))  # (in, out)
    as_conv = dense.reshape((1, 1, 4, 7)).permute((1, 1, 4, 7), (3, 2, 0, 1))  # OIHW (7, 4, 1, 1)
    assert as_conv.order is None
    np.testing.assert_array_equal(as_conv.read(), data.reshape(7, 4, 1, 1))


def test_permutation_after_an_incompatible_reshape_is_materialised_correctly() -> None:
    data, t = _tensor((4, 6))
    p = t.permute((4, 6), (1, 0)).reshape((3, 8)).permute((3, 8), (1, 0))
    np.testing.assert_array_equal(p.read(), data.T.reshape(3, 8).T)
