"""The VGG family as data: one table of layer plans, from which names and shapes are derived.

Like timm's `cfgs`, the plan lists convolution widths per block; pools close every block. Widths
are not trusted from the table: a checkpoint's own tensor shapes decide them, so narrower
VGG16-topology models (our fast test fixtures) are first-class citizens.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Convolutions per block for each member of the family (Simonyan & Zisserman, table 1, A/B/D/E).
PLANS: dict[str, tuple[int, ...]] = {
    "vgg11": (1, 1, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}

#: Total stride of the trunk (five 2x2 pools) and the spatial size of pool5 at 224x224.
STRIDE = 32
POOL5_SIZE = 7
MIN_INPUT = STRIDE * POOL5_SIZE  # 224

HEAD_NAMES = ("fc6", "fc7", "fc8")


def conv_names(plan: tuple[int, ...]) -> list[str]:
    """Keras-style trunk convolution names in model order: block1_conv1, block1_conv2, ..."""
    return [f"block{b}_conv{i}" for b, n in enumerate(plan, start=1) for i in range(1, n + 1)]


def plan_for_conv_count(count: int) -> tuple[str, tuple[int, ...]] | None:
    """The family member with `count` trunk convolutions, or None."""
    for name, plan in PLANS.items():
        if sum(plan) == count:
            return name, plan
    return None


@dataclass(frozen=True)
class Arch:
    """A concrete VGG: which family member, and the widths its tensors have.

    Attributes:
        name: "vgg16" etc.
        plan: convolutions per block.
        in_channels: channels of the input image (3).
        conv_widths: output channels of each trunk convolution, in model order.
        head_widths: output units of fc6, fc7, fc8 (the last one is the class count).
    """

    name: str
    plan: tuple[int, ...]
    in_channels: int
    conv_widths: tuple[int, ...]
    head_widths: tuple[int, int, int]

    @classmethod
    def from_blocks(
        cls, name: str, block_widths: tuple[int, ...], fc: tuple[int, int], classes: int
    ) -> Arch:
        """An architecture from one width per block, as VGG papers and our fixtures state them."""
        plan = PLANS[name]
        widths = tuple(w for n, w in zip(plan, block_widths, strict=True) for _ in range(n))
        return cls(name, plan, 3, widths, (fc[0], fc[1], classes))

    @property
    def conv_names(self) -> list[str]:
        return conv_names(self.plan)

    @property
    def classes(self) -> int:
        return self.head_widths[2]

    @property
    def pool5_channels(self) -> int:
        return self.conv_widths[-1]

    def pools_after(self) -> set[int]:
        """Indices (into the conv list) of the convolutions followed by a 2x2 max-pool."""
        ends, total = set(), 0
        for n in self.plan:
            total += n
            ends.add(total - 1)
        return ends

    def conv_shapes(self) -> list[tuple[int, int, int, int]]:
        """Expected HWIO kernel shapes of the trunk convolutions."""
        cins = (self.in_channels, *self.conv_widths[:-1])
        return [(3, 3, ci, co) for ci, co in zip(cins, self.conv_widths, strict=True)]

    def dense_shapes(self) -> list[tuple[int, int]]:
        """Expected (in, out) kernel shapes of the classifier's fc6, fc7, fc8."""
        f6, f7, k = self.head_widths
        return [(POOL5_SIZE * POOL5_SIZE * self.pool5_channels, f6), (f6, f7), (f7, k)]

    def fcn_head_shapes(self) -> list[tuple[int, int, int, int]]:
        """Expected HWIO kernel shapes of the fully-convolutional head."""
        f6, f7, k = self.head_widths
        c5 = self.pool5_channels
        return [(POOL5_SIZE, POOL5_SIZE, c5, f6), (1, 1, f6, f7), (1, 1, f7, k)]

    def parameter_count(self) -> int:
        convs = sum(h * w * i * o + o for h, w, i, o in self.conv_shapes())
        return convs + sum(i * o + o for i, o in self.dense_shapes())

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Score-map size for an input: a valid 7x7 conv over pool5 (pools floor, like Keras)."""
        return height // STRIDE - POOL5_SIZE + 1, width // STRIDE - POOL5_SIZE + 1
