"""The source graph: a network as its file defines it, before anything is normalised.

Readers describe; they do not normalise. A reader returns the ordered ops of the network with the
file's own tensors (lazy) in the layout the file stores them — an OIHW conv stays OIHW, a torch
(out, in) dense stays (out, in), a channels-first flatten says CHW — plus what the file tells about
its input and where it came from. Two consumers read it, and nothing else does:

- compile (`convert.to_fcn`) turns it into the fully-convolutional network: every permutation,
  flatten-order resolution and fold happens there;
- the referee (`referee`) runs it op by op in the file's own conventions, which is what makes
  `verify` independent of the readers' and the compiler's axis handling.

Most files hold weights and say nothing of how activations are laid out: their graphs are
channels-last (`InputSpec.layout` NHWC, `SourceGraph.spatial` NHWC), the torch ones with a
flatten that reads the volume as (C, H, W). A graph file (ONNX) says it all, and is transcribed
as it says it: an NCHW or NHWC input, spatial ops on NCHW arrays, its `Transpose`s, a flatten
of the array as it is laid out ("array"), an `Add` or `Mul` by a constant along one of the
array's axes (`Affine`). Compile and the referee each work out, on their own, what those mean.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from .layouts import DenseLayout, KernelLayout
from .tensor import Tensor

#: The order in which a flatten reads a (H, W, C) volume: channels-last HWC, channels-first CHW,
#: or "array": the activation array as it is laid out at that point (ONNX's `Flatten`).
FlattenOrder = Literal["HWC", "CHW", "array"]
#: How a 4-D activation array is laid out: batch, then rows, columns and channels in an order.
ArrayLayout = Literal["NHWC", "NCHW"]
#: Activations between layers that the FCN can carry as they are.
ActivationKind = Literal["relu", "linear"]
#: What the file applies to its logits; the FCN outputs logits and records this.
OutputActivation = Literal["softmax", "sigmoid", "linear", "unknown"]
#: Whether an output activation is a softmax, as reports and metadata say it: "yes", "no" or
#: "unknown" (a file that does not record its output activation).
SOFTMAX_APPLIED: dict[OutputActivation, str] = {
    "softmax": "yes",
    "linear": "no",
    "sigmoid": "no",
    "unknown": "unknown",
}
ChannelOrder = Literal["rgb", "bgr", "unknown"]
#: "caffe": BGR, 0-255 minus the ImageNet BGR means; "torch": RGB /255, ImageNet mean and std.
Preprocessing = Literal["caffe", "torch", "unknown"]


@dataclass(frozen=True, eq=False)
class Conv:
    """A stride-1 convolution; `same` pads by half the kernel (VGG's 3x3 pad 1), `valid` not."""

    name: str
    kernel: Tensor
    bias: Tensor | None
    layout: KernelLayout
    padding: Literal["same", "valid"] = "same"


@dataclass(frozen=True, eq=False)
class Dense:
    """A fully-connected layer, kernel (in, out) for layout IO, (out, in) for OI."""

    name: str
    kernel: Tensor
    bias: Tensor | None
    layout: DenseLayout


@dataclass(frozen=True, eq=False)
class BatchNorm:
    """Inference batch norm over the channel (or feature) axis:
    y = (x - mean) / sqrt(var + eps) * gamma + beta; gamma/beta None when the layer has none."""

    name: str
    gamma: Tensor | None
    beta: Tensor | None
    mean: Tensor
    var: Tensor
    eps: float

    def tensors(self) -> tuple[Tensor, ...]:
        return tuple(t for t in (self.gamma, self.beta, self.mean, self.var) if t is not None)


@dataclass(frozen=True)
class MaxPool:
    """2x2 max-pool, stride 2. `ceil` rounds an odd side's output up (Caffe) instead of down."""

    name: str
    ceil: bool = False


@dataclass(frozen=True)
class Flatten:
    name: str
    order: FlattenOrder


@dataclass(frozen=True)
class GlobalAvgPool:
    """The mean over rows and columns; `keepdims`: the result stays 4-D, 1x1 (ONNX's)."""

    name: str
    keepdims: bool = False


@dataclass(frozen=True)
class GlobalMaxPool:
    """The maximum over rows and columns (KerasHub's `pooling="max"` head): a convolution only
    where it pools one cell, as it does at the size such a head was built for."""

    name: str


@dataclass(frozen=True)
class Transpose:
    """The activation array's axes moved, as `x.transpose(perm)` (a graph file's layout op)."""

    name: str
    perm: tuple[int, ...]


@dataclass(frozen=True)
class Affine:
    """x * scale + shift, each a vector broadcast along `axis` of the activation array (an
    ONNX `Mul`, `Add` or `Sub` by a constant); either may be None."""

    name: str
    scale: Tensor | None
    shift: Tensor | None
    axis: int

    def tensors(self) -> tuple[Tensor, ...]:
        return tuple(t for t in (self.scale, self.shift) if t is not None)


@dataclass(frozen=True)
class Dropout:
    """Identity at inference."""

    name: str


@dataclass(frozen=True)
class Activation:
    """An activation; `fused` when the file makes it part of the layer before it (Keras'
    `activation=` argument) or implies it without a layer of its own (a state dict's ReLUs)."""

    name: str
    kind: ActivationKind
    fused: bool = False


Op = (
    Conv
    | Dense
    | BatchNorm
    | MaxPool
    | Flatten
    | GlobalAvgPool
    | GlobalMaxPool
    | Dropout
    | Activation
    | Transpose
    | Affine
)
#: Ops that carry a kernel (and so a layer of the converted network).
Weighted = Conv | Dense


@dataclass(frozen=True)
class InputSpec:
    """What the file says about the input it expects.

    Attributes:
        size: (H, W) the model was built for; None when the file does not record it.
        size_from: how `size` is known: "file", "fan-in" (the first dense layer's inputs),
            "option" (the user's --input-size), "default" (VGG's 224x224), or "" when unknown.
        layout: how the input array is laid out (NCHW for most ONNX exports).
    """

    size: tuple[int, int] | None = None
    channels: int = 3
    channel_order: ChannelOrder = "unknown"
    preprocessing: Preprocessing = "unknown"
    size_from: str = ""
    layout: ArrayLayout = "NHWC"


@dataclass(frozen=True)
class Provenance:
    """Where a graph came from: the file, its container format and the writer's layout in it.

    Attributes:
        notes: what the reader had to assume about layers the file describes only in part
            (Caffe layers without their parameters).
        recorded: whether the file records the network's structure (a model config, a graph,
            a net definition). Files of weights alone (Keras weight files, state dicts) do not:
            the structure is the VGG family's and what the names imply.
        assumed: for those, what sits between the layers that no weight shows ("ReLU between
            dense layers"): said to the user when the head is not the stock one
            (`shapes.assumptions`).
    """

    path: str
    format: str  # "keras-h5", "keras-archive", "pytorch-zip", "safetensors", "npy", ...
    generation: str  # "keras1", "keras3-weights", "torchvision", "timm", "tensorflow-vgg", ...
    notes: tuple[str, ...] = ()
    recorded: bool = True
    assumed: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """ "format/generation", as reports and metadata spell the source."""
        return f"{self.format}/{self.generation}"


@dataclass(frozen=True)
class SourceGraph:
    """A classifier as its file defines it: ops up to the logits, then `output_activation`.

    The ops end at the logits: a final softmax/sigmoid is not an op but `output_activation`, as
    both sides of a conversion compare and output logits. `spatial` is the layout convolutions,
    pools and batch norms read their 4-D input in (ONNX's are NCHW).
    """

    ops: tuple[Op, ...]
    input: InputSpec
    output_activation: OutputActivation
    provenance: Provenance
    spatial: ArrayLayout = "NHWC"

    @property
    def path(self) -> str:
        return self.provenance.path

    def split(self) -> tuple[tuple[Op, ...], tuple[Op, ...]]:
        """(trunk, head): the ops through the last max-pool (pool5), and those after it."""
        last = max((i for i, op in enumerate(self.ops) if isinstance(op, MaxPool)), default=-1)
        return self.ops[: last + 1], self.ops[last + 1 :]

    def with_input(self, **changes: object) -> SourceGraph:
        return replace(self, input=replace(self.input, **changes))  # type: ignore[arg-type]


def pool5_side(side: int, pools: tuple[MaxPool, ...] | list[MaxPool]) -> int:
    """The side of the last pool's output for an input side, pool by pool (floor or ceil)."""
    for pool in pools:
        side = (side + 1) // 2 if pool.ceil else side // 2
    return side


def vgg_trunk(
    convs: list[Conv],
    plan: tuple[int, ...],
    norms: list[BatchNorm | None] | None = None,
    pool_names: list[str] | None = None,
) -> list[Op]:
    """A VGG trunk as the family defines it, for files that hold tensors only: each conv (then
    its batch norm, if any) then a ReLU; a 2x2 max-pool closing each block of `plan`."""
    ops: list[Op] = []
    index = 0
    for block, count in enumerate(plan):
        for _ in range(count):
            conv = convs[index]
            ops.append(conv)
            norm = norms[index] if norms else None
            if norm is not None:
                ops.append(norm)
            ops.append(Activation(f"{conv.name}.relu", "relu", fused=True))
            index += 1
        ops.append(MaxPool(pool_names[block] if pool_names else f"block{block + 1}_pool"))
    return ops
