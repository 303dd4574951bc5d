"""Canonical weights: the one in-memory description of a VGG that every reader produces.

One layout, whatever the file: conv kernels HWIO, dense kernels (in, out) with fc6 rows in
(H, W, C) order, float32 on read. Tensors stay lazy (an h5py dataset, a memory map) until
someone reads them, so converting never needs the whole model in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .arch import HEAD_NAMES, PLANS, Arch, plan_for_conv_count
from .errors import ArchitectureError, FormatError
from .transpose import permuted_shape, transpose_into

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
        data = np.asarray(self._slice(()))
        if self.order is None:
            return np.ascontiguousarray(data, dtype=F32).reshape(self.shape)
        view, axes = self.order
        out = np.empty(permuted_shape(view, axes), dtype=F32)
        transpose_into(data.reshape(view), axes, out)
        return out.reshape(self.shape)

    def blocks(self, max_bytes: int) -> Iterator[np.ndarray]:
        """float32 blocks whose concatenated bytes are the tensor's C-order bytes.

        Without an `order`, blocks are whole source rows and memory stays near `max_bytes` however
        large the tensor is. With one, the tensor is transposed once into memory (a blocked
        copy, no temporaries) and handed out in slices.
        """
        if self.size == 0:
            return
        if self.order is not None or len(self.source.shape) == 0:
            flat = self.read().reshape(-1)
            step = max(1, max_bytes // F32.itemsize)
            for start in range(0, flat.size, step):
                yield flat[start : start + step]
            return
        rows = int(self.source.shape[0])
        row_bytes = max(1, self.size // rows) * F32.itemsize
        step = max(1, max_bytes // row_bytes)
        for start in range(0, rows, step):
            yield np.ascontiguousarray(self._slice(slice(start, start + step)), dtype=F32)

    def _slice(self, key: Any) -> np.ndarray:
        """Read from the source, turning a corrupt file's low-level error into ours."""
        try:
            return np.asarray(self.source[key])
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
            # h5py's errors on a corrupt dataset; the first line says enough
            message = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise FormatError(f"{self.where}: cannot read data ({message})") from None


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


@dataclass(frozen=True)
class BatchNorm:
    """Inference-time batch normalisation after a convolution (torchvision's `_bn` VGGs):
    y = (x - mean) / sqrt(var + eps) * gamma + beta, per output channel."""

    gamma: Tensor
    beta: Tensor
    mean: Tensor
    var: Tensor
    eps: float

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.gamma, self.beta, self.mean, self.var


@dataclass(frozen=True)
class Layer:
    """One learned layer: canonical name, kernel, bias, what the file called it, and the batch
    norm that follows it in the original network (None when there is none, or once folded)."""

    name: str
    kernel: Tensor
    bias: Tensor
    file_name: str
    norm: BatchNorm | None = None


@dataclass(frozen=True)
class SourceInfo:
    """Where a network came from, for reports and the output's metadata.

    Attributes:
        path: the file as the user named it.
        format: detected container, e.g. "keras-h5", "vggfcn-safetensors".
        generation: the writer's layout within the format, e.g. "keras1", "keras3-weights".
        softmax: whether the file's last layer applied a softmax; None when the file does not say.
        flatten_order: order of fc6 rows in the file before normalisation ("HWC" for Keras).
        batch_norm: "none"; "yes" for an original with batch norms; "folded (eps=...)" once
            `to_fcn` has folded them into the convolutions.
    """

    path: str
    format: str
    generation: str
    softmax: bool | None
    flatten_order: str
    batch_norm: str = "none"  # "none", or how the original's batch norms were handled
    precision: str = "float32"  # storage dtype of a converted file's weights

    @property
    def softmax_label(self) -> str:
        """How reports and metadata spell `softmax`: yes, no or unknown."""
        return {True: "yes", False: "no", None: "unknown"}[self.softmax]


@dataclass(frozen=True)
class VGGWeights:
    """A whole VGG in canonical layout: 3x3 trunk convolutions, then the three-layer head.

    `convolutional_head` tells which form the head has: dense kernels (in, out) for the original
    classifier, HWIO kernels (7,7,C,F6), (1,1,F6,F7), (1,1,F7,K) for the converted network.
    """

    arch: Arch
    trunk: tuple[Layer, ...]
    head: tuple[Layer, ...]
    convolutional_head: bool
    source: SourceInfo

    @property
    def layers(self) -> tuple[Layer, ...]:
        return self.trunk + self.head


@dataclass(frozen=True)
class RawLayer:
    """A reader's view of one weighted layer before the architecture is known."""

    file_name: str
    kernel: Tensor
    bias: Tensor
    norm: BatchNorm | None = None


def check_names(
    path: str, found: set[str], expected: set[str], shapes: Mapping[str, str] | None = None
) -> None:
    """Refuse a checkpoint whose tensor names differ from the expected set, listing every
    missing name (with its expected shape where `shapes` knows it) and every unexpected one.

    Raises:
        ArchitectureError: some names are missing or unexpected.
    """
    missing, extra = sorted(expected - found), sorted(found - expected)
    shapes = shapes or {}
    if missing or extra:
        named = [f"{n} {shapes[n]}" if n in shapes else n for n in missing]
        parts = ([f"missing {', '.join(named)}"] if missing else []) + (
            [f"unexpected {', '.join(extra)}"] if extra else []
        )
        raise ArchitectureError(f"{path}: " + "; ".join(parts))


def assemble(
    trunk: Sequence[RawLayer],
    head: Sequence[RawLayer],
    source: SourceInfo,
    *,
    convolutional_head: bool = False,
) -> VGGWeights:
    """Derive the architecture from tensor shapes and check every layer against it.

    Every problem found is reported in one message, so a user fixes a file once, not five times.

    Raises:
        ArchitectureError: no head (a "notop" file), an unknown conv count, or wrong shapes.
    """
    path = source.path
    if not trunk:
        raise ArchitectureError(f"{path}: no convolution layers found; is this a VGG checkpoint?")
    known = plan_for_conv_count(len(trunk))
    if known is None:
        counts = ", ".join(f"{n}: {sum(p)}" for n, p in PLANS.items())
        raise ArchitectureError(
            f"{path}: found {len(trunk)} convolution layers; a VGG has {counts}"
        )
    name, plan = known
    if not head:
        raise ArchitectureError(
            f"{path}: no classifier layers (fc1/fc2/predictions) found: this looks like an "
            "include_top=False ('notop') file; there is no head to convert"
        )
    if len(head) != len(HEAD_NAMES):
        found = ", ".join(r.file_name for r in head)
        raise ArchitectureError(f"{path}: expected 3 classifier layers, found {len(head)}: {found}")

    first = trunk[0].kernel.shape
    in_channels = first[2] if len(first) == 4 else 3
    layers = [*trunk, *head]
    widths = [_width(layers, i) for i in range(len(layers))]
    conv_widths, head_widths = tuple(widths[: len(trunk)]), widths[len(trunk) :]
    arch = Arch(
        name, plan, in_channels, conv_widths, (head_widths[0], head_widths[1], head_widths[2])
    )

    expected_head = arch.fcn_head_shapes() if convolutional_head else arch.dense_shapes()
    problems: list[str] = []
    for raw, want in zip([*trunk, *head], [*arch.conv_shapes(), *expected_head], strict=True):
        if raw.kernel.shape != tuple(want):
            problems.append(f"{raw.file_name} kernel has shape {raw.kernel.shape}, expected {want}")
        if raw.norm is not None:
            for part, tensor in zip(
                ("gamma", "beta", "mean", "var"), raw.norm.tensors(), strict=True
            ):
                if tensor.shape != (want[-1],):
                    problems.append(
                        f"{raw.file_name} batch-norm {part} has shape {tensor.shape}, "
                        f"expected ({want[-1]},)"
                    )
        if raw.bias.shape != (want[-1],):
            problems.append(
                f"{raw.file_name} bias has shape {raw.bias.shape}, expected ({want[-1]},)"
            )
    if problems:
        if not convolutional_head and head[0].kernel.shape[:1] != expected_head[0][:1]:
            problems.append(
                f"fc6 must read the 7x7x{arch.pool5_channels} pool5 volume "
                f"({expected_head[0][0]} inputs)"
            )
        raise ArchitectureError(f"{path}: not a {name} classifier: " + "; ".join(problems))

    named = [
        Layer(n, r.kernel, r.bias, r.file_name, r.norm)
        for n, r in zip([*arch.conv_names, *HEAD_NAMES], layers, strict=True)
    ]
    return VGGWeights(
        arch, tuple(named[: len(trunk)]), tuple(named[len(trunk) :]), convolutional_head, source
    )


def _width(layers: Sequence[RawLayer], i: int) -> int:
    """Output width of layer i, chosen so that the message names the tensor that is wrong.

    Kernel and bias usually agree. When they do not, the next layer's input width decides
    which one to believe: a transposed fc6 kernel then reads "expected (25088, 4096)" instead of
    turning every later layer into an error.
    """
    kernel, bias = layers[i].kernel.shape, layers[i].bias.shape
    candidates = [int(d) for d in (kernel[-1:] + bias[-1:])]
    if not candidates:
        return 0
    if len(set(candidates)) > 1 and i + 1 < len(layers):
        following = layers[i + 1].kernel.shape
        if len(following) >= 2 and following[-2] in candidates:
            return int(following[-2])
    return candidates[-1]
