"""The fully-convolutional network: what compile produces, writers store and `forward` runs.

One form whatever the source: a VGG trunk of 3x3 "same" convolutions with a ReLU after each and a
2x2 max-pool after each block, then a head of "valid" convolutions — the first p_h x p_w over
pool5, the rest 1x1 — with a ReLU or nothing after each and logits out. Kernels are HWIO.
Cell (i, j) of the output map is the original classifier applied to the p_h x p_w window of pool5
at (i, j).

Each op carries its attributes — a convolution its dilation, a pool its stride and dilation —
so the same chain describes the network at output stride 32 (every pool 2x2/2, nothing
dilated) and the à trous networks at 16 and 8 (`atrous`); `forward` runs them all and each
writer turns them into its format's ops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .arch import STRIDE, name_of
from .errors import ArchitectureError
from .graph import ChannelOrder, OutputActivation, Preprocessing
from .tensor import Tensor


def head_name(index: int) -> str:
    """Name of the index-th head convolution: fc6, fc7, ... as in the VGG paper's numbering."""
    return f"fc{6 + index}"


@dataclass(frozen=True)
class ConvLayer:
    """One convolution of the FCN: HWIO kernel, bias, whether a ReLU follows it, and the name of
    the layer of the original classifier it was made from."""

    name: str
    kernel: Tensor
    bias: Tensor
    relu: bool
    source_name: str
    dilation: int = 1  # taps this many pixels apart ("same" pads dilation * (k // 2))

    @property
    def out_channels(self) -> int:
        return self.kernel.shape[3]

    @property
    def span(self) -> tuple[int, int]:
        """The rows and columns of input one output value reads: (k - 1) * dilation + 1."""
        return tuple((k - 1) * self.dilation + 1 for k in self.kernel.shape[:2])  # type: ignore[return-value]


@dataclass(frozen=True)
class Pool:
    """A trunk max-pool: 2x2 windows, `stride` apart, their taps `dilation` apart."""

    stride: int = 2
    dilation: int = 1


#: The pool of a VGG block as trained: 2x2, stride 2.
PLAIN = Pool()


@dataclass(frozen=True)
class Storage:
    """How a converted file holds its network: what `convert` wrote and `inspect` reports.

    Attributes:
        format: the output format ("safetensors", "onnx", "keras"; `formats.outputs`), or
            "memory" for a network compiled and not written.
        layout: its kernels' layout, "HWIO" or "OIHW" (`layouts`).
        names: its tensor or layer names: "vggfcn", "torch" or "ssd" (safetensors), or
            "source" (the source's own layer names, made valid in the format).
        dtype: its weights' precision (`precision.PRECISIONS`).
    """

    format: str = "memory"
    layout: str = "HWIO"
    names: str = "vggfcn"
    dtype: str = "float32"

    def __str__(self) -> str:
        """ "onnx: OIHW kernels, source names, float32" """
        return f"{self.format}: {self.layout} kernels, {self.names} names, {self.dtype}"


@dataclass(frozen=True)
class FCNInfo:
    """What is known about an FCN beyond its layers: where it came from and how to feed it.

    Attributes:
        path: the file this network was read from (or its source, when compiled in memory).
        source_format: the original's "format/generation", e.g. "keras-h5/keras1".
        input_size: (H, W) the original classifier was built for.
        output_activation: what the original applied to its logits.
        batch_norm: "none", or how the original's batch norms were folded ("folded (eps=…)").
        storage: how the file holding it stores it (`Storage`).
        source_file, source_sha256: the original classifier's base name and SHA-256, as a
            converted file records them ("" for a network compiled in memory).
        output_stride: the output stride the file records (the network's own attributes say
            what it computes: `FCN.output_stride`; `verify` holds them to this).
        head: "classifier" (the original's head, convolutional), or "reduced" (SSD/DeepLab's
            decimated fc6/fc7: a backbone initialisation, not the classifier; see `reduce`).
    """

    path: str
    source_format: str
    input_size: tuple[int, int]
    output_activation: OutputActivation
    channel_order: ChannelOrder = "unknown"
    preprocessing: Preprocessing = "unknown"
    batch_norm: str = "none"
    storage: Storage = Storage()
    head: Literal["classifier", "reduced"] = "classifier"
    source_file: str = ""
    source_sha256: str = ""
    output_stride: int = 32

    @property
    def precision(self) -> str:
        """The weights' storage dtype, which sets `verify`'s default tolerance."""
        return self.storage.dtype


@dataclass(frozen=True)
class FCN:
    """A VGG trunk (convs per block in `plan`) and a convolutional head; see the module doc."""

    plan: tuple[int, ...]
    trunk: tuple[ConvLayer, ...]
    head: tuple[ConvLayer, ...]
    info: FCNInfo
    pools: tuple[Pool, ...] = ()  # one per block; () means every pool PLAIN

    @property
    def path(self) -> str:
        return self.info.path

    @property
    def block_pools(self) -> tuple[Pool, ...]:
        """The pool closing each block."""
        return self.pools or (PLAIN,) * len(self.plan)

    @property
    def output_stride(self) -> int:
        """Input pixels between neighbouring cells of the map: 32, or 16 and 8 à trous."""
        stride = 1
        for pool in self.block_pools:
            stride *= pool.stride
        return stride

    @property
    def plain(self) -> bool:
        """Whether this is the network at output stride 32, as recorded and as its ops run:
        no pool without its stride, nothing dilated."""
        return (
            self.info.output_stride == 32
            and self.output_stride == 32
            and all(layer.dilation == 1 for layer in self.layers)
            and all(pool == PLAIN for pool in self.block_pools)
        )

    @property
    def name(self) -> str:
        """The family member ("vgg16"), from the convolutions per block."""
        return name_of(self.plan) or "vgg"

    @property
    def layers(self) -> tuple[ConvLayer, ...]:
        return self.trunk + self.head

    @property
    def classes(self) -> int:
        return self.head[-1].out_channels

    @property
    def window(self) -> tuple[int, int]:
        """The pool5 window one output cell sees: the head's kernels stacked ("valid")."""
        h = 1 + sum(layer.kernel.shape[0] - 1 for layer in self.head)
        w = 1 + sum(layer.kernel.shape[1] - 1 for layer in self.head)
        return h, w

    @property
    def min_input(self) -> tuple[int, int]:
        """The smallest input with one output cell: the window at the trunk's stride (the same
        at every output stride: à trous, a 224 input still makes one cell)."""
        h, w = self.window
        return h * STRIDE, w * STRIDE

    @property
    def head_activations(self) -> tuple[str, ...]:
        return tuple("relu" if layer.relu else "linear" for layer in self.head)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Score-map size for an input, op by op (pools floor, like Keras and torch)."""
        sides = [height, width]
        for pool in self.block_pools:
            reach = pool.dilation + 1  # a 2x2 window's rows, its taps `dilation` apart
            sides = [(side - reach) // pool.stride + 1 for side in sides]
        for layer in self.head:
            sides = [side - span + 1 for side, span in zip(sides, layer.span, strict=True)]
        return sides[0], sides[1]

    def parameter_count(self) -> int:
        return sum(layer.kernel.size + layer.bias.size for layer in self.layers)

    def describe(self) -> str:
        """ "vgg16 convs [...] head [(7, 7, 4096), ...]", for messages about mismatched pairs."""
        widths = [layer.out_channels for layer in self.trunk]
        head = [(*layer.kernel.shape[:2], layer.out_channels) for layer in self.head]
        return f"{self.name} convs {widths} head {head}"


def check_shapes(fcn: FCN) -> None:
    """Every kernel and bias of an FCN against the chain of widths, all problems at once: what
    each reader of a converted file checks before handing the network out.

    Raises:
        ArchitectureError: a kernel or bias of the wrong shape.
    """
    problems = []
    channels = (
        fcn.trunk[0].kernel.shape[2] if fcn.trunk and len(fcn.trunk[0].kernel.shape) == 4 else 3
    )
    for i, layer in enumerate(fcn.layers):
        shape = layer.kernel.shape
        out = layer.bias.shape[0] if len(layer.bias.shape) == 1 else -1
        if i < len(fcn.trunk):
            want: tuple[int, ...] = (3, 3, channels, out)
        elif len(shape) == 4:
            want = (shape[0], shape[1], channels, out)
        else:
            want = (1, 1, channels, out)
        if shape != want:
            problems.append(f"{layer.source_name} kernel has shape {shape}, expected {want}")
        channels = out
    if problems:
        raise ArchitectureError(f"{fcn.path}: not a {fcn.name} FCN: " + "; ".join(problems))
