"""The fully-convolutional network: what compile produces, writers store and `forward` runs.

One form whatever the source: a VGG trunk of 3x3 "same" convolutions with a ReLU after each and a
2x2 max-pool after each block, then a head of "valid" convolutions — the first p_h x p_w over
pool5, the rest 1x1 — with a ReLU or nothing after each and logits out. Kernels are HWIO.
Cell (i, j) of the output map is the original classifier applied to the p_h x p_w window of pool5
at (i, j).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .arch import PLANS, STRIDE
from .graph import ChannelOrder, OutputActivation, Preprocessing
from .tensor import Tensor

#: Storage precisions of a converted file (see `precision`).
Precision = str


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

    @property
    def out_channels(self) -> int:
        return self.kernel.shape[3]


@dataclass(frozen=True)
class FCNInfo:
    """What is known about an FCN beyond its layers: where it came from and how to feed it.

    Attributes:
        path: the file this network was read from (or its source, when compiled in memory).
        source_format: the original's "format/generation", e.g. "keras-h5/keras1".
        input_size: (H, W) the original classifier was built for.
        output_activation: what the original applied to its logits.
        batch_norm: "none", or how the original's batch norms were folded ("folded (eps=…)").
        precision: storage dtype of the weights: "float32", "float16" or "bfloat16".
        stored_as: the file format holding it ("vggfcn-safetensors v1 hwio vggfcn float32"),
            or "memory" when compiled and not written.
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
    precision: Precision = "float32"
    stored_as: str = "memory"
    head: Literal["classifier", "reduced"] = "classifier"


@dataclass(frozen=True)
class FCN:
    """A VGG trunk (convs per block in `plan`) and a convolutional head; see the module doc."""

    plan: tuple[int, ...]
    trunk: tuple[ConvLayer, ...]
    head: tuple[ConvLayer, ...]
    info: FCNInfo

    @property
    def path(self) -> str:
        return self.info.path

    @property
    def name(self) -> str:
        """The family member ("vgg16"), from the convolutions per block."""
        return next((n for n, p in PLANS.items() if p == self.plan), "vgg")

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
        """The smallest input with one output cell: the window at the trunk's stride."""
        h, w = self.window
        return h * STRIDE, w * STRIDE

    @property
    def head_activations(self) -> tuple[str, ...]:
        return tuple("relu" if layer.relu else "linear" for layer in self.head)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Score-map size for an input (pools floor, like Keras and torch)."""
        h, w = self.window
        return height // STRIDE - h + 1, width // STRIDE - w + 1

    def parameter_count(self) -> int:
        return sum(layer.kernel.size + layer.bias.size for layer in self.layers)

    def describe(self) -> str:
        """ "vgg16 convs [...] head [(7, 7, 4096), ...]", for messages about mismatched pairs."""
        widths = [layer.out_channels for layer in self.trunk]
        head = [(*layer.kernel.shape[:2], layer.out_channels) for layer in self.head]
        return f"{self.name} convs {widths} head {head}"
