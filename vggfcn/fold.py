"""Batch norms folded into a neighbouring layer's kernel: part of compile, lazy, in float64.

Inference batch norm is an affine map per feature, y = x * s + t with s = gamma / sqrt(var + eps)
and t = beta - mean * s; so is a graph file's `Affine` (an ONNX `Mul`/`Add` by per-feature
constants: a bias added apart, a batch norm exported as arithmetic), once compile has placed it
on the features axis. Either folds into the layer next to it:

- after a layer (conv/dense -> BN, as torchvision's `_bn` trunks and `Dense -> BN -> ReLU`
  heads): scale that layer's outputs, W'[..., o] = W[..., o] * s[o], b' = b * s + t;
- before a layer (BN -> dense, as `Dense(relu) -> BN -> Dense`): scale its inputs,
  W'[i, ...] = W[i, ...] * s[i], b' = b + sum_i W[i, o] * t[i] (over every tap of a conv). A
  "same"-padded conv cannot take it: its zero padding would not be shifted by t.

Kernels stay in the file's layout (compile permutes them afterwards) and are scaled as they are
read, so a folded fc6 still streams; the input-side bias, which needs the whole kernel, is
computed when first read.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ArchitectureError
from .graph import Activation, Affine, BatchNorm, Conv, Dense, Dropout, Op, Weighted
from .layouts import in_axis, out_axis
from .precision import F32
from .tensor import Tensor


def fold_batch_norms(ops: tuple[Op, ...], path: str) -> tuple[tuple[Op, ...], tuple[float, ...]]:
    """The ops with every batch norm (and features-axis `Affine`) folded into a neighbour, and
    the eps values of the batch norms folded.

    Raises:
        ArchitectureError: a batch norm with no layer it can fold into.
    """
    out: list[Op] = []
    pending: BatchNorm | Affine | None = None  # waiting for the layer whose inputs it scales
    eps: list[float] = []
    for op in ops:
        if isinstance(op, BatchNorm | Affine):
            if isinstance(op, BatchNorm):
                eps.append(op.eps)
            at = _last_layer(out)  # identities (dropout, linear) between do not matter
            if pending is None and at is not None:
                out[at] = _fold_after(out[at], op)  # type: ignore[arg-type]
            elif pending is None:
                pending = op
            else:
                raise ArchitectureError(f"{path}: {pending.name} and {op.name}: two batch norms")
        elif pending is not None and isinstance(op, Conv | Dense):
            if isinstance(op, Conv) and op.padding == "same":
                raise ArchitectureError(
                    f"{path}: {pending.name} comes before the padded convolution {op.name}; "
                    "it cannot be folded into it"
                )
            out.append(_fold_before(pending, op))
            pending = None
        elif pending is not None and not _identity(op):
            raise ArchitectureError(
                f"{path}: {pending.name} is followed by {op.name} before any layer it could be "
                "folded into"
            )
        else:
            out.append(op)
    if pending is not None:
        raise ArchitectureError(f"{path}: {pending.name} ends the network; nothing to fold it into")
    return tuple(out), tuple(eps)


def _last_layer(ops: list[Op]) -> int | None:
    """Index of the last op if it is a layer, looking past identities; None otherwise."""
    for i in range(len(ops) - 1, -1, -1):
        if isinstance(ops[i], Conv | Dense):
            return i
        if not _identity(ops[i]):
            return None
    return None


def _identity(op: Op) -> bool:
    return isinstance(op, Dropout) or (isinstance(op, Activation) and op.kind == "linear")


def _affine(norm: BatchNorm | Affine) -> tuple[np.ndarray | None, np.ndarray]:
    """(s, t) of y = x * s + t, in float64; s None when it is 1 (an `Affine` that only adds)."""
    if isinstance(norm, Affine):
        scale = None if norm.scale is None else norm.scale.read().astype(np.float64)
        width = (norm.shift or norm.scale).shape[0]  # type: ignore[union-attr]
        shift = np.zeros(width) if norm.shift is None else norm.shift.read().astype(np.float64)
        return scale, shift
    mean, var = (t.read().astype(np.float64) for t in (norm.mean, norm.var))
    gamma = np.ones_like(mean) if norm.gamma is None else norm.gamma.read().astype(np.float64)
    beta = np.zeros_like(mean) if norm.beta is None else norm.beta.read().astype(np.float64)
    scale = gamma / np.sqrt(var + norm.eps)
    return scale, beta - mean * scale


def _bias(op: Weighted, width: int) -> np.ndarray:
    if op.bias is None:
        return np.zeros(width)
    return op.bias.read().astype(np.float64)


def _fold_after(op: Weighted, norm: BatchNorm | Affine) -> Weighted:
    scale, shift = _affine(norm)
    kernel = _scaled(op.kernel, scale, out_axis(op.layout))
    bias = (_bias(op, shift.size) * (1.0 if scale is None else scale) + shift).astype(F32)
    return _with(
        op, kernel, Tensor.wrap(bias, f"{op.bias.where if op.bias else op.name}+{norm.name}")
    )


def _fold_before(norm: BatchNorm | Affine, op: Weighted) -> Weighted:
    scale, shift = _affine(norm)
    axis = in_axis(op.layout)
    kernel = _scaled(op.kernel, scale, axis)
    width = op.kernel.shape[out_axis(op.layout)]
    source = _ShiftedBias(op.kernel, _bias(op, width), shift, axis, out_axis(op.layout))
    return _with(op, kernel, Tensor.wrap(source, f"{op.kernel.where}+{norm.name} bias"))


def _with(op: Weighted, kernel: Tensor, bias: Tensor) -> Weighted:
    if isinstance(op, Conv):
        return Conv(op.name, kernel, bias, op.layout, op.padding)
    return Dense(op.name, kernel, bias, op.layout)


def _scaled(kernel: Tensor, scale: np.ndarray | None, axis: int) -> Tensor:
    """The kernel with one axis scaled; the kernel itself (still streamed from its file) when
    there is nothing to scale."""
    if scale is None:
        return kernel
    return Tensor.wrap(_Scaled(kernel, scale, axis), f"{kernel.where}+bn")


class _Scaled:
    """A kernel with one axis multiplied by `scale` (float64), computed as rows are read."""

    dtype = F32

    def __init__(self, kernel: Tensor, scale: np.ndarray, axis: int) -> None:
        self.kernel, self.scale, self.axis = kernel, scale, axis
        self.shape = kernel.shape
        # Rows can be sliced straight from the file when the tensor is the file's own array.
        self._plain = kernel.order is None and tuple(kernel.source.shape) == kernel.shape

    def __getitem__(self, key: Any) -> np.ndarray:
        if self._plain:
            data = np.asarray(self.kernel.fetch(key), dtype=np.float64)
        else:
            data = self.kernel.read().astype(np.float64)[key]
        scale = self.scale
        if self.axis == 0 and isinstance(key, slice):
            scale = scale[key]
        shape = [1] * len(self.shape)
        shape[self.axis] = scale.size
        scaled: np.ndarray = (data * scale.reshape(shape)).astype(F32)
        return scaled


class _ShiftedBias:
    """b + sum_i W[..., i, ..., o] * t[i]: an input-side fold's bias, computed on first read."""

    dtype = F32

    def __init__(
        self, kernel: Tensor, bias: np.ndarray, shift: np.ndarray, in_axis: int, out_axis: int
    ) -> None:
        self.kernel, self.bias, self.shift = kernel, bias, shift
        self.in_axis, self.out_axis = in_axis, out_axis
        self.shape = bias.shape
        self._value: np.ndarray | None = None

    def __getitem__(self, key: Any) -> np.ndarray:
        if self._value is None:
            w = self.kernel.read().astype(np.float64)
            w = np.moveaxis(w, (self.in_axis, self.out_axis), (-2, -1))
            flat = w.reshape(-1, w.shape[-2], w.shape[-1])  # (taps, in, out)
            self._value = (self.bias + np.einsum("tio,i->o", flat, self.shift)).astype(F32)
        value: np.ndarray = self._value[key]
        return value
