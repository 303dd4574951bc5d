"""Kernel layouts, named by their axes, and every axis permutation between them.

A layout is the string of its axes' letters, outermost first: `HWIO` (Keras, TensorFlow, JAX and
the FCN's own), `OIHW` (PyTorch's `nn.Conv2d`, Caffe, ONNX), `IO` and `OI` for dense kernels
((in, out) Keras, (out, in) PyTorch/Caffe). H and W are the kernel's rows and columns, I its
input channels (or features), O its outputs. Which axis holds what, and the permutation from one
layout to another, are derived from the letters here and written nowhere else: a second, typed
copy of `(2, 3, 1, 0)` would be a bug waiting for the day one of them changes.

The referee (`referee`) is the one deliberate exception: it spells out its own axis handling,
because its independence from this module and from compile is what makes `verify` a proof.
"""

from __future__ import annotations

from typing import Literal

#: How a file stores a convolution kernel.
KernelLayout = Literal["HWIO", "OIHW"]
#: How a file stores a dense kernel.
DenseLayout = Literal["IO", "OI"]
Layout = KernelLayout | DenseLayout


def permutation(source: str, target: str) -> tuple[int, ...]:
    """The `transpose` axes that turn an array laid out as `source` into `target`.

    >>> permutation("OIHW", "HWIO")
    (2, 3, 1, 0)
    >>> permutation("HWIO", "OIHW")
    (3, 2, 0, 1)

    Raises:
        ValueError: the two do not name the same axes.
    """
    if sorted(source) != sorted(target) or len(set(source)) != len(source):
        raise ValueError(f"{source} and {target} are not permutations of the same axes")
    return tuple(source.index(axis) for axis in target)


def out_axis(layout: str) -> int:
    """The axis holding a kernel's outputs (filters, units)."""
    return layout.index("O")


def in_axis(layout: str) -> int:
    """The axis holding a kernel's inputs (channels, features)."""
    return layout.index("I")


def shape_in(layout: str, sizes: dict[str, int]) -> tuple[int, ...]:
    """The shape of a kernel with these axis sizes, in `layout`.

    >>> shape_in("OIHW", {"H": 3, "W": 3, "I": 64, "O": 128})
    (128, 64, 3, 3)
    """
    return tuple(sizes[axis] for axis in layout)


def sizes_of(layout: str, shape: tuple[int, ...]) -> dict[str, int]:
    """Axis letter -> size, for a kernel of `shape` stored in `layout`."""
    return dict(zip(layout, shape, strict=True))
